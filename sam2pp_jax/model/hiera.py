"""Hiera trunk (hierarchical ViT with windowed attention and q-pooling), NHWC.

Returns one feature map per stage, highest resolution first (strides 4, 8, 16, 32 for the
default four stages). All shapes are static: window padding, pooling and position-embedding
interpolation are resolved in Python from the input shape.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.attention import attention
from sam2pp_jax.model.layers import MLP, block_output, conv2d, gelu, layer_norm

_LN_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Static helpers
# ---------------------------------------------------------------------------------------------


def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] float32 weights of torch's bicubic resize (align_corners=False, A=-0.75).

  Built explicitly because jax.image.resize uses another cubic kernel; source indices are
  clamped to the border, and weights/positions are computed in float32 like torch's CPU kernel.
  """
  f32 = np.float32
  a = f32(-0.75)

  def near(t):  # |t| <= 1
    return ((a + f32(2)) * t - (a + f32(3))) * t * t + f32(1)

  def far(t):  # 1 < |t| < 2
    return ((a * t - f32(5) * a) * t + f32(8) * a) * t - f32(4) * a

  scale = f32(in_size) / f32(out_size)
  mat = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    src = f32(scale * (f32(o) + f32(0.5)) - f32(0.5))
    i0 = min(int(math.floor(src)), in_size - 1)
    t = f32(min(max(src - f32(i0), f32(0)), f32(1)))
    ws = (far(t + f32(1)), near(t), near(f32(1) - t), far(f32(2) - t))
    for j, wgt in enumerate(ws):
      idx = min(max(i0 - 1 + j, 0), in_size - 1)
      mat[o, idx] += float(wgt)
  return mat.astype(f32)


def bicubic_resize(x, out_hw: tuple[int, int]):
  """Resize NHWC `x` to `out_hw` exactly like F.interpolate(mode="bicubic")."""
  _, h, w, _ = x.shape
  if (h, w) == tuple(out_hw):
    return x
  my = jnp.asarray(bicubic_resize_matrix(h, out_hw[0]))
  mx = jnp.asarray(bicubic_resize_matrix(w, out_hw[1]))
  # Width first, then height (the nesting order of torch's kernel).
  x = jnp.einsum("pw,bhwc->bhpc", mx, x)
  return jnp.einsum("qh,bhpc->bqpc", my, x)


def max_pool(x, stride: Sequence[int]):
  """MaxPool2d(kernel=stride, stride=stride, floor mode) on NHWC."""
  sh, sw = stride
  b, h, w, c = x.shape
  ho, wo = h // sh, w // sw
  x = x[:, : ho * sh, : wo * sw]
  return x.reshape(b, ho, sh, wo, sw, c).max(axis=(2, 4))


