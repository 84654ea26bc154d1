"""Prompt construction at model resolution: point -> Gaussian mask, mask -> box, box -> corner
points, masks.

The user-prompt helpers run on the host in numpy (prompts are tiny and arrive from users) and
follow the reference predictor's arithmetic so the model sees bit-identical inputs. The two
helpers training also needs inside jit, `gaussian_heatmaps` and `mask_to_box`, are the single
implementations for inference and training alike.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.resize import bilinear_matrix

BOX_LABELS = (2, 3)  # top-left, bottom-right corner labels


def _gaussian_profile(radius: int, sigma: float) -> np.ndarray:
  """float32 [r*r + 1]: the heat at integer squared distance d2 = 0..r*r from the centre.

  exp(-d2 / (2 sigma^2)) in float64, rounded once to float32 (the reference builds its disc
  kernel in float64, peak 1, and zeroes values below float64 eps). Computed on the host, so the
  heatmap is bit-identical on every backend (no device exp)."""
  d2 = np.arange(int(radius) ** 2 + 1, dtype=np.float64)
  g = np.exp(-d2 / (2.0 * sigma * sigma))
  g[g < np.finfo(np.float64).eps] = 0.0
  return g.astype(np.float32)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def gaussian_heatmaps(points_xy, size, radius: int = 5, sigma: float = 2.0) -> jax.Array:
  """[N,2] model-pixel (x, y) points -> float32 [N,H,W] heatmaps (jit-able, fixed shapes).

  Each is the reference's point prompt: exp(-d^2 / (2 sigma^2)) on the disc d <= radius around
  the point's integer pixel (coordinates truncated towards zero, Python's int()), peak 1, zero
  elsewhere; d is measured between integer pixels. `size` is S (square) or (H, W); radius,
  sigma and size are static.
  """
  h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
  c = jnp.trunc(jnp.asarray(points_xy, jnp.float32)).astype(jnp.int32)  # [N,2]
  dx = jnp.arange(w, dtype=jnp.int32)[None, :] - c[:, 0:1]  # [N,W]
  dy = jnp.arange(h, dtype=jnp.int32)[None, :] - c[:, 1:2]  # [N,H]
  d2 = dx[:, None, :] ** 2 + dy[:, :, None] ** 2  # [N,H,W]
  inside = d2 <= int(radius) ** 2
  table = jnp.asarray(_gaussian_profile(radius, sigma))
  return jnp.where(inside, table[jnp.where(inside, d2, 0)], jnp.float32(0))


def gaussian_point_mask(
  x: float, y: float, size: tuple[int, int], radius: int = 5, sigma: float = 2.0
) -> np.ndarray:
  """float32 [H, W] numpy heatmap of one point given at model scale (`gaussian_heatmaps`)."""
  centre = np.array([[int(x), int(y)]], np.float32)  # truncate on the host, in float64
  return np.asarray(
    gaussian_heatmaps(centre, (int(size[0]), int(size[1])), int(radius), float(sigma))[0]
  )


def mask_to_box(masks):
  """Tight box of each mask: bool [..., H, W] -> float32 [..., 4] xyxy; all zeros when empty.

  The project's one box convention: pixel i covers [i, i + 1) (as `to_model_coords`), so the
  box of the pixels x0..x_max, y0..y_max is the pixel extent [x0, y0, x_max + 1, y_max + 1]:
  `x + w` of benchmark xywh boxes (w counts pixels), and the inverse of rasterising a box as
  mask[y0:y1, x0:x1]. A numpy array gives numpy (host data pipeline); a jax array or tracer
  gives jax (inside jit).
  """
  xp = jnp if isinstance(masks, jax.Array) else np
  m = xp.asarray(masks).astype(bool)
  h, w = m.shape[-2:]
  rows, cols = m.any(axis=-1), m.any(axis=-2)  # [..., H], [..., W]
  y0, y1 = rows.argmax(axis=-1), h - rows[..., ::-1].argmax(axis=-1)
  x0, x1 = cols.argmax(axis=-1), w - cols[..., ::-1].argmax(axis=-1)
  box = xp.stack([x0, y0, x1, y1], axis=-1).astype(xp.float32)
  return xp.where(rows.any(axis=-1)[..., None], box, xp.float32(0))


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


# ---------------------------------------------------------------------------------------------
# Validators: one clear ValueError naming the argument, the offending value and the fix.

CLICK_LABELS = (0, 1)  # the reference's user clicks: 1 positive, 0 negative (2/3 = box corners)


def check_frame_index(frame_idx, num_frames: int) -> int:
  """frame_idx must be an integer in [0, num_frames); returns it as int."""
  n = int(num_frames)
  if n < 1:
    raise ValueError(
      f"num_frames={num_frames!r}: the video has no frames; give a video with at least one frame"
    )
  try:
    f = int(frame_idx)
    ok = f == frame_idx
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(
      f"frame_idx={frame_idx!r} is not an integer; give a frame index in [0, {n - 1}]"
    )
  if not 0 <= f < n:
    raise ValueError(
      f"frame_idx={f} is out of range for a video of {n} frames; give a frame index in [0, {n - 1}]"
    )
  return f


def _hw(video_hw):
  h, w = (int(v) for v in video_hw)
  if h < 1 or w < 1:
    raise ValueError(f"video_hw={tuple(video_hw)!r} is not a valid (height, width)")
  return h, w


def check_points(points_xy, labels, video_hw, allowed_labels=CLICK_LABELS):
  """points_xy [...,P,2] (x, y) video pixels inside [0,W]x[0,H]; labels [...,P] in allowed.

  Returns (float32 points [...,P,2], int32 labels [...,P]). labels=None means all positive.
  """
  h, w = _hw(video_hw)
  try:
    xy = np.asarray(points_xy, np.float64)
  except (TypeError, ValueError):
    raise ValueError(
      f"points_xy={points_xy!r} is not numeric; give (x, y) pixel coordinates"
    ) from None
  if xy.ndim < 1 or xy.shape[-1] != 2 or xy.size == 0:
    raise ValueError(
      f"points_xy has shape {xy.shape}; give at least one point as (x, y) pairs, shape [..., P, 2]"
    )
  if not np.all(np.isfinite(xy)):
    raise ValueError(f"points_xy={xy.tolist()!r} contains NaN/inf; give finite pixel coordinates")
  bad = (xy[..., 0] < 0) | (xy[..., 0] > w) | (xy[..., 1] < 0) | (xy[..., 1] > h)
  if bad.any():
    p = xy[bad][0].tolist()
    raise ValueError(
      f"points_xy: point (x, y)={tuple(p)} is outside the {w}x{h} frame; give "
      f"points with 0 <= x <= {w} and 0 <= y <= {h}"
    )
  if labels is None:
    lab = np.ones(xy.shape[:-1], np.int64)
  else:
    lab = np.asarray(labels)
    if lab.shape != xy.shape[:-1]:
      raise ValueError(
        f"labels has shape {lab.shape} but points_xy has {xy.shape[:-1]} "
        "points; give one label per point"
      )
    if lab.size and not np.all(np.isin(lab, np.asarray(allowed_labels))):
      v = lab[~np.isin(lab, np.asarray(allowed_labels))].ravel()[0].item()
      raise ValueError(
        f"labels: value {v!r} is not allowed; use one of "
        f"{tuple(allowed_labels)} (1 = positive click, 0 = negative click)"
      )
  return xy.astype(np.float32), lab.astype(np.int32)


def check_box(box_xyxy, video_hw) -> np.ndarray:
  """box (x0, y0, x1, y1) video pixels inside the frame with x1 > x0, y1 > y0; float32 [4]."""
  h, w = _hw(video_hw)
  try:
    b = np.asarray(box_xyxy, np.float64).reshape(-1)
  except (TypeError, ValueError):
    raise ValueError(f"box_xyxy={box_xyxy!r} is not numeric; give x0,y0,x1,y1 in pixels") from None
  if b.shape != (4,):
    raise ValueError(f"box_xyxy={b.tolist()!r} has {b.size} values; give exactly four: x0,y0,x1,y1")
  if not np.all(np.isfinite(b)):
    raise ValueError(f"box_xyxy={b.tolist()!r} contains NaN/inf; give finite pixel coordinates")
  x0, y0, x1, y1 = b.tolist()
  if x1 <= x0 or y1 <= y0:
    raise ValueError(
      f"box_xyxy={(x0, y0, x1, y1)} is empty or inverted (need x1 > x0 and "
      "y1 > y0); give the top-left corner first, then the bottom-right"
    )
  if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
    raise ValueError(
      f"box_xyxy={(x0, y0, x1, y1)} is outside the {w}x{h} frame; give "
      f"0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}"
    )
  return b.astype(np.float32)


def check_mask(mask, video_hw) -> np.ndarray:
  """mask: 2-D [H, W] matching the video, with at least one foreground pixel; bool copy."""
  h, w = _hw(video_hw)
  m = np.asarray(mask)
  if m.ndim != 2:
    raise ValueError(f"mask has shape {m.shape}; give a 2-D [height, width] mask")
  if m.shape != (h, w):
    raise ValueError(
      f"mask has size {m.shape[1]}x{m.shape[0]} (WxH) but the video is "
      f"{w}x{h}; give a mask of the video's size"
    )
  m = m.astype(bool)
  if not m.any():
    raise ValueError(
      "mask is empty (no foreground pixel); give a mask with at least one non-zero pixel"
    )
  return m
