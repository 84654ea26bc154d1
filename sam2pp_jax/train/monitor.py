"""Training-time quality monitors (no gradient): what the losses do not say directly.

`track_iou` is the IoU of the mask the tracker would output (the candidate with the highest
predicted IoU, first prediction step) on frames tracked from memory, where the target is present;
for the point task `track_px` is the distance in model pixels from the argmax of that candidate's
logits to the target point. A collapse (constant output, memory ignored) shows here first.
`copy_iou` / `copy_px` score the copy-first-frame baseline on the same frames (the frame-0
target repeated): a tracker that does not beat it has not learned to follow the object.
"""

from __future__ import annotations

from typing import Dict, Mapping

import jax
import jax.numpy as jnp

from sam2pp_jax.tracking.point_readout import argmax_point
from sam2pp_jax.train.forward import B_TRACK
from sam2pp_jax.train.losses import binary_mask_iou


def _mean_over(values: jax.Array, live: jax.Array) -> jax.Array:
  """Mean of `values` where `live` (0 when nothing is live)."""
  return jnp.sum(jnp.where(live, values, 0.0)) / jnp.maximum(jnp.sum(live), 1)


def tracking_quality(
  outputs: Mapping[str, jax.Array],
  targets: Mapping[str, jax.Array],
  branch: jax.Array,
  valid: jax.Array,
  task: str,
  objects_per_clip: int = 1,
) -> Dict[str, jax.Array]:
  masks = jax.lax.stop_gradient(outputs["multistep_pred_multimasks_high_res"][:, 0])  # [T,N,M,H,W]
  ious = jax.lax.stop_gradient(outputs["multistep_pred_ious"][:, 0])  # [T,N,M]
  cand = (
    jnp.broadcast_to(outputs["candidate_valid"][:, 0][:, None, :], ious.shape)
    if outputs["candidate_valid"].ndim == 3
    else outputs["candidate_valid"][:, 0]
  )
  best = jnp.argmax(jnp.where(cand, ious, -jnp.inf), axis=-1)  # [T,N]
  logits = jnp.take_along_axis(masks, best[..., None, None, None], axis=2)[:, :, 0]  # [T,N,H,W]
  tracked = (branch == B_TRACK)[:, None] & valid  # [T,N]
  if task == "point":
    xy = argmax_point(logits).astype(jnp.float32) + 0.5  # pixel centre, as the targets
    err = jnp.linalg.norm(xy - targets["points"], axis=-1)
    live = tracked & targets["visibles"]
    copy_err = jnp.linalg.norm(targets["points"][:1] - targets["points"], axis=-1)
    out = {"track_px": _mean_over(err, live), "copy_px": _mean_over(copy_err, live)}
  else:
    gt = targets["masks"] > 0  # processing order: frame 0 first
    live = tracked & jnp.any(gt, axis=(-2, -1))
    iou = binary_mask_iou(logits > 0, gt)
    copy = binary_mask_iou(jnp.broadcast_to(gt[:1], gt.shape), gt)
    out = {"track_iou": _mean_over(iou, live), "copy_iou": _mean_over(copy, live)}
  if objects_per_clip > 1:
    out["obj_spread"] = object_spread(logits, tracked, objects_per_clip)
  return out


def object_spread(logits: jax.Array, tracked: jax.Array, objects_per_clip: int) -> jax.Array:
  """How much the tracked frames' logits [T,N,H,W] (N = clips x objects_per_clip) differ
  between the objects of one clip: the mean absolute deviation from their clip's mean over the
  mean absolute logit (tracked entries only). 0 means every object of a clip gets the same
  output: the memory carries no object identity (what from-scratch runs collapsed to; track_iou
  alone does not say why)."""
  t_, n, h, w = logits.shape
  o = int(objects_per_clip)
  x = logits.reshape(t_, n // o, o, h, w)
  m = tracked.reshape(t_, n // o, o, 1, 1).astype(jnp.float32)
  cnt = jnp.sum(m, axis=2, keepdims=True)
  mean = jnp.sum(x * m, axis=2, keepdims=True) / jnp.maximum(cnt, 1.0)
  multi = m * (cnt > 1)  # clips with at least two tracked objects
  denom = jnp.maximum(jnp.sum(multi) * h * w, 1.0)
  dev = jnp.sum(jnp.abs(x - mean) * multi) / denom
  scale = jnp.sum(jnp.abs(x) * multi) / denom
  return dev / jnp.maximum(scale, 1e-6)
