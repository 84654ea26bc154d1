"""PyTorch checkpoint (SAM2-Plus or SAM 2 / 2.1) -> sam2pp_jax checkpoint directory, and back.

The output directory (params/ orbax checkpoint, config.json, conversion_report.json) appears
only when everything succeeded: it is assembled under a temporary sibling name and renamed.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sam2pp_jax.checkpoint import PARAMS_DIR, load_config, write_model
from sam2pp_jax.convert import key_map
from sam2pp_jax.convert.sources import (
  SourceError,
  detect_preset,
  detect_source,
  fill_missing,
  sam2_to_sam2pp,
  trunk_signature,
)
from sam2pp_jax.convert.torch_reader import extract_state_dict, read_torch_checkpoint
from sam2pp_jax.io.atomic import atomic_dir, atomic_path
from sam2pp_jax.model.presets import PRESETS, get_model_config
from sam2pp_jax.model.sam2pp import build_model, param_shapes

REPORT_FILE = "conversion_report.json"


class ConversionError(ValueError):
  """A checkpoint cannot be converted; the message names the file, the keys and a remedy."""


def _preset_signature(cfg) -> tuple[int, int]:
  return int(cfg.trunk.embed_dim), int(sum(cfg.trunk.stages))


def _module_counts(params) -> dict[str, int]:
  return {
    k: int(sum(np.size(x) for x in key_map.flatten(v).values()))
    if isinstance(v, dict)
    else int(np.size(v))
    for k, v in params.items()
  }


def convert_checkpoint(
  src,
  out_dir,
  *,
  config: str | None = None,
  source: str = "auto",
  dtype: str = "float32",
  seed: int = 0,
  overwrite: bool = False,
) -> dict:
  """Convert `src` (.pt) into the checkpoint directory `out_dir`; returns the report."""
  t0 = time.time()
  src = os.fspath(src)
  out = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out) and not overwrite:
    raise ConversionError(
      f"{out}: output directory exists; choose another path or pass --overwrite"
    )
  if dtype not in ("float32", "bfloat16"):
    raise ConversionError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
  sd = extract_state_dict(read_torch_checkpoint(src), src)
  try:
    kind = detect_source(sd.keys())
    sig = trunk_signature(sd)
  except SourceError as e:
    raise ConversionError(f"{src}: {e}") from None
  if source != "auto" and source != kind:
    raise ConversionError(
      f"{src}: --source {source} was given but the keys are those of a "
      f"{kind} checkpoint; drop --source or pass --source {kind}"
    )
  try:
    detected = detect_preset(sd)
  except SourceError as e:
    if config is None:
      raise ConversionError(f"{src}: {e}; pass --config PRESET") from None
    detected = None
  if config is not None and config not in PRESETS:
    raise ConversionError(f"--config {config!r} is not a preset ({', '.join(PRESETS)})")
  preset = config or detected
  cfg = get_model_config(preset)
  if _preset_signature(cfg) != sig:
    looks = f"preset {detected!r}" if detected else "no known preset"
    raise ConversionError(
      f"{src}: the file looks like {looks} (trunk embed_dim {sig[0]}, {sig[1]} blocks) but "
      f"--config {preset} has embed_dim {cfg.trunk.embed_dim} with {sum(cfg.trunk.stages)} "
      "blocks; "
      + (
        f"pass --config {detected} or drop --config"
        if detected
        else "pass the --config preset this checkpoint was trained with"
      )
    )
  model = build_model(cfg)
  template = param_shapes(model)
  fresh: list[str] = []
  n_source = len(sd)
  if kind == "sam2":
    sd = sam2_to_sam2pp(sd)
    sd, fresh = fill_missing(sd, key_map.reference_keys(template), seed)
  try:
    params = key_map.torch_to_flax(sd, template=template)
  except key_map.KeyMapError as e:
    raise ConversionError(f"{src}: {e}. Is this checkpoint of preset {preset!r}?") from None
  n_keys = len(sd)
  del sd  # the tree now holds the only references: contiguous copies replace them one by one
  # Hand orbax device arrays, made one leaf at a time while each source buffer is dropped:
  # orbax copies numpy leaves again during the save, which would put the peak above 3x.
  target = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  params = _tree_map(lambda a: jax.device_put(np.asarray(a).astype(target, copy=False)), params)
  report = {
    "source_file": os.path.abspath(src),
    "source_kind": kind,
    "detected_preset": detected,
    "preset": preset,
    "storage_dtype": dtype,
    "keys_consumed": n_source,
    "params_written": n_keys,
    "fresh_init_seed": seed,
    "fresh_init_keys": fresh,
    "params_per_module": _module_counts(params),
    "total_params": int(sum(_module_counts(params).values())),
  }
  with atomic_dir(out) as tmp:  # an existing checkpoint is replaced only when complete
    write_model(tmp, params, cfg)
    report["seconds"] = round(time.time() - t0, 2)
    with open(os.path.join(tmp, REPORT_FILE), "w") as f:
      json.dump(report, f, indent=2)
  return report


def _tree_map(fn, tree):
  """Map leaves in place, dropping each old leaf as soon as it is replaced (bounded memory)."""
  for k in list(tree):
    v = tree[k]
    tree[k] = _tree_map(fn, v) if isinstance(v, dict) else fn(v)
    del v
  return tree


def export_to_torch(ckpt_dir, out_pt) -> int:
  """sam2pp_jax checkpoint -> `{"model": state_dict}` .pt with reference key names."""
  try:
    import torch
  except ImportError:
    raise ConversionError(
      "--to-torch writes a PyTorch file and needs PyTorch: "
      "pip install torch==2.13.0 (conversion *from* .pt does not)"
    ) from None
  load_config(ckpt_dir)  # validates the directory and its config.json
  params = ocp.StandardCheckpointer().restore(os.path.join(os.fspath(ckpt_dir), PARAMS_DIR))
  params = _tree_map(np.asarray, params)
  sd = key_map.flax_to_torch(params, key_map.reference_keys(params))

  def to_t(a):
    if a.dtype.name == "bfloat16":
      return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))

  state = {k: to_t(v) for k, v in sd.items()}
  with atomic_path(out_pt) as tmp:
    torch.save({"model": state}, tmp)
  return len(state)
