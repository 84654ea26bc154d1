"""Recognise what a state dict is (SAM2-Plus or Meta SAM 2 / 2.1, which size) and bring a SAM 2
state dict into the SAM 2++ layout the way the reference initialises SAM 2++ training.

SAM 2 -> SAM 2++ (reference training config, checkpoint kernels): memory attention and memory
encoder are copied into each task's copy; the mask decoder's output upscaling, high-res convs
and hypernetwork MLPs are copied into each task's head; the rest of `sam_mask_decoder.*` becomes
`sam_unified_decoder.*`. Keys with no source (the corner box head; for SAM 2.0 also
`no_obj_embed_spatial` and `obj_ptr_tpos_proj`) are initialised fresh from a seed.
"""

from __future__ import annotations

import collections
import math
import re
import zlib
from typing import Mapping

import numpy as np

from sam2pp_jax.model.presets import TASKS

_PER_TASK_DECODER = ("output_hypernetworks_mlps", "output_upscaling", "conv_s0", "conv_s1")

# (trunk embed_dim, number of trunk blocks) -> preset
_TRUNK_SIGNATURES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}


class SourceError(ValueError):
  """The state dict is not a model this converter knows; the message says what it looks like."""


def detect_source(keys) -> str:
  """'sam2plus' or 'sam2' from the key names."""
  keys = list(keys)
  has = lambda p: any(k.startswith(p) for k in keys)
  if has("sam_unified_decoder.") and has("memory_attention_mask."):
    return "sam2plus"
  if has("sam_mask_decoder.") and has("memory_attention."):
    return "sam2"
  raise SourceError(
    "the keys look like neither SAM2-Plus (sam_unified_decoder.*, memory_attention_{task}.*) "
    "nor SAM 2 / 2.1 (sam_mask_decoder.*, memory_attention.*); first keys: " + ", ".join(keys[:5])
  )


def trunk_signature(sd: Mapping[str, np.ndarray]) -> tuple[int, int]:
  w = sd.get("image_encoder.trunk.patch_embed.proj.weight")
  if w is None:
    raise SourceError("no image_encoder.trunk.patch_embed.proj.weight: not a Hiera SAM 2 model")
  blocks = {
    int(m.group(1))
    for k in sd
    for m in [re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k)]
    if m
  }
  return int(np.shape(w)[0]), len(blocks)


def detect_preset(sd: Mapping[str, np.ndarray]) -> str:
  """The model-size preset a state dict's trunk matches (t, s, b+ or l)."""
  sig = trunk_signature(sd)
  if sig not in _TRUNK_SIGNATURES:
    raise SourceError(
      f"unrecognised Hiera trunk (embed_dim {sig[0]}, {sig[1]} blocks); known: "
      + ", ".join(f"{p} = {e}/{n}" for (e, n), p in _TRUNK_SIGNATURES.items())
    )
  return _TRUNK_SIGNATURES[sig]


def sam2_to_sam2pp(sd: Mapping[str, np.ndarray]) -> "collections.OrderedDict[str, np.ndarray]":
  """SAM 2 key names -> SAM 2++ key names (per-task copies share the source arrays)."""
  out = collections.OrderedDict()
  for k, v in sd.items():
    mod = k.split(".", 1)[0]
    if mod in ("memory_attention", "memory_encoder"):
      for t in TASKS:
        out[f"{mod}_{t}{k[len(mod) :]}"] = v
      continue
    if k.startswith("sam_mask_decoder."):
      rest = k[len("sam_mask_decoder.") :]
      head = next((h for h in _PER_TASK_DECODER if rest.startswith(h + ".")), None)
      if head is not None:
        for t in TASKS:
          out[f"sam_unified_decoder.{head}_{t}{rest[len(head) :]}"] = v
      else:
        out["sam_unified_decoder." + rest] = v
      continue
    out[k] = v
  return out


def fresh_tensor(key: str, shape, seed: int, target_shapes: Mapping[str, tuple]) -> np.ndarray:
  """PyTorch-default-style initial value of a parameter with no source, from (key, seed).

  Norm layers (a sibling `running_var`, or a 1-D `.weight`) start as identity; conv/linear
  weights and biases as U(+-1/sqrt(fan_in)); `no_obj_embed_spatial` as N(0, 0.02) clipped.
  """
  shape = tuple(int(s) for s in shape)
  rng = np.random.default_rng(zlib.crc32(f"{seed}/{key}".encode()))
  prefix, leaf = key.rsplit(".", 1) if "." in key else ("", key)
  is_norm = f"{prefix}.running_var" in target_shapes or (leaf == "weight" and len(shape) == 1)
  if leaf == "running_mean" or (is_norm and leaf == "bias"):
    return np.zeros(shape, np.float32)
  if leaf == "running_var" or (is_norm and leaf == "weight"):
    return np.ones(shape, np.float32)
  if key == "no_obj_embed_spatial":
    return np.clip(rng.normal(0.0, 0.02, shape), -0.04, 0.04).astype(np.float32)
  w_shape = shape if len(shape) > 1 else target_shapes.get(f"{prefix}.weight", shape)
  fan_in = int(np.prod(w_shape[1:])) if len(w_shape) > 1 else int(w_shape[0])
  bound = 1.0 / math.sqrt(max(fan_in, 1))
  return rng.uniform(-bound, bound, shape).astype(np.float32)


def fill_missing(sd: Mapping[str, np.ndarray], target_shapes: Mapping[str, tuple], seed: int):
  """Add every target key absent from `sd`, freshly initialised; returns (state dict, keys)."""
  out = collections.OrderedDict(sd)
  fresh = [k for k in target_shapes if k not in sd]
  for k in fresh:
    out[k] = fresh_tensor(k, target_shapes[k], seed, target_shapes)
  return out, fresh
