"""Bilinear resizing that reproduces torch `F.interpolate(mode="bilinear", align_corners=False)`.

Resizing is separable, so each axis is an explicit [out, in] interpolation matrix built in numpy
for the static sizes; that pins down border handling and the antialias filter exactly (torch's
antialiased path uses a triangle filter widened by the scale), and is differentiable.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def bilinear_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
  """[out_size, in_size] float32 weights of one axis."""
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  if antialias and scale > 1.0:
    support = scale  # triangle of half-width 1, stretched by the downscale factor
    for i in range(out_size):
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)
      hi = min(int(center + support + 0.5), in_size)
      j = np.arange(lo, hi)
      w = np.clip(1.0 - np.abs((j - center + 0.5) / scale), 0.0, None)
      m[i, lo:hi] = w / w.sum()
    return m.astype(np.float32)
  # Plain bilinear: torch computes the scale in float32 and the source index with one fused
  # multiply-add (a single float32 rounding); so do we, to match its weights bit for bit.
  f32 = np.float32
  scale32 = f32(in_size) / f32(out_size)
  for i in range(out_size):
    src = max(f32(float(scale32) * (i + 0.5) - 0.5), f32(0.0))
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    l1 = min(max(src - f32(i0), f32(0.0)), f32(1.0))
    m[i, i0] += f32(1.0) - l1
    m[i, i1] += l1
  return m.astype(np.float32)


def resize_bilinear(x, size: tuple[int, int], antialias: bool = False):
  """Resize NHWC `x` [..., H, W, C] to `size` = (h, w)."""
  h_in, w_in = x.shape[-3], x.shape[-2]
  h, w = size
  if (h, w) == (h_in, w_in):
    return x
  mh = jnp.asarray(bilinear_matrix(h_in, h, antialias), x.dtype)
  mw = jnp.asarray(bilinear_matrix(w_in, w, antialias), x.dtype)
  x = jnp.einsum("oh,...hwc->...owc", mh, x, precision="highest")
  return jnp.einsum("pw,...owc->...opc", mw, x, precision="highest")
