"""Overlay drawing (OpenCV, RGB in / RGB out) for the app and the exported overlay video.

`draw_overlay(rgb, *, ids, boxes, points, trails, clicks, box_prompts, palette)` returns a new
uint8 [H,W,3] RGB frame:

* ids: uint8 [H,W] object-id map (0 = background), blended in each object's palette colour
  (`tracking.outputs.blend_ids`, alpha 0.5) with a 1-px contour;
* boxes: {obj_id: (x0, y0, x1, y1)} tracked boxes, drawn in the object's colour with its id;
* points: {obj_id: (x, y, visible)} tracked points (filled disc when visible, ring when not);
  trails: {obj_id: [(x, y), ...]} the previous positions, oldest first, as a fading polyline;
* clicks: [(x, y, positive)] the prompts of the shown frame: green (positive) / red (negative)
  discs with a white rim; box_prompts: [(x0, y0, x1, y1)] the user's box prompts, white, dashed.

Line widths and radii scale with the frame size (`_scale`), so 64 px and 1080p frames both read.
"""

from __future__ import annotations

import cv2
import numpy as np

from sam2pp_jax.io.png import davis_palette
from sam2pp_jax.tracking.outputs import blend_ids

POSITIVE_RGB = (0, 200, 0)
NEGATIVE_RGB = (230, 0, 0)
PROMPT_BOX_RGB = (255, 255, 255)
PALETTE = davis_palette()


def colour(obj_id: int, palette=None) -> tuple:
  """RGB colour of an object id (the DAVIS palette, as the exported PNGs)."""
  pal = PALETTE if palette is None else np.asarray(palette, np.uint8)
  return tuple(int(c) for c in pal[int(obj_id) % len(pal)])


def _scale(h: int, w: int) -> int:
  return max(1, int(round(min(h, w) / 240)))


def _pt(x, y) -> tuple:
  return int(round(float(x))), int(round(float(y)))


def _dashed_rect(img, p0, p1, col, th, dash):
  (x0, y0), (x1, y1) = p0, p1
  segs = []
  for a, b, fixed, horiz in (
    (x0, x1, y0, True),
    (x0, x1, y1, True),
    (y0, y1, x0, False),
    (y0, y1, x1, False),
  ):
    lo, hi = min(a, b), max(a, b)
    for s in range(lo, hi + 1, 2 * dash):
      e = min(s + dash, hi)
      segs.append(((s, fixed), (e, fixed)) if horiz else ((fixed, s), (fixed, e)))
  for p, q in segs:
    cv2.line(img, p, q, col, th, cv2.LINE_AA)


def draw_overlay(
  rgb,
  *,
  ids=None,
  boxes=None,
  points=None,
  trails=None,
  clicks=(),
  box_prompts=(),
  palette=None,
  alpha: float = 0.5,
) -> np.ndarray:
  """A copy of `rgb` (uint8 [H,W,3]) with the results and prompts drawn on it (module doc)."""
  pal = PALETTE if palette is None else np.asarray(palette, np.uint8)
  img = np.ascontiguousarray(np.asarray(rgb, np.uint8)[..., ::-1])  # BGR for OpenCV
  h, w = img.shape[:2]
  s = _scale(h, w)
  bgr = lambda obj: tuple(reversed(colour(obj, pal)))
  if ids is not None and np.any(ids):
    ids = np.asarray(ids, np.uint8)
    img = np.ascontiguousarray(blend_ids(img, ids, pal, alpha))
    for obj in np.unique(ids[ids > 0]):
      cs, _ = cv2.findContours(
        (ids == obj).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
      )
      cv2.drawContours(img, cs, -1, bgr(obj), 1, cv2.LINE_AA)
  for obj, b in (boxes or {}).items():
    if b is None or not np.all(np.isfinite(b)):
      continue
    p0, p1 = _pt(b[0], b[1]), _pt(b[2], b[3])
    cv2.rectangle(img, p0, p1, bgr(obj), 2 * s, cv2.LINE_AA)
    cv2.putText(
      img,
      str(obj),
      (p0[0] + 2, max(p0[1] - 3, 10 * s)),
      cv2.FONT_HERSHEY_SIMPLEX,
      0.35 * s,
      bgr(obj),
      s,
      cv2.LINE_AA,
    )
  for obj, tr in (trails or {}).items():
    tr = [p for p in tr if p is not None and np.all(np.isfinite(p))]
    n = len(tr)
    for i in range(1, n):
      fade = 0.3 + 0.7 * i / max(n - 1, 1)
      col = tuple(int(c * fade) for c in bgr(obj))
      cv2.line(img, _pt(*tr[i - 1]), _pt(*tr[i]), col, s, cv2.LINE_AA)
  for obj, p in (points or {}).items():
    if p is None or not np.all(np.isfinite(p[:2])):
      continue
    c = _pt(p[0], p[1])
    vis = bool(p[2]) if len(p) > 2 else True
    cv2.circle(img, c, 3 * s, bgr(obj), -1 if vis else s, cv2.LINE_AA)
    cv2.circle(img, c, 3 * s + 1, (0, 0, 0), 1, cv2.LINE_AA)
  for b in box_prompts:
    _dashed_rect(img, _pt(b[0], b[1]), _pt(b[2], b[3]), PROMPT_BOX_RGB[::-1], s, 4 * s)
  for x, y, positive in clicks:
    col = (POSITIVE_RGB if positive else NEGATIVE_RGB)[::-1]
    cv2.circle(img, _pt(x, y), 3 * s + 1, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(img, _pt(x, y), 3 * s, col, -1, cv2.LINE_AA)
  return np.ascontiguousarray(img[..., ::-1])
