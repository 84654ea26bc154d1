"""Prompt construction at model resolution: point -> Gaussian mask, box -> corner points, masks.

These run on the host in numpy (prompts are tiny and arrive from users), and follow the
reference predictor's arithmetic so the model sees bit-identical inputs.
"""

from __future__ import annotations

import numpy as np

from sam2pp_jax.model.resize import bilinear_matrix

BOX_LABELS = (2, 3)      # top-left, bottom-right corner labels
PAD_LABEL = -1           # "not a point"


def gaussian_kernel(radius: int, sigma: float) -> np.ndarray:
  """[2r+1, 2r+1] float64 disc-shaped Gaussian with peak 1 (tiny tails zeroed)."""
  off = np.arange(-radius, radius + 1, dtype=np.float64)
  d2 = off[None, :] ** 2 + off[:, None] ** 2
  g = np.exp(-d2 / (2.0 * sigma * sigma))
  g[g < np.finfo(np.float64).eps * g.max()] = 0.0
  g[d2 > radius * radius] = 0.0
  return g


def gaussian_point_mask(x: float, y: float, size: tuple[int, int], radius: int = 5,
                        sigma: float = 2.0) -> np.ndarray:
  """float32 [H, W] heatmap of a point given at model scale (centre truncated to int)."""
  h, w = size
  cx, cy = int(x), int(y)
  heat = np.zeros((h, w), np.float32)
  g = gaussian_kernel(radius, sigma)
  left, right = min(cx, radius), min(w - cx, radius + 1)
  top, bottom = min(cy, radius), min(h - cy, radius + 1)
  if min(right + left, bottom + top) <= 0 or cx < -radius or cy < -radius:
    return heat
  dst = heat[cy - top:cy + bottom, cx - left:cx + right]
  src = g[radius - top:radius + bottom, radius - left:radius + right]
  if dst.size and src.size:
    np.maximum(dst, src, out=dst)
  return heat


def to_model_coords(xy, video_hw: tuple[int, int], image_size: int) -> np.ndarray:
  """Video-pixel (x, y) points -> model-scale coordinates, float32 as the reference."""
  h, w = video_hw
  xy = np.asarray(xy, np.float32).reshape(-1, 2)
  return (xy / np.array([w, h], np.float32) * np.float32(image_size)).astype(np.float32)


def box_to_points(box_xyxy, video_hw, image_size):
  """A box (x0, y0, x1, y1) in video pixels -> two model-scale points with labels 2, 3."""
  pts = to_model_coords(np.asarray(box_xyxy, np.float32).reshape(2, 2), video_hw, image_size)
  return pts, np.array(BOX_LABELS, np.int32)


def mask_to_model_res(mask, image_size: int) -> np.ndarray:
  """Bool [H, W] mask -> bool [S, S]: antialiased bilinear resize then >= 0.5 (as reference)."""
  m = np.asarray(mask, np.float32)
  mh = bilinear_matrix(m.shape[0], image_size, antialias=True)
  mw = bilinear_matrix(m.shape[1], image_size, antialias=True)
  return (mh @ m @ mw.T) >= 0.5
