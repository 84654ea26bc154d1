"""Reader for the PyTorch-reference parity fixtures (../shared/parity, see its README)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from dataclasses import dataclass, field

import numpy as np

from sam2pp_jax.convert.torch_reader import extract_state_dict, read_torch_checkpoint
from sam2pp_jax.io.atomic import atomic_path
from sam2pp_jax.parity import det_init

PARITY_ENV = "SAM2PP_PARITY_DIR"
WEIGHTS_PREFIX = "weights/"  # embedded state-dict tensors of a `parity live --save` fixture
# Large maps are stored as strided spot checks named "X[...,::k,::k]".
SPOT_CHECK = re.compile(r"^(?P<base>.*)\[\.\.\.,::(?P<k>\d+),::(?P=k)\]$")


def split_spot_check(name: str) -> tuple[str, int]:
  """'X[...,::k,::k]' -> ('X', k); a plain name -> (name, 0)."""
  m = SPOT_CHECK.match(name)
  return (m.group("base"), int(m.group("k"))) if m else (name, 0)


def parity_dir() -> pathlib.Path | None:
  """$SAM2PP_PARITY_DIR, else ../shared/parity next to the repo root; None when absent."""
  env = os.environ.get(PARITY_ENV)
  cands = [pathlib.Path(env)] if env else []
  root = pathlib.Path(__file__).resolve().parents[2]
  cands += [root.parent / "shared" / "parity", root / "shared" / "parity"]
  for c in cands:
    if c.is_dir() and any(c.glob("*.npz")):
      return c
  return None


@dataclass
class Fixture:
  path: pathlib.Path
  arrays: dict
  info: dict
  manifest: dict
  config: dict
  _weights: dict | None = field(default=None, repr=False)

  @property
  def task(self) -> str:
    return self.info["task"]

  @property
  def image_size(self) -> int:
    return int(self.info["image_size"])

  @property
  def base_seed(self) -> int:
    return int(self.info["base_seed"])

  @property
  def overrides(self) -> list[str]:
    return list(self.config.get("hydra_overrides", []))

  def has(self, name: str) -> bool:
    return name in self.arrays

  def __getitem__(self, name: str) -> np.ndarray:
    return self.arrays[name]

  def frames(self) -> np.ndarray:
    """float32 [T,3,S,S] exactly as the reference model consumed them."""
    if "inputs/frames" in self.arrays:
      return self.arrays["inputs/frames"]
    if "inputs/frames_u8" in self.arrays and "inputs/frames_lut" in self.arrays:
      u8 = self.arrays["inputs/frames_u8"].transpose(0, 3, 1, 2)
      lut = self.arrays["inputs/frames_lut"]
      return lut[np.arange(3)[None, :, None, None], u8]
    raise KeyError(f"{self.path}: no inputs/frames nor inputs/frames_u8 + inputs/frames_lut")

  def state_dict(self) -> dict:
    """The reference's weights: embedded `weights/*` arrays, else the checkpoint file named in
    info["weights"] (sha256-checked), else rebuilt from the manifest by the det_init rule."""
    if self._weights is None:
      emb = {
        k[len(WEIGHTS_PREFIX) :]: v for k, v in self.arrays.items() if k.startswith("weights/")
      }
      ref = self.info.get("weights") or {}
      if emb:
        self._weights = {k: emb[k] for k in self.manifest}
      elif ref.get("kind") == "checkpoint":
        self._weights = _checkpoint_weights(self.path, ref)
      else:
        self._weights = det_init.det_state_dict(self.manifest, self.base_seed)
    return self._weights


def file_sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _checkpoint_weights(fixture_path, ref: dict) -> dict:
  """The state dict of the checkpoint a live fixture refers to, after checking it is that file."""
  path = ref.get("path", "")
  if not os.path.isfile(path):
    raise ValueError(
      f"{fixture_path}: its weights are the checkpoint {path!r}, which is not there; put the file "
      "back, or re-export the fixture with `parity live ... --save F --embed-weights`"
    )
  got = file_sha256(path)
  if got != ref.get("sha256"):
    raise ValueError(
      f"{fixture_path}: checkpoint {path} has sha256 {got[:12]}... but the fixture was recorded "
      f"with {str(ref.get('sha256'))[:12]}...; the file changed: re-record the fixture"
    )
  return extract_state_dict(read_torch_checkpoint(path), path)


def save_fixture(path, arrays: dict) -> pathlib.Path:
  """Write a fixture .npz (flat names -> arrays) atomically: a temp file beside it, then rename."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    raise ValueError(f"{path}: a parity fixture is an .npz file; name it *.npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)
  return path


def load_fixture(path) -> Fixture:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"parity fixture not found: {path}")
  try:
    z = np.load(path, allow_pickle=False)
    arrays = {k: z[k] for k in z.files}
  except Exception as e:  # corrupt or not an npz
    raise ValueError(f"{path}: not a readable .npz parity fixture ({e})") from e
  for need in ("meta/info_json", "meta/manifest_json", "meta/config_json"):
    if need not in arrays:
      raise ValueError(f"{path}: missing {need!r}; is this a SAM2-Plus parity fixture?")
  return Fixture(
    path=path,
    arrays=arrays,
    info=json.loads(str(arrays["meta/info_json"])),
    manifest=json.loads(str(arrays["meta/manifest_json"])),
    config=json.loads(str(arrays["meta/config_json"])),
  )
