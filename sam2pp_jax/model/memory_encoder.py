"""Memory encoder: fuses the S/16 image features with the predicted mask into a memory.

SAM 2++ keeps one copy per task (`memory_encoder_{task}`). The caller prepares the mask
(sigmoid(logits) * 20 - 10 at S x S); like the reference's skip_mask_sigmoid=True path, the
encoder applies no sigmoid of its own unless `apply_sigmoid` is set.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam2pp_jax.model.layers import DepthwiseConv2d, conv2d, gelu, layer_norm
from sam2pp_jax.model.position_encoding import sine_position_encoding


class MaskDownSampler(nn.Module):
  """(conv k/s + LayerNorm2d + GELU) until `total_stride`, then a 1x1 conv to `embed_dim`.

  Sequential slots as in the reference: conv at 3i, norm at 3i+1 (GELU at 3i+2), last conv.
  """

  embed_dim: int = 256
  kernel_size: int = 3
  stride: int = 2
  padding: int = 1
  total_stride: int = 16
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    dt = self.dtype
    num_layers = int(math.log2(self.total_stride) // math.log2(self.stride))
    if self.stride**num_layers != self.total_stride:
      raise ValueError("total_stride must be a power of stride")
    chans, idx = 1, 0
    for _ in range(num_layers):
      chans *= self.stride**2
      k, s, p = self.kernel_size, self.stride, self.padding
      x = conv2d(chans, k, s, p, name=f"encoder_{idx}", dtype=dt)(x)
      x = gelu(layer_norm(1e-6, name=f"encoder_{idx + 1}", dtype=dt)(x))
      idx += 3
    return conv2d(self.embed_dim, 1, name=f"encoder_{idx}", dtype=dt)(x)


class CXBlock(nn.Module):
  """ConvNeXt block: depth-wise conv, LayerNorm, pointwise MLP (GELU), layer scale, residual."""

  dim: int = 256
  kernel_size: int = 7
  padding: int = 3
  layer_scale_init_value: float = 1e-6
  use_dwconv: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    dt = self.dtype
    if self.use_dwconv:
      y = DepthwiseConv2d(self.dim, self.kernel_size, self.padding, dt, name="dwconv")(x)
    else:
      y = conv2d(self.dim, self.kernel_size, padding=self.padding, name="dwconv", dtype=dt)(x)
    y = layer_norm(1e-6, name="norm", dtype=dt)(y)
    y = nn.Dense(4 * self.dim, dtype=dt, name="pwconv1")(y)
    y = nn.Dense(self.dim, dtype=dt, name="pwconv2")(gelu(y))
    if self.layer_scale_init_value > 0:
      gamma = self.param(
        "gamma", nn.initializers.constant(self.layer_scale_init_value), (self.dim,)
      )
      y = gamma.astype(y.dtype) * y
    return x + y


class Fuser(nn.Module):
  """`num_layers` CXBlocks (`layers_i`); the reference's input projection is off (Identity)."""

  dim: int = 256
  num_layers: int = 2
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = CXBlock(self.dim, dtype=self.dtype, name=f"layers_{i}")(x)
    return x


class MemoryEncoder(nn.Module):
  """pix_feat [B,h,w,in_dim] + mask [B,S,S,1] -> (features [B,h,w,out_dim], pos [B,h,w,out_dim]).

  S = 16 * h (mask downsampler total stride). Defaults are the released SAM 2++ config.
  """

  out_dim: int = 64
  in_dim: int = 256
  fuser_layers: int = 2
  ds_kernel_size: int = 3
  ds_stride: int = 2
  ds_padding: int = 1
  ds_total_stride: int = 16
  apply_sigmoid: bool = False
  dtype: Any = None  # computation dtype (None: float32, nothing cast)

  @nn.compact
  def __call__(self, pix_feat, masks):
    if self.apply_sigmoid:
      masks = jax.nn.sigmoid(masks)
    masks = MaskDownSampler(
      self.in_dim,
      self.ds_kernel_size,
      self.ds_stride,
      self.ds_padding,
      self.ds_total_stride,
      self.dtype,
      name="mask_downsampler",
    )(masks)
    dt = self.dtype
    x = conv2d(self.in_dim, 1, name="pix_feat_proj", dtype=dt)(pix_feat.astype(masks.dtype))
    x = Fuser(self.in_dim, self.fuser_layers, dt, name="fuser")(x + masks)
    if self.out_dim != self.in_dim:
      x = conv2d(self.out_dim, 1, name="out_proj", dtype=dt)(x)
    b, h, w, c = x.shape
    pos = jnp.asarray(sine_position_encoding(h, w, c), x.dtype)
    return x, jnp.broadcast_to(pos[None], (b, h, w, c))
