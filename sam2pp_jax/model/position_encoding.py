"""Position encodings: 2-D sine (FPN / memory), random-Fourier (prompts) and axial 2-D RoPE.

The sine and RoPE tables depend only on static shapes, so they are built with numpy in float32
(the reference's dtype and op order) and enter the program as constants.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def sine_position_encoding(
  h: int,
  w: int,
  num_pos_feats: int,
  temperature: float = 10000.0,
  normalize: bool = True,
  scale: float | None = None,
) -> np.ndarray:
  """[h, w, num_pos_feats] table: y-features then x-features, sin/cos interleaved."""
  if num_pos_feats % 2:
    raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
  npf = num_pos_feats // 2
  scale = 2 * math.pi if scale is None else scale
  f32 = np.float32
  y = np.arange(1, h + 1, dtype=f32)[:, None] * np.ones((1, w), f32)
  x = np.arange(1, w + 1, dtype=f32)[None, :] * np.ones((h, 1), f32)
  if normalize:
    eps = f32(1e-6)
    y = (y / (y[-1:, :] + eps) * f32(scale)).astype(f32)
    x = (x / (x[:, -1:] + eps) * f32(scale)).astype(f32)
  dim_t = np.arange(npf, dtype=f32)
  dim_t = (f32(temperature) ** (f32(2) * np.floor(dim_t / 2) / f32(npf))).astype(f32)
  px = x[..., None] / dim_t
  py = y[..., None] / dim_t
  px = np.stack([np.sin(px[..., 0::2]), np.cos(px[..., 1::2])], axis=-1).reshape(h, w, -1)
  py = np.stack([np.sin(py[..., 0::2]), np.cos(py[..., 1::2])], axis=-1).reshape(h, w, -1)
  return np.concatenate([py, px], axis=-1).astype(f32)


def sine_encode_1d(pos, dim: int, temperature: float = 10000.0):
  """1-D sine encoding of (possibly traced) positions: [..., dim] = [sin | cos] halves.

  Used for the object-pointer temporal encoding (`get_1d_sine_pe` in the reference).
  """
  half = dim // 2
  dim_t = jnp.arange(half, dtype=jnp.float32)
  dim_t = jnp.float32(temperature) ** (2 * jnp.floor(dim_t / 2) / half)
  emb = jnp.asarray(pos, jnp.float32)[..., None] / dim_t
  return jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)


def random_fourier_encode(coords, gaussian_matrix):
  """Encode coords already normalised to [0, 1] (last axis = (x, y)) -> [..., 2*F]."""
  coords = 2.0 * coords - 1.0
  coords = coords @ gaussian_matrix
  coords = 2.0 * np.pi * coords
  return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)


def random_fourier_grid(h: int, w: int, gaussian_matrix):
  """[h, w, 2*F] dense encoding of pixel centres ((i+0.5)/size) of an h x w grid."""
  y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
  x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
  grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
  return random_fourier_encode(grid, gaussian_matrix)


def axial_rope_tables(dim: int, end_x: int, end_y: int, theta: float = 10000.0):
  """cos, sin tables [end_y*end_x, dim//2] of the axial 2-D RoPE (x half, then y half)."""
  f32 = np.float32
  # theta ** e rounded once to float32 (torch's scalar ** tensor is correctly rounded; numpy's
  # float32 pow is not, which shifted 9 of the 64 B+ frequencies by an ulp).
  expo = (np.arange(0, dim, 4)[: dim // 4].astype(f32) / f32(dim)).astype(f32)
  freqs = (f32(1.0) / (np.float64(theta) ** expo.astype(np.float64)).astype(f32)).astype(f32)
  t = np.arange(end_x * end_y, dtype=f32)
  t_x = (t % end_x).astype(f32)
  t_y = np.floor(t / end_x).astype(f32)
  ang = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1).astype(f32)
  return np.cos(ang).astype(f32), np.sin(ang).astype(f32)


def apply_rope(x, cos, sin):
  """Rotate consecutive (even, odd) channel pairs of x [..., N, D] by tables [N, D//2]."""
  xr = x[..., 0::2]
  xi = x[..., 1::2]
  cos = cos.astype(x.dtype)
  sin = sin.astype(x.dtype)
  out_r = xr * cos - xi * sin
  out_i = xr * sin + xi * cos
  return jnp.stack([out_r, out_i], axis=-1).reshape(x.shape)
