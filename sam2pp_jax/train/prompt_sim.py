"""Prompt simulation for training, inside jit: box corners (clean or noised), a click sampled
uniformly from the error region (the reference's `get_next_point(method="uniform")`), and the
Gaussian point heatmap. Fixed shapes; randomness from explicit keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BOX_LABELS = (2, 3)


def mask_to_box(masks):
  """[N,H,W] bool -> [N,4] xyxy (max index inclusive); an empty mask gives zeros (as SAM 2)."""
  n, h, w = masks.shape
  ys = jnp.arange(h, dtype=jnp.float32)
  xs = jnp.arange(w, dtype=jnp.float32)
  row = jnp.any(masks, axis=2)
  col = jnp.any(masks, axis=1)
  big = jnp.float32(1e9)
  x0 = jnp.min(jnp.where(col, xs, big), axis=1)
  x1 = jnp.max(jnp.where(col, xs, -big), axis=1)
  y0 = jnp.min(jnp.where(row, ys, big), axis=1)
  y1 = jnp.max(jnp.where(row, ys, -big), axis=1)
  box = jnp.stack([x0, y0, x1, y1], axis=1)
  return jnp.where(jnp.any(row, axis=1)[:, None], box, 0.0)


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


def gaussian_heatmaps(points_xy, size: int, radius: int, sigma: float):
  """[N,2] model-pixel points -> [N,S,S] float32 heatmaps: exp(-d^2 / (2 sigma^2)) on the disc
  d <= r around the point's integer pixel, peak 1 (what `prompts.gaussian_point_mask` draws)."""
  c = jnp.trunc(points_xy).astype(jnp.int32)                      # int() truncation
  ar = jnp.arange(size)
  dx = ar[None, :] - c[:, 0:1]                                      # [N,S]
  dy = ar[None, :] - c[:, 1:2]
  d2 = (dx[:, None, :] ** 2 + dy[:, :, None] ** 2).astype(jnp.float32)
  g = jnp.exp(-d2 / (2.0 * sigma ** 2))
  keep = (d2 <= radius * radius) & (g >= jnp.finfo(jnp.float64).eps)
  return jnp.where(keep, g, 0.0).astype(jnp.float32)
