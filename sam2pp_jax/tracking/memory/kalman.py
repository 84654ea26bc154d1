"""The constant-velocity box Kalman filter of SAMURAI's memory policy, as batched pure functions.

SAMURAI (yangchris11/samurai @ 76ba195, sam2/sam2/utils/kalman_filter.py) tracks one box per
object with a ByteTrack-style filter over the 8-d state (xc, yc, a, h, vxc, vyc, va, vh): centre,
aspect ratio a = w / h, height, and their per-frame velocities. Every function here takes a
leading object axis `...`, works in float32 with fixed shapes, and is jit/vmap-able.

Conventions and quirks kept from the original (it runs in float64 numpy; this runs in float32):

* Boxes are xyxy in the model-resolution pixel grid of the mask they come from. Width and height
  are plain differences (x2 - x1, y2 - y1) with no inclusive +1, although `mask_boxes` returns
  inclusive pixel extents: a mask covering columns 3..7 has w = 4, a one-pixel mask has w = h = 0.
* `xyxy_to_xyah` replaces h == 0 by h = 1 (both as the divisor of a and as the stored height);
  w is left as is, so a zero-height box gets a = w.
* The process and measurement noise scale with the state's height. `predict` takes that height
  from the mean BEFORE moving it (h, not h + vh); `project`/`update` use the given mean's h.
* `update` forms the posterior covariance as P - K S K^T (S the projected covariance), which
  equals (I - K H) P for the optimal gain K; there is no gating (the chi-square table is unused).
* `box_iou` has no +1 either, clamps only the intersection, returns 0 when the union is exactly 0,
  and returns 0 for a candidate that is exactly [0, 0, 0, 0] -- the box an empty mask gets, but
  also the box of a mask whose only pixel is (0, 0).
* The policy initiates the filter even from an empty mask's [0, 0, 0, 0] box (-> xyah
  (0, 0, 0, 1)), as sam2_base.py's `_forward_sam_heads` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

STD_WEIGHT_POSITION = 1.0 / 20
STD_WEIGHT_VELOCITY = 1.0 / 160
ASPECT_STD = 1e-2  # process noise on a (and the initial std of a)
ASPECT_VELOCITY_STD = 1e-5  # process noise on va (and its initial std)
ASPECT_MEASUREMENT_STD = 1e-1  # measurement noise on a
INIT_POSITION_FACTOR = 2.0  # initial std = factor * weight * h
INIT_VELOCITY_FACTOR = 10.0

# x' = F x with dt = 1: each of (xc, yc, a, h) moves by its velocity.
MOTION = np.eye(8, dtype=np.float32) + np.eye(8, k=4, dtype=np.float32)
# z = H x: the measurement observes (xc, yc, a, h).
OBSERVATION = np.eye(4, 8, dtype=np.float32)


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _diag(var: jax.Array) -> jax.Array:
  """[..., n] variances -> [..., n, n] diagonal covariance."""
  return var[..., :, None] * jnp.eye(var.shape[-1], dtype=var.dtype)


def _state_std(h: jax.Array, pos_w: float, vel_w: float, a_std: float, va_std: float) -> jax.Array:
  """[...] heights -> [..., 8] stds (pos_w * h for xc, yc, h; vel_w * h for their velocities)."""
  p = pos_w * h
  v = vel_w * h
  a = jnp.full_like(h, a_std)
  va = jnp.full_like(h, va_std)
  return jnp.stack([p, p, a, p, v, v, va, v], axis=-1)


def xyxy_to_xyah(box: jax.Array) -> jax.Array:
  """[..., 4] (x1, y1, x2, y2) -> [..., 4] (xc, yc, a, h) with w = x2 - x1, h = y2 - y1 (no +1);
  a zero height becomes 1 so the aspect stays finite (SAMURAI's convention)."""
  box = _f32(box)
  x1, y1, x2, y2 = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
  h = y2 - y1
  h = jnp.where(h == 0, jnp.ones_like(h), h)
  return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / h, h], axis=-1)


def xyah_to_xyxy(xyah: jax.Array) -> jax.Array:
  """[..., 4] (xc, yc, a, h) -> [..., 4] (x1, y1, x2, y2): width a * h, height h, about the
  centre (the exact inverse of `xyxy_to_xyah` whenever h != 0)."""
  xyah = _f32(xyah)
  xc, yc, a, h = xyah[..., 0], xyah[..., 1], xyah[..., 2], xyah[..., 3]
  half_w = a * h / 2
  return jnp.stack([xc - half_w, yc - h / 2, xc + half_w, yc + h / 2], axis=-1)


