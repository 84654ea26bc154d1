"""Memory encoder: fuses the S/16 image features with the predicted mask into a memory.

SAM 2++ keeps one copy per task (`memory_encoder_{task}`). The caller prepares the mask
(sigmoid(logits) * 20 - 10 at S x S); like the reference's skip_mask_sigmoid=True path, the
encoder applies no sigmoid of its own unless `apply_sigmoid` is set.
"""

from __future__ import annotations

import math

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

  @nn.compact
  def __call__(self, x):
    num_layers = int(math.log2(self.total_stride) // math.log2(self.stride))
    if self.stride**num_layers != self.total_stride:
      raise ValueError("total_stride must be a power of stride")
    chans, idx = 1, 0
    for _ in range(num_layers):
      chans *= self.stride**2
      x = conv2d(chans, self.kernel_size, self.stride, self.padding, name=f"encoder_{idx}")(x)
      x = gelu(layer_norm(1e-6, name=f"encoder_{idx + 1}")(x))
      idx += 3
    return conv2d(self.embed_dim, 1, name=f"encoder_{idx}")(x)


class CXBlock(nn.Module):
  """ConvNeXt block: depth-wise conv, LayerNorm, pointwise MLP (GELU), layer scale, residual."""

  dim: int = 256
  kernel_size: int = 7
  padding: int = 3
  layer_scale_init_value: float = 1e-6
  use_dwconv: bool = True

  @nn.compact
  def __call__(self, x):
    if self.use_dwconv:
      y = DepthwiseConv2d(self.dim, self.kernel_size, self.padding, name="dwconv")(x)
    else:
      y = conv2d(self.dim, self.kernel_size, padding=self.padding, name="dwconv")(x)
    y = layer_norm(1e-6, name="norm")(y)
    y = nn.Dense(4 * self.dim, name="pwconv1")(y)
    y = nn.Dense(self.dim, name="pwconv2")(gelu(y))
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

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = CXBlock(self.dim, name=f"layers_{i}")(x)
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
      name="mask_downsampler",
    )(masks)
    x = conv2d(self.in_dim, 1, name="pix_feat_proj")(pix_feat.astype(masks.dtype))
    x = Fuser(self.in_dim, self.fuser_layers, name="fuser")(x + masks)
    if self.out_dim != self.in_dim:
      x = conv2d(self.out_dim, 1, name="out_proj")(x)
    b, h, w, c = x.shape
    pos = jnp.asarray(sine_position_encoding(h, w, c), x.dtype)
    return x, jnp.broadcast_to(pos[None], (b, h, w, c))
