"""FPN neck: per-level 1x1 lateral convs, optional top-down fusion, sine position encodings.

Levels are ordered highest resolution first (as the trunk returns them); `convs_0` belongs to
the LOWEST-resolution level, matching the reference's top-down loop order.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.layers import conv2d
from sam2pp_jax.model.position_encoding import sine_position_encoding


def _linear_upsample2x_matrix(n: int) -> np.ndarray:
  """[2n, n] weights of torch's 2x bilinear upsampling (align_corners=False) along one axis."""
  mat = np.zeros((2 * n, n), np.float32)
  for o in range(2 * n):
    src = max(np.float32(0.5) * (np.float32(o) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = min(int(np.floor(src)), n - 1)
    i1 = min(i0 + 1, n - 1)
    lam = np.float32(src - i0)
    mat[o, i0] += np.float32(1) - lam
    mat[o, i1] += lam
  return mat


def upsample2x(x, mode: str):
  """2x spatial upsampling of NHWC `x` with torch's `nearest` or `bilinear` semantics."""
  if mode == "nearest":
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  if mode == "bilinear":
    my = jnp.asarray(_linear_upsample2x_matrix(x.shape[1]))
    mx = jnp.asarray(_linear_upsample2x_matrix(x.shape[2]))
    x = jnp.einsum("pw,bhwc->bhpc", mx, x)
    return jnp.einsum("qh,bhpc->bqpc", my, x)
  raise ValueError(f"unsupported fpn_interp_model {mode!r} (nearest or bilinear)")


class _Lateral(nn.Module):
  """The reference's `Sequential(conv=Conv2d)` slot, so the param path is `convs_N/conv`."""

  features: int
  kernel_size: int
  stride: int
  padding: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel_size, self.stride, self.padding
    return conv2d(self.features, k, s, p, name="conv", dtype=self.dtype)(x)


class FpnNeck(nn.Module):
  """`__call__(features) -> (outs, pos)`, both lists highest resolution first, NHWC.

  `backbone_channel_list` is lowest resolution first (as in the reference config).
  """

  d_model: int = 256
  backbone_channel_list: tuple[int, ...] = (896, 448, 224, 112)
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  fpn_interp_model: str = "bilinear"
  fuse_type: str = "sum"
  fpn_top_down_levels: tuple[int, ...] | None = None
  num_pos_feats: int | None = None  # sine encoding width; None -> d_model
  dtype: Any = None  # the laterals' computation dtype (top-down sums stay float32, as torch's)

  @nn.compact
  def __call__(self, xs: Sequence):
    n = len(self.backbone_channel_list)
    if len(xs) != n:
      raise ValueError(f"got {len(xs)} feature levels, neck expects {n}")
    if self.fuse_type not in ("sum", "avg"):
      raise ValueError(f"fuse_type must be sum or avg, got {self.fuse_type!r}")
    top_down = set(range(n) if self.fpn_top_down_levels is None else self.fpn_top_down_levels)
    npf = self.num_pos_feats or self.d_model
    outs, pos = [None] * n, [None] * n
    prev = None
    for i in range(n - 1, -1, -1):
      lateral = _Lateral(
        self.d_model,
        self.kernel_size,
        self.stride,
        self.padding,
        self.dtype,
        name=f"convs_{n - 1 - i}",
      )(xs[i])
      if i in top_down and prev is not None:
        prev = lateral + upsample2x(prev.astype(jnp.float32), self.fpn_interp_model)
        if self.fuse_type == "avg":
          prev = prev / 2
      else:
        prev = lateral
      outs[i] = prev
      b, h, w, _ = prev.shape
      table = jnp.asarray(sine_position_encoding(h, w, npf), prev.dtype)
      pos[i] = jnp.broadcast_to(table[None], (b, h, w, npf))
    return outs, pos
