"""Writers that lay out tiny benchmark datasets from numpy arrays, in each reader's on-disk format.

Tests (and end-to-end `eval.py run` tests) build datasets on the fly with these instead of
shipping fixtures. Each sequence is a dict:

  frames         uint8 [T,H,W,3] RGB (written as JPEG with OpenCV, PNG for BADJA)
  names          optional frame stems (default: the benchmark's own numbering)
  masks          {frame index: int ids [H,W]} for annotated frames, or int ids [T,H,W]
  boxes_xywh     float [T,4]; NaN rows are absent targets, written as 0,0,0,0 and flagged absent
  absent         optional bool [T] (default: the NaN rows)
  points_xy      float [T,N,2] (x, y) pixels;  point_visible  bool [T,N]
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Dict, List, Optional

import numpy as np

from sam2pp_jax.io.png import save_palette_png


# ------------------------------------------------------------------------------ primitives
def _mkdir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


def encode_image(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
  """uint8 RGB [H,W,3] -> encoded bytes (OpenCV)."""
  import cv2

  params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
  ok, buf = cv2.imencode(ext, np.ascontiguousarray(np.asarray(rgb, np.uint8)[..., ::-1]), params)
  if not ok:
    raise ValueError(f"OpenCV cannot encode a {ext} image")
  return buf.tobytes()


def write_frames(
  folder: str, frames, names: List[str], ext: str = ".jpg", quality: int = 95
) -> List[str]:
  """One image per frame, `<folder>/<name><ext>`; returns the paths."""
  _mkdir(folder)
  paths = []
  for img, name in zip(frames, names, strict=True):
    path = os.path.join(folder, name + ext)
    with open(path, "wb") as f:
      f.write(encode_image(img, ext, quality))
    paths.append(path)
  return paths


def write_masks(folder: str, masks, names: List[str]) -> List[str]:
  """Palette PNGs `<folder>/<name>.png` for the annotated frames (dict or [T,H,W] ids)."""
  _mkdir(folder)
  items = masks.items() if isinstance(masks, dict) else enumerate(masks)
  paths = []
  for i, ids in items:
    path = os.path.join(folder, names[int(i)] + ".png")
    save_palette_png(path, np.asarray(ids))
    paths.append(path)
  return paths


def _num(v: float) -> str:
  return np.format_float_positional(float(v), trim="-")


def _absent(seq: dict) -> np.ndarray:
  boxes = np.asarray(seq["boxes_xywh"], np.float64)
  if seq.get("absent") is not None:
    return np.asarray(seq["absent"], bool)
  return ~np.isfinite(boxes).all(1)


def write_boxes(path: str, boxes_xywh, absent=None, sep: str = ",", rows: Optional[int] = None):
  """`x,y,w,h` lines; absent rows (NaN or flagged) become 0,0,0,0; `rows` keeps the first rows."""
  boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4).copy()
  if absent is not None:
    boxes[np.asarray(absent, bool)] = 0.0
  boxes[~np.isfinite(boxes).all(1)] = 0.0
  boxes = boxes[:rows] if rows else boxes
  _write_text(path, [sep.join(_num(v) for v in b) for b in boxes])


def _write_text(path: str, lines: List[str]):
  _mkdir(os.path.dirname(path) or ".")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def write_points_npz(path: str, points_xy, visible, size_wh):
  """SAM2-Plus point file: trajs_2d [T,N,2] float32 pixels, visibs [T,N] bool, size (W,H)."""
  _mkdir(os.path.dirname(path) or ".")
  np.savez(
    path,
    trajs_2d=np.asarray(points_xy, np.float32),
    visibs=np.asarray(visible, bool),
    size=np.asarray(size_wh, np.int64),
  )


def _names(seq: dict, fmt: str, start: int = 0) -> List[str]:
  t = len(seq["frames"])
  return list(seq.get("names") or [fmt % (i + start) for i in range(t)])


def _size_wh(seq: dict):
  h, w = np.asarray(seq["frames"]).shape[1:3]
  return (w, h)


# ------------------------------------------------------------------------------ VOS
def write_davis2017(
  root: str, seqs: Dict[str, dict], split: str = "val", resolution: str = "480p", quality: int = 95
):
  for name, seq in seqs.items():
    names = _names(seq, "%05d")
    write_frames(
      os.path.join(root, "JPEGImages", resolution, name), seq["frames"], names, quality=quality
    )
    write_masks(os.path.join(root, "Annotations", resolution, name), seq["masks"], names)
  _write_text(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), list(seqs))


def _object_frames(masks, names) -> Dict[str, dict]:
  """meta.json "objects": for each id, the frames (stems) whose annotation contains it."""
  items = sorted(masks.items() if isinstance(masks, dict) else enumerate(masks))
  objects: Dict[str, dict] = {}
  for i, ids in items:
    for v in np.unique(np.asarray(ids)):
      if v:
        objects.setdefault(str(int(v)), {"category": "object", "frames": []})["frames"].append(
          names[int(i)]
        )
  return objects


def write_youtubevos(
  root: str, seqs: Dict[str, dict], split: str = "valid", meta: bool = True, quality: int = 95
):
  """`<split>/JPEGImages`, `<split>/Annotations` (only the given frames) and `<split>/meta.json`."""
  base = os.path.join(root, split)
  videos = {}
  for name, seq in seqs.items():
    names = _names(seq, "%05d")
    write_frames(os.path.join(base, "JPEGImages", name), seq["frames"], names, quality=quality)
    write_masks(os.path.join(base, "Annotations", name), seq["masks"], names)
    videos[name] = {"objects": _object_frames(seq["masks"], names)}
  if meta:
    _write_text(os.path.join(base, "meta.json"), [json.dumps({"videos": videos})])


def write_mose(root: str, seqs: Dict[str, dict], split: str = "valid", quality: int = 95):
  write_youtubevos(root, seqs, split, meta=False, quality=quality)


# ------------------------------------------------------------------------------ SOT
def write_got10k(
  root: str, seqs: Dict[str, dict], split: str = "val", first_only: bool = False, quality: int = 95
):
  """`<split>/<seq>/%08d.jpg` from 1, groundtruth.txt, absence.label, cover.label, list.txt.

  first_only writes only frame 0's box (the test split); cover.label is 0 absent, 8 present.
  """
  base = os.path.join(root, split)
  for name, seq in seqs.items():
    d = os.path.join(base, name)
    write_frames(d, seq["frames"], _names(seq, "%08d", 1), quality=quality)
    absent = _absent(seq)
    write_boxes(
      os.path.join(d, "groundtruth.txt"), seq["boxes_xywh"], absent, rows=1 if first_only else None
    )
    if not first_only:
      _write_text(os.path.join(d, "absence.label"), [str(int(a)) for a in absent])
      _write_text(os.path.join(d, "cover.label"), ["0" if a else "8" for a in absent])
  _write_text(os.path.join(base, "list.txt"), list(seqs))


def write_lasot(root: str, seqs: Dict[str, dict], quality: int = 95):
  """`<class>/<class>-<n>/img/%08d.jpg` from 1, groundtruth.txt, full_occlusion.txt (the absent
  frames unless given), out_of_view.txt (`out_of_view` or zeros), testing_set.txt."""
  for name, seq in seqs.items():
    d = os.path.join(root, name.rsplit("-", 1)[0], name)
    write_frames(os.path.join(d, "img"), seq["frames"], _names(seq, "%08d", 1), quality=quality)
    absent = _absent(seq)
    write_boxes(os.path.join(d, "groundtruth.txt"), seq["boxes_xywh"], absent)
    occl = np.asarray(seq.get("full_occlusion", absent), bool)
    oov = np.asarray(seq.get("out_of_view", np.zeros_like(absent)), bool)
    _write_text(os.path.join(d, "full_occlusion.txt"), [",".join(str(int(v)) for v in occl)])
    _write_text(os.path.join(d, "out_of_view.txt"), [",".join(str(int(v)) for v in oov)])
  _write_text(os.path.join(root, "testing_set.txt"), list(seqs))


def write_trackingnet(
  root: str,
  seqs: Dict[str, dict],
  split: str = "TEST",
  first_only: Optional[bool] = None,
  quality: int = 95,
):
  """`<SPLIT>/frames/<seq>/<i>.jpg` from 0 and `<SPLIT>/anno/<seq>.txt` (TEST: frame 0 only)."""
  first_only = split.upper() == "TEST" if first_only is None else first_only
  for name, seq in seqs.items():
    write_frames(
      os.path.join(root, split, "frames", name), seq["frames"], _names(seq, "%d"), quality=quality
    )
    write_boxes(
      os.path.join(root, split, "anno", f"{name}.txt"),
      seq["boxes_xywh"],
      _absent(seq),
      rows=1 if first_only else None,
    )


# ------------------------------------------------------------------------------ points
def tapvid_entry(seq: dict, jpeg: bool = False, quality: int = 95) -> dict:
  """A TAP-Vid pickle entry: video, points [N,T,2] = pixels / (W, H), occluded [N,T]."""
  frames = np.asarray(seq["frames"], np.uint8)
  w, h = _size_wh(seq)
  pts = np.asarray(seq["points_xy"], np.float64) / np.array([w, h], np.float64)
  video = [encode_image(f, ".jpg", quality) for f in frames] if jpeg else frames
  return {
    "video": video,
    "points": pts.transpose(1, 0, 2).astype(np.float32),
    "occluded": ~np.asarray(seq["point_visible"], bool).T,
  }


def write_tapvid_pickle(path: str, videos, jpeg: bool = False, quality: int = 95):
  """A dict name -> entry (TAP-Vid DAVIS) or, for a list of sequences, a list (Kinetics shard)."""
  if isinstance(videos, dict):
    data = {k: tapvid_entry(v, jpeg, quality) for k, v in videos.items()}
  else:
    data = [tapvid_entry(v, jpeg, quality) for v in videos]
  _mkdir(os.path.dirname(path) or ".")
  with open(path, "wb") as f:
    pickle.dump(data, f)


def write_point_layout(
  root: str,
  seqs: Dict[str, dict],
  frame_dir: str = "JPEGImages",
  ext: str = ".jpg",
  quality: int = 95,
):
  """`<frame_dir>/<seq>/%05d<ext>` and `Points/<seq>.npz` (the reference's custom / TAG layout)."""
  for name, seq in seqs.items():
    write_frames(
      os.path.join(root, frame_dir, name), seq["frames"], _names(seq, "%05d"), ext, quality
    )
    write_points_npz(
      os.path.join(root, "Points", f"{name}.npz"),
      seq["points_xy"],
      seq["point_visible"],
      _size_wh(seq),
    )


def write_badja(root: str, seqs: Dict[str, dict]):
  """`PNGImages/<seq>/%05d.png`, `Points/<seq>.npz` and `Annotations/<seq>/%05d.png` masks."""
  write_point_layout(root, seqs, "PNGImages", ".png")
  for name, seq in seqs.items():
    if seq.get("masks") is not None:
      write_masks(os.path.join(root, "Annotations", name), seq["masks"], _names(seq, "%05d"))


# ------------------------------------------------------------------------------ TAG
def write_tag(root: str, seqs: Dict[str, dict], split: str = "valid", quality: int = 95):
  """`ImageSets/<split>.txt` and `<split>/{JPEGImages,Annotations,Boxes,Visibles,Points}`;
  each kind of ground truth is written when the sequence dict has it."""
  base = os.path.join(root, split)
  for name, seq in seqs.items():
    names = _names(seq, "%05d")
    write_frames(os.path.join(base, "JPEGImages", name), seq["frames"], names, quality=quality)
    if seq.get("masks") is not None:
      write_masks(os.path.join(base, "Annotations", name), seq["masks"], names)
    if seq.get("boxes_xywh") is not None:
      absent = _absent(seq)
      write_boxes(os.path.join(base, "Boxes", f"{name}.txt"), seq["boxes_xywh"], absent)
      _write_text(os.path.join(base, "Visibles", f"{name}.txt"), [str(int(not a)) for a in absent])
    if seq.get("points_xy") is not None:
      write_points_npz(
        os.path.join(base, "Points", f"{name}.npz"),
        seq["points_xy"],
        seq["point_visible"],
        _size_wh(seq),
      )
  _write_text(os.path.join(root, "ImageSets", f"{split}.txt"), list(seqs))
