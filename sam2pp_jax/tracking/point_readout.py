"""How the point task reads a point off its mask logits.

* ``argmax`` (the reference's inference): the first maximum of the video-resolution logits, in
  integer video pixels. The logits are bilinear upsamplings of the S/4 x S/4 low-res grid, whose
  maxima sit on grid nodes, so this point moves in steps of 4 * W / S video pixels.
* ``soft_argmax`` (the readout the point loss trains): the softmax-weighted mean pixel of the
  logits upsampled to the model's S x S input, scaled to video pixels the way prompts and
  training targets are scaled (x_video = x_model * W / S). Sub-pixel; for small S it removes
  the grid step (see bench/demo_ceiling.py for what the step costs in delta_avg).
* ``window_soft_argmax``: the same softmax-weighted mean, but only over a (2r+1) x (2r+1) model-
  pixel window around the S x S argmax (r = WINDOW_RADIUS). A global soft-argmax is pulled
  towards every other bump of the logits (a look-alike distractor, a second keypoint); the
  window keeps the argmax's decision and adds only its sub-pixel refinement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sam2pp_jax.model.corner_head import soft_argmax_xy
from sam2pp_jax.model.resize import resize_bilinear

# [..., H, W] logits -> int32 [..., 2] (x, y) of the first maximum in row-major order.
from sam2pp_jax.model.unified_decoder import argmax_point

READOUTS = ("argmax", "soft_argmax", "window_soft_argmax")
WINDOW_RADIUS = 3  # model pixels (a quarter-pixel-grid cell is 4 of them)


def check_readout(readout: str) -> str:
  if readout not in READOUTS:
    raise ValueError(f"point_readout={readout!r} is unknown; use one of {', '.join(READOUTS)}")
  return readout


def soft_argmax_point(
  low_res_logits: jax.Array, image_size: int, video_hw: tuple[int, int]
) -> jax.Array:
  """[..., h, w] low-res logits -> float32 [..., 2] (x, y) video pixels (training readout)."""
  s = int(image_size)
  lead = low_res_logits.shape[:-2]
  low = low_res_logits.reshape((-1,) + low_res_logits.shape[-2:]).astype(jnp.float32)
  hi = resize_bilinear(low[..., None], (s, s))[..., 0]  # [N, S, S]
  xy_model = soft_argmax_xy(hi)  # the point loss's readout, model pixels
  h, w = video_hw
  xy = xy_model * jnp.asarray([w / s, h / s], jnp.float32)
  return xy.reshape(lead + (2,))


def window_soft_argmax_point(
  low_res_logits: jax.Array, image_size: int, video_hw: tuple[int, int], radius: int = WINDOW_RADIUS
) -> jax.Array:
  """[..., h, w] low-res logits -> float32 [..., 2] (x, y) video pixels: the soft-argmax of the
  S x S logits restricted to the window of `radius` model pixels around their argmax."""
  s = int(image_size)
  lead = low_res_logits.shape[:-2]
  low = low_res_logits.reshape((-1,) + low_res_logits.shape[-2:]).astype(jnp.float32)
  hi = resize_bilinear(low[..., None], (s, s))[..., 0]  # [N, S, S]
  peak = argmax_point(hi).astype(jnp.float32)  # [N, 2] (x, y)
  xs = jnp.arange(s, dtype=jnp.float32)
  near_x = jnp.abs(xs[None, :] - peak[:, :1]) <= radius  # [N, S]
  near_y = jnp.abs(xs[None, :] - peak[:, 1:]) <= radius
  inside = near_y[:, :, None] & near_x[:, None, :]
  xy_model = soft_argmax_xy(jnp.where(inside, hi, -jnp.inf))
  h, w = video_hw
  xy = xy_model * jnp.asarray([w / s, h / s], jnp.float32)
  return xy.reshape(lead + (2,))


def read_points(
  readout: str,
  low_res_logits: jax.Array,
  video_logits: jax.Array,
  image_size: int,
  video_hw: tuple[int, int],
) -> jax.Array:
  """The point of each [..., h, w] / [..., H, W] logit map under `readout` (trace-time switch)."""
  if readout == "argmax":
    return argmax_point(video_logits)
  if readout == "soft_argmax":
    return soft_argmax_point(low_res_logits, image_size, video_hw)
  if readout == "window_soft_argmax":
    return window_soft_argmax_point(low_res_logits, image_size, video_hw)
  check_readout(readout)
  raise AssertionError("unreachable")
