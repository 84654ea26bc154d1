"""Benchmark-format writers for tracking results; every file is written atomically.

Formats follow the reference's benchmark readers (/tmp/ref = the SAM2-Plus repository):

* mask (VOS, DAVIS-style): one 8-bit palette PNG per frame, ``<frame name>.png``, pixel value =
  object id, 0 = background; objects are painted in decreasing id order so the lowest id wins
  on overlap (as ``put_per_obj_mask`` of the reference's ``tools/vos_inference.py``).
* box (SOT, GOT-10k style): ``<video>.txt``, one ``x y w h`` line per frame, integers separated
  by single spaces, a newline after every line, exactly as the reference's
  ``tools/sot_inference_plus.py`` writes them (``xyxy_to_xywh_int``: float32 ``x0, y0,
  x1 - x0, y1 - y0``, every value clipped at 0, then ``%d``, i.e. truncated toward zero) --
  ``benchmarks/sot_benchmark/utils.py`` reads results with ``np.loadtxt(path, dtype=int)``.
  The full-precision boxes go next to it, ``<video>_xyxy.npz`` (``box_float_path``):
  ``boxes_xyxy`` float32 [T,4] (x0, y0, x1, y1 video pixels, NaN on frames not tracked) and
  ``tracked`` bool [T]. ``write_box_results`` writes both.
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
  for i in np.argsort(np.asarray(obj_ids))[::-1]:  # highest id first, lowest painted last
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
  """[T,4] (x0,y0,x1,y1) float pixels -> int64 [T,4] (x, y, w, h) as the reference writes them.

  The reference's rule (``tools/sot_inference_plus.py``: ``np_box_clamp_xywh(
  np_box_xyxy_to_xywh(box))``, then ``np.savetxt(fmt="%d")``): in the box's float32,
  ``x = x0, y = y0, w = x1 - x0, h = y1 - y0``; every value clipped at 0 (so a box with x1 < x0
  gets w = 0, a corner left of / above the frame gets x / y = 0); ``%d`` truncates toward
  zero. The prompt frame is no exception: its line is the model's box on that frame.
  A non-finite value (NaN, +inf; -inf clips to 0) is written as 0: the reference has no output
  for it (``%d`` raises there).
  """
  b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)  # the reference's boxes are float32
  xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)  # float32 subtraction
  xywh = np.clip(xywh, np.float32(0), None)
  finite = np.isfinite(xywh)
  return np.trunc(np.where(finite, xywh, 0)).astype(np.int64)


def write_box_txt(path, boxes_xywh) -> str:
  """GOT-10k style result file: one 'x y w h' integer line per frame (np.savetxt fmt='%d')."""
  b = np.asarray(boxes_xywh, np.int64).reshape(-1, 4)
  text = "".join(f"{x} {y} {w} {h}\n" for x, y, w, h in b.tolist())
  _atomic_bytes(path, text.encode())
  return os.path.abspath(path)


def box_float_path(txt_path) -> str:
  """``<video>.txt`` -> ``<video>_xyxy.npz``, the full-precision boxes written next to it."""
  return os.path.splitext(os.fspath(txt_path))[0] + "_xyxy.npz"


def write_box_results(txt_path, boxes_xyxy, tracked=None) -> list:
  """Write a video's box results: ``<video>_xyxy.npz`` (float32 xyxy, NaN where not tracked;
  ``tracked`` bool [T]), then ``<video>.txt`` (the reference's integer ``x y w h``; "0 0 0 0"
  where not tracked). The txt goes last, so its presence means both are complete.
  Returns both paths (npz, txt)."""
  b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
  tr = np.ones(len(b), bool) if tracked is None else np.asarray(tracked, bool).reshape(len(b))
  buf = io.BytesIO()
  np.savez(buf, boxes_xyxy=np.where(tr[:, None], b, np.float32(np.nan)), tracked=tr)
  npz = box_float_path(txt_path)
  _atomic_bytes(npz, buf.getvalue())
  xywh = xyxy_to_xywh_int(b)
  xywh[~tr] = 0
  return [os.path.abspath(npz), write_box_txt(txt_path, xywh)]


def write_points_npz(path, trajs_2d, visibs, size_wh) -> str:
  """TAP-Vid style npz: trajs_2d float32 [T,N,2] (x, y), visibs bool [T,N], size [W, H]."""
  buf = io.BytesIO()
  np.savez(
    buf,
    trajs_2d=np.asarray(trajs_2d, np.float32),
    visibs=np.asarray(visibs, bool),
    size=np.asarray(size_wh, np.int64).reshape(2),
  )
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