def initiate(measurement: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 4] xyah -> (mean [..., 8], cov [..., 8, 8]): the box with zero velocity, and a
  diagonal covariance whose position/velocity stds scale with the measured height."""
  z = _f32(measurement)
  mean = jnp.concatenate([z, jnp.zeros_like(z)], axis=-1)
  std = _state_std(
    z[..., 3],
    INIT_POSITION_FACTOR * STD_WEIGHT_POSITION,
    INIT_VELOCITY_FACTOR * STD_WEIGHT_VELOCITY,
    ASPECT_STD,
    ASPECT_VELOCITY_STD,
  )
  return mean, _diag(jnp.square(std))


def predict(mean: jax.Array, cov: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One constant-velocity step: x' = F x, P' = F P F^T + Q, with Q scaled by the height of the
  incoming mean (before the step), as the original does."""
  mean, cov = _f32(mean), _f32(cov)
  q = _diag(
    jnp.square(
      _state_std(
        mean[..., 3], STD_WEIGHT_POSITION, STD_WEIGHT_VELOCITY, ASPECT_STD, ASPECT_VELOCITY_STD
      )
    )
  )
  f = jnp.asarray(MOTION)
  new_mean = jnp.einsum("ij,...j->...i", f, mean)
  new_cov = jnp.einsum("ij,...jk,lk->...il", f, cov, f) + q
  return new_mean, new_cov


def project(mean: jax.Array, cov: jax.Array) -> tuple[jax.Array, jax.Array]:
  """State -> measurement space: (H x [..., 4], H P H^T + R [..., 4, 4]), R scaled by the mean's h
  (aspect noise fixed at 0.1)."""
  mean, cov = _f32(mean), _f32(cov)
  p = STD_WEIGHT_POSITION * mean[..., 3]
  std = jnp.stack([p, p, jnp.full_like(p, ASPECT_MEASUREMENT_STD), p], axis=-1)
  return mean[..., :4], cov[..., :4, :4] + _diag(jnp.square(std))


def update(mean: jax.Array, cov: jax.Array, measurement: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Correct a predicted state with an xyah measurement [..., 4]: K = P H^T S^-1 (via a Cholesky
  solve of S), x = x + K (z - H x), P = P - K S K^T."""
  mean, cov, z = _f32(mean), _f32(cov), _f32(measurement)
  proj_mean, proj_cov = project(mean, cov)
  chol = jnp.linalg.cholesky(proj_cov)
  # S is symmetric, so K^T = S^-1 (H P): [..., 4, 8].
  gain_t = jsl.cho_solve((chol, True), cov[..., :4, :])
  gain = jnp.swapaxes(gain_t, -1, -2)  # [..., 8, 4]
  innovation = z - proj_mean
  new_mean = mean + jnp.einsum("...ij,...j->...i", gain, innovation)
  new_cov = cov - jnp.einsum("...ij,...jk,...lk->...il", gain, proj_cov, gain)
  return new_mean, new_cov


def box_iou(box: jax.Array, boxes: jax.Array) -> jax.Array:
  """IoU of one xyxy box [..., 4] with each candidate [..., M, 4] -> [..., M], as SAMURAI scores
  mask boxes against the filter's box (pass `xyah_to_xyxy(mean[..., :4])`): no +1, 0 for an
  all-zero candidate and for a zero union."""
  box, boxes = _f32(box)[..., None, :], _f32(boxes)
  iw = jnp.maximum(
    0.0, jnp.minimum(box[..., 2], boxes[..., 2]) - jnp.maximum(box[..., 0], boxes[..., 0])
  )
  ih = jnp.maximum(
    0.0, jnp.minimum(box[..., 3], boxes[..., 3]) - jnp.maximum(box[..., 1], boxes[..., 1])
  )
  inter = iw * ih
  area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
  areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  union = area + areas - inter
  iou = inter / jnp.where(union == 0, jnp.ones_like(union), union)
  valid = (union != 0) & jnp.any(boxes != 0, axis=-1)
  return jnp.where(valid, iou, jnp.zeros_like(iou))


def mask_boxes(masks: jax.Array) -> jax.Array:
  """[..., H, W] masks -> float32 [..., 4] inclusive pixel extent (x_min, y_min, x_max, y_max) of
  `masks > 0`, [0, 0, 0, 0] when empty: SAMURAI's candidate box, with masked min/max over iota."""
  fg = masks > 0
  h, w = fg.shape[-2], fg.shape[-1]
  rows = jnp.any(fg, axis=-1)  # [..., H]
  cols = jnp.any(fg, axis=-2)  # [..., W]
  ys = jnp.arange(h, dtype=jnp.int32)
  xs = jnp.arange(w, dtype=jnp.int32)
  y_min = jnp.min(jnp.where(rows, ys, h), axis=-1)
  y_max = jnp.max(jnp.where(rows, ys, -1), axis=-1)
  x_min = jnp.min(jnp.where(cols, xs, w), axis=-1)
  x_max = jnp.max(jnp.where(cols, xs, -1), axis=-1)
  box = jnp.stack([x_min, y_min, x_max, y_max], axis=-1).astype(jnp.float32)
  return jnp.where(jnp.any(rows, axis=-1)[..., None], box, jnp.zeros_like(box))
