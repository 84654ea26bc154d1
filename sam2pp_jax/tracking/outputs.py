"""Benchmark-format writers for tracking results; every file is written atomically.

Formats follow the reference's benchmark readers (/tmp/ref = the SAM2-Plus repository):

* mask (VOS, DAVIS-style): one 8-bit palette PNG per frame, ``<frame name>.png``, pixel value =
  object id, 0 = background; objects are painted in decreasing id order so the lowest id wins
  on overlap (as ``put_per_obj_mask`` of the reference's ``tools/vos_inference.py``).
* box (SOT, GOT-10k style): ``<video>.txt``, one ``x y w h`` line per frame, integers separated
  by spaces -- ``benchmarks/sot_benchmark/utils.py`` reads results with
  ``np.loadtxt(path, dtype=int)`` (whitespace, integers).
* point (TAP-Vid style): ``<video>.npz`` with ``trajs_2d`` float32 [T,N,2] (x, y pixels),
  ``visibs`` bool [T,N] and ``size`` int64 [2] = (W, H) --
  ``benchmarks/pt_benchmark/metrics/Jaccard.py`` reads ``trajs_2d`` (astype int), ``visibs``
  (astype bool) and ``size`` (reshaped to (1,1,2), w, h).
"""

from __future__ import annotations

import io
import os

import numpy as np

from sam2pp_jax.io.atomic import atomic_dir, atomic_path
from sam2pp_jax.io.atomic import atomic_write_bytes as _atomic_bytes
from sam2pp_jax.io.png import davis_palette, save_palette_png


def ids_from_logits(logits, obj_ids) -> np.ndarray:
  """[B,H,W] video-res logits of objects obj_ids -> uint8 [H,W] id map (logit > 0)."""
  logits = np.asarray(logits)
  out = np.zeros(logits.shape[1:], np.uint8)
  for i in np.argsort(np.asarray(obj_ids))[::-1]:    # highest id first, lowest painted last
    out[logits[i] > 0] = int(obj_ids[i])
  return out


def write_mask_dir(out_dir, frame_names, id_maps, palette=None, on_frame=None) -> str:
  """Write `id_maps` (iterable of uint8 [H,W]) as `<out_dir>/<name>.png`, atomically.

  The PNGs go to a temporary sibling directory that replaces `out_dir` only when complete.
  """
  pal = davis_palette() if palette is None else palette
  with atomic_dir(out_dir) as tmp:
    for i, (name, ids) in enumerate(zip(frame_names, id_maps)):
      save_palette_png(os.path.join(tmp, os.path.splitext(name)[0] + ".png"), ids, pal)
      if on_frame is not None:
        on_frame(i)
  return os.path.abspath(os.fspath(out_dir))


def xyxy_to_xywh_int(boxes_xyxy) -> np.ndarray:
  """[T,4] (x0,y0,x1,y1) float pixels -> int64 [T,4] (x, y, w, h), corners rounded."""
  b = np.asarray(boxes_xyxy, np.float64)
  b = np.rint(np.where(np.isfinite(b), b, 0.0)).astype(np.int64)   # non-finite -> 0
  return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def write_box_txt(path, boxes_xywh) -> str:
  """GOT-10k style result file: one 'x y w h' integer line per frame."""
  b = np.asarray(boxes_xywh, np.int64).reshape(-1, 4)
  text = "".join(f"{x} {y} {w} {h}\n" for x, y, w, h in b.tolist())
  _atomic_bytes(path, text.encode())
  return os.path.abspath(path)


def write_points_npz(path, trajs_2d, visibs, size_wh) -> str:
  """TAP-Vid style npz: trajs_2d float32 [T,N,2] (x, y), visibs bool [T,N], size [W, H]."""
  buf = io.BytesIO()
  np.savez(buf, trajs_2d=np.asarray(trajs_2d, np.float32),
           visibs=np.asarray(visibs, bool), size=np.asarray(size_wh, np.int64).reshape(2))
  _atomic_bytes(path, buf.getvalue())
  return os.path.abspath(path)


def write_overlay_mp4(path, frames_u8, draw, fps: float | None = None, on_frame=None) -> str:
  """An mp4 of RGB frames [T,H,W,3] with draw(t, bgr_frame) -> bgr_frame applied, atomically."""
  import cv2
  path = os.path.abspath(os.fspath(path))
  h, w = frames_u8.shape[1:3]
  with atomic_path(path, suffix=".mp4") as tmp:
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps or 24.0), (w, h))
    try:
      if not writer.isOpened():
        raise OSError(f"OpenCV cannot write an mp4 to {path!r} (no mp4v encoder)")
      for t in range(frames_u8.shape[0]):
        bgr = np.ascontiguousarray(frames_u8[t][..., ::-1])
        writer.write(np.ascontiguousarray(draw(t, bgr)))
        if on_frame is not None:
          on_frame(t)
    finally:
      writer.release()
  return path


def blend_ids(bgr, ids, palette, alpha: float = 0.5):
  """Colour the pixels of each non-zero id with its palette colour (BGR frame)."""
  ids = np.asarray(ids)
  fg = ids > 0
  if not fg.any():
    return bgr
  col = np.asarray(palette, np.uint8)[ids][..., ::-1].astype(np.float32)
  out = bgr.astype(np.float32)
  out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
  return out.astype(np.uint8)