def window_partition(x, window: int):
  """[B,H,W,C] -> ([B*nWin, window, window, C], padded (Hp, Wp)); zero-pads bottom/right."""
  b, h, w, c = x.shape
  ph, pw = (-h) % window, (-w) % window
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  hp, wp = h + ph, w + pw
  x = x.reshape(b, hp // window, window, wp // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows, window: int, pad_hw: tuple[int, int], hw: tuple[int, int]):
  """Inverse of `window_partition`, cropping the padding away."""
  hp, wp = pad_hw
  h, w = hw
  c = windows.shape[-1]
  b = windows.shape[0] // ((hp // window) * (wp // window))
  x = windows.reshape(b, hp // window, wp // window, window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
  return x[:, :h, :w]


def hiera_block_specs(
  embed_dim: int,
  num_heads: int,
  stages: Sequence[int],
  window_spec: Sequence[int],
  global_att_blocks: Sequence[int] | None,
  q_pool: int,
  q_stride: Sequence[int],
  dim_mul: float,
  head_mul: float,
):
  """Per-block (dim, dim_out, num_heads, q_stride or None, window_size) and the stage ends.

  The first block of a stage still uses the previous stage's window (it pools the queries).
  """
  if len(stages) != len(window_spec):
    raise ValueError(f"stages {stages} and window_spec {window_spec} differ in length")
  stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
  if not 0 <= q_pool <= len(stage_ends) - 1:
    raise ValueError(f"q_pool={q_pool} must be in [0, {len(stage_ends) - 1}]")
  q_pool_blocks = [e + 1 for e in stage_ends[:-1]][:q_pool]
  global_blocks = set(global_att_blocks or ())
  specs = []
  dim, heads, stage = embed_dim, num_heads, 0
  for i in range(sum(stages)):
    window = 0 if i in global_blocks else int(window_spec[stage])
    dim_out = dim
    if i - 1 in stage_ends:
      dim_out = int(dim * dim_mul)
      heads = int(heads * head_mul)
      stage += 1
    specs.append((dim, dim_out, heads, tuple(q_stride) if i in q_pool_blocks else None, window))
    dim = dim_out
  return specs, stage_ends


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
  """7x7 stride-4 conv patchifier (`proj`)."""

  embed_dim: int = 768
  kernel_size: int = 7
  stride: int = 4
  padding: int = 3
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel_size, self.stride, self.padding
    return conv2d(self.embed_dim, k, s, p, name="proj", dtype=self.dtype)(x)


class MultiScaleAttention(nn.Module):
  """Multi-head self-attention whose queries may be max-pooled (stage transitions).

  Takes the whole (normed) map and the window size: `qkv` and `proj` are per-token, so they run
  on the real tokens only and the windows are formed in between. The zero padding the reference
  applies before `qkv` turns into bias-valued q/k/v rows (`0 @ W + b`), written in exactly, so
  the result equals the reference's pad -> qkv -> attend -> proj -> crop.
  """

  dim_out: int
  num_heads: int
  q_stride: tuple[int, int] | None = None
  window_size: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, out_hw: tuple[int, int]):
    b, h, w, _ = x.shape
    nh = self.num_heads
    hd = self.dim_out // nh
    dense = nn.Dense(3 * self.dim_out, dtype=self.dtype, name="qkv")
    qkv = dense(x)
    window = self.window_size
    if window > 0:
      ph, pw = (-h) % window, (-w) % window
      if ph or pw:
        bias = dense.variables["params"]["bias"].astype(qkv.dtype)
        qkv = jnp.pad(qkv, ((0, 0), (0, ph), (0, pw), (0, 0)))
        valid = np.zeros((1, h + ph, w + pw, 1), bool)
        valid[:, :h, :w] = True
        qkv = jnp.where(valid, qkv, bias)
      qkv, _ = window_partition(qkv, window)
    bw, hh, ww = qkv.shape[:3]
    qkv = qkv.reshape(bw, hh, ww, 3, nh, hd)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    if self.q_stride:
      q = max_pool(q.reshape(bw, hh, ww, nh * hd), self.q_stride)
      hh, ww = q.shape[1:3]
      q = q.reshape(bw, hh, ww, nh, hd)
    q = q.reshape(bw, hh * ww, nh, hd)
    k = k.reshape(bw, -1, nh, hd)
    v = v.reshape(bw, -1, nh, hd)
    out = attention(q, k, v, scale=1.0 / math.sqrt(hd), layout="bqhd")
    out = out.reshape(bw, hh, ww, self.dim_out)
    if window > 0:
      # Queries were pooled: windows shrank and the map now has the shortcut's size.
      win = hh
      oh, ow = out_hw
      pad_hw = (oh + (-oh) % win, ow + (-ow) % win)
      out = window_unpartition(out, win, pad_hw, (oh, ow))
    return nn.Dense(self.dim_out, dtype=self.dtype, name="proj")(out)


class MultiScaleBlock(nn.Module):
  """Pre-norm transformer block with optional windowing and q-pooling (dim change)."""

  dim: int
  dim_out: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  q_stride: tuple[int, int] | None = None
  window_size: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    shortcut = x
    x = layer_norm(_LN_EPS, name="norm1", dtype=self.dtype)(x)
    if self.dim != self.dim_out:
      shortcut = nn.Dense(self.dim_out, dtype=self.dtype, name="proj")(x)
      if self.q_stride:
        shortcut = max_pool(shortcut, self.q_stride)
    if self.q_stride:
      out_hw = (x.shape[1] // self.q_stride[0], x.shape[2] // self.q_stride[1])
    else:
      out_hw = x.shape[1:3]
    x = MultiScaleAttention(
      self.dim_out, self.num_heads, self.q_stride, self.window_size, self.dtype, name="attn"
    )(x, out_hw)

    drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), name="drop_path")
    x = shortcut + drop(x, deterministic=deterministic)
    y = layer_norm(_LN_EPS, name="norm2", dtype=self.dtype)(x)
    hidden = int(self.dim_out * self.mlp_ratio)
    y = MLP(hidden, self.dim_out, 2, activation=gelu, dtype=self.dtype, name="mlp")(y)
    return block_output(x + drop(y, deterministic=deterministic))


