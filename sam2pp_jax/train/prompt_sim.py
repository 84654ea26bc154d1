"""Prompt simulation for training, inside jit: box corners (clean or noised) and a click sampled
uniformly from the error region (the reference's `get_next_point(method="uniform")`). Fixed
shapes; randomness from explicit keys. The mask -> box and the Gaussian point heatmap that
training shares with the tracker are in `sam2pp_jax.tracking.prompts`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sam2pp_jax.tracking.prompts import BOX_LABELS


def box_points(key, boxes_xyxy, image_size: int, noise: float = 0.1, noise_bound: float = 20.0):
  """[N,4] boxes -> corners [N,2,2], labels [N,2] (2 = top-left, 3 = bottom-right).

  With noise > 0 each coordinate moves uniformly by up to min(noise * side, noise_bound) pixels
  and is clamped to [0, S-1] (SAM's noised box prompt)."""
  n = boxes_xyxy.shape[0]
  b = boxes_xyxy.astype(jnp.float32)
  if noise > 0:
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    mdx = jnp.minimum(w * noise, noise_bound)
    mdy = jnp.minimum(h * noise, noise_bound)
    u = 2.0 * jax.random.uniform(key, (n, 4)) - 1.0
    b = b + u * jnp.stack([mdx, mdy, mdx, mdy], axis=1)
    b = jnp.clip(b, 0.0, float(image_size - 1))
  labels = jnp.broadcast_to(jnp.array(BOX_LABELS, jnp.int32), (n, 2))
  return b.reshape(n, 2, 2), labels


def click_from_errors(key, gt_masks, pred_masks=None):
  """One click per object from the error region: [N,1,2] (x, y) float, labels [N,1] int32.

  Every pixel of the false-positive (label 0) and false-negative (label 1) maps gets a uniform
  score and the arg-max wins, so the click is uniform over the union of both error regions.
  A prediction equal to the GT gives a negative click on the background."""
  gt = gt_masks.astype(bool)
  n, h, w = gt.shape
  pred = jnp.zeros_like(gt) if pred_masks is None else pred_masks.astype(bool)
  fp = ~gt & pred
  fn = gt & ~pred
  all_ok = jnp.all(gt == pred, axis=(1, 2))[:, None, None]
  noise = jax.random.uniform(key, (n, h, w, 2))
  noise = noise * jnp.stack([fp | (all_ok & ~gt), fn], axis=-1)
  idx = jnp.argmax(noise.reshape(n, -1), axis=1)
  label = (idx % 2).astype(jnp.int32)
  pix = idx // 2
  xy = jnp.stack([pix % w, pix // w], axis=1).astype(jnp.float32)
  return xy[:, None, :], label[:, None]
