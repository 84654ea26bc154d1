"""Reader for the PyTorch-reference parity fixtures (../shared/parity, see its README)."""

from __future__ import annotations

import json
import os
import pathlib
import re
from dataclasses import dataclass, field

import numpy as np

from sam2pp_jax.parity import det_init

PARITY_ENV = "SAM2PP_PARITY_DIR"
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
    """Deterministic reference weights rebuilt from the fixture's own manifest."""
    if self._weights is None:
      self._weights = det_init.det_state_dict(self.manifest, self.base_seed)
    return self._weights


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
