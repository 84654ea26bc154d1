"""SAM 2++ box head: pyramid corner predictor over S/16, S/8, S/4 features (NHWC).

Each corner branch (top-left `tl`, bottom-right `br`) fuses the transformer's S/16 image
output top-down with the task-projected high-res features into a C/8-channel S/4 map; the
map is turned into one score map per mask token by the token's hypernetwork vector and read
out with a soft-argmax.  Layer names follow the reference `conv(...)` blocks:
`{block}_0` conv 3x3, `{block}_1` frozen batch norm, then ReLU.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam2pp_jax.model.layers import conv2d, dot_f32


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine params: all four are reference buffers, stored
  here as params (keep them out of the optimizer when training)."""

  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    w = self.param("scale", nn.initializers.ones, (n,))
    b = self.param("bias", nn.initializers.zeros, (n,))
    mean = self.param("running_mean", nn.initializers.zeros, (n,))
    var = self.param("running_var", nn.initializers.ones, (n,))
    scale = w * jax.lax.rsqrt(var + self.eps)
    shift = b - mean * scale
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def upsample_nearest(x, factor: int):
  """Nearest-neighbour upsampling of an NHWC map by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def soft_argmax_xy(score_map, stride: float = 1.0):
  """Expected (col*stride, row*stride) under softmax over the last two axes:
  [..., H, W] -> [..., 2]."""
  *lead, h, w = score_map.shape
  prob = jax.nn.softmax(score_map.reshape(*lead, h * w).astype(jnp.float32), axis=-1)
  prob = prob.reshape(*lead, h, w)
  xs = jnp.arange(w, dtype=jnp.float32) * stride
  ys = jnp.arange(h, dtype=jnp.float32) * stride
  ex = jnp.sum(prob * xs, axis=(-2, -1))
  ey = jnp.sum(prob * ys[:, None], axis=(-2, -1))
  return jnp.stack([ex, ey], axis=-1)


class PyramidCornerHead(nn.Module):
  """Normalised xyxy box per hypernetwork vector (reference: the multi-box pyramid corner
  predictor that uses high-res features, with frozen batch norm)."""

  inplanes: int = 256
  channel: int = 256
  stride: int = 4
  bn_eps: float = 1e-5
  dtype: Any = None  # the convs' computation dtype; score maps and soft-argmax are float32

  def _cbr(self, x, features: int, name: str):
    x = conv2d(features, 3, padding=1, name=f"{name}_0", dtype=self.dtype)(x)
    x = FrozenBatchNorm(self.bn_eps, name=f"{name}_1")(x)
    return jax.nn.relu(x)

  def _branch(self, corner: str, feat_s0, feat_s1, feat_s16):
    c, cin = self.channel, self.inplanes
    x0 = self._cbr(feat_s16, cin, f"adjust_16_to_16_{corner}")
    x1 = self._cbr(x0, c, f"conv1_{corner}")
    x2 = self._cbr(x1, c // 2, f"conv2_{corner}")
    up1 = (
      upsample_nearest(self._cbr(x0, c // 2, f"adjust1_{corner}"), 2)
      + upsample_nearest(x2, 2)
      + self._cbr(feat_s1, c // 2, f"adjust_8_to_8_{corner}")
    )
    x3 = self._cbr(up1, c // 4, f"conv3_{corner}")
    up2 = (
      upsample_nearest(self._cbr(x0, c // 4, f"adjust2_{corner}"), 4)
      + upsample_nearest(x3, 2)
      + self._cbr(feat_s0, c // 4, f"adjust_4_to_4_{corner}")
    )
    x4 = self._cbr(up2, c // 8, f"conv4_{corner}")
    a3 = self._cbr(self._cbr(x2, c // 4, f"adjust3_{corner}_0"), c // 8, f"adjust3_{corner}_1")
    a4 = self._cbr(x3, c // 8, f"adjust4_{corner}_0")
    return x4 + upsample_nearest(a3, 4) + upsample_nearest(a4, 2)

  @nn.compact
  def __call__(self, feat_s0, feat_s1, feat_s16, hyper_in, return_score_maps: bool = False):
    """feat_s0 [B,S/4,S/4,C/8], feat_s1 [B,S/8,S/8,C/4], feat_s16 [B,S/16,S/16,C],
    hyper_in [B,N,channel/8] -> boxes [B,N,4] = (x0,y0,x1,y1)/S (and score maps [B,N,2,S/4,S/4])."""
    fh, fw = feat_s0.shape[1:3]
    if fh != fw:
      raise ValueError(f"the corner head expects a square S/4 map, got {fh}x{fw}")
    img_size = fh * self.stride
    maps = []
    for corner in ("tl", "br"):
      feat = self._branch(corner, feat_s0, feat_s1, feat_s16)
      maps.append(dot_f32("bnc,bhwc->bnhw", hyper_in, feat))
    scores = jnp.stack(maps, axis=2)  # [B, N, 2, H, W]
    corners = soft_argmax_xy(scores, float(self.stride))  # [B, N, 2, 2]
    boxes = corners.reshape(*corners.shape[:2], 4) / jnp.float32(img_size)
    if return_score_maps:
      return boxes, scores
    return boxes