class Hiera(nn.Module):
  """Hiera trunk; `__call__(x [B,H,W,3]) -> [stage features NHWC]`, highest resolution first.

  Defaults are the reference class defaults (Hiera-B+ layout with embed_dim 96).
  """

  embed_dim: int = 96
  num_heads: int = 1
  drop_path_rate: float = 0.0
  q_pool: int = 3
  q_stride: tuple[int, int] = (2, 2)
  stages: tuple[int, ...] = (2, 3, 16, 3)
  dim_mul: float = 2.0
  head_mul: float = 2.0
  window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
  window_spec: tuple[int, ...] = (8, 4, 14, 7)
  global_att_blocks: tuple[int, ...] | None = (12, 16, 20)
  return_interm_layers: bool = True
  dtype: Any = None  # computation dtype (None: float32, nothing cast)

  def _specs(self):
    return hiera_block_specs(
      self.embed_dim,
      self.num_heads,
      tuple(self.stages),
      tuple(self.window_spec),
      None if self.global_att_blocks is None else tuple(self.global_att_blocks),
      self.q_pool,
      tuple(self.q_stride),
      self.dim_mul,
      self.head_mul,
    )

  @property
  def channel_list(self) -> list[int]:
    """Output channels, lowest resolution first (the neck's `backbone_channel_list`)."""
    specs, ends = self._specs()
    if not self.return_interm_layers:
      return [specs[-1][1]]
    return [specs[i][1] for i in ends[::-1]]

  def _pos_embed(self, hw: tuple[int, int]):
    """Background embedding (bicubic to hw) plus the per-window embedding tiled over it."""
    bh, bw = self.window_pos_embed_bkg_spatial_size
    win = self.window_spec[0]
    bkg = self.param("pos_embed", nn.initializers.zeros, (1, bh, bw, self.embed_dim))
    window = self.param("pos_embed_window", nn.initializers.zeros, (1, win, win, self.embed_dim))
    h, w = hw
    if h % win or w % win:
      raise ValueError(f"patch grid {hw} is not a multiple of the first window size {win}")
    return bicubic_resize(bkg, hw) + jnp.tile(window, (1, h // win, w // win, 1))

  @nn.compact
  def __call__(self, x, deterministic: bool = True) -> list:
    x = PatchEmbed(self.embed_dim, dtype=self.dtype, name="patch_embed")(x)
    x = x + self._pos_embed(x.shape[1:3]).astype(x.dtype)
    specs, ends = self._specs()
    rates = np.linspace(0.0, self.drop_path_rate, len(specs), dtype=np.float32)
    outputs = []
    for i, (dim, dim_out, heads, q_stride, window) in enumerate(specs):
      x = MultiScaleBlock(
        dim,
        dim_out,
        heads,
        drop_path=float(rates[i]),
        q_stride=q_stride,
        window_size=window,
        dtype=self.dtype,
        name=f"blocks_{i}",
      )(x, deterministic)
      if i == ends[-1] or (i in ends and self.return_interm_layers):
        outputs.append(x)
    return outputs
