"""Box (SOT) benchmark readers: GOT-10k, LaSOT and TrackingNet.

One target per video (object id 1), prompted with its first annotated box as the reference
`sot_inference.py` does; test splits that publish only the first box keep NaN rows after it.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from sam2pp_jax.data.formats.base import (
  Dataset,
  DatasetError,
  Sequence,
  check_length,
  disk_frames,
  existing_dir,
  existing_file,
  fixed_task,
  read_flags,
  read_lines,
  read_table,
  register,
)
from sam2pp_jax.io.video import natural_sort_key


def read_boxes(path: str) -> np.ndarray:
  """float64 [rows, 4] x,y,w,h of a comma- or space-separated annotation file."""
  return read_table(existing_file(path, "box annotation"), 4, "box annotation")


def box_sequence(
  name: str, frame_dir: str, gt_path: str, boxes=None, visible=None, meta=None
) -> Sequence:
  """A one-target Sequence from a frame folder and its `x,y,w,h` per-line annotation file."""
  frames, stems = disk_frames(frame_dir)
  boxes = read_boxes(gt_path) if boxes is None else boxes
  meta = dict(meta or {}, box_file=gt_path)
  return Sequence(name, "box", frames, stems, boxes_xywh=boxes, box_visible=visible, meta=meta)


def _subdirs(folder: str) -> List[str]:
  return sorted(
    (n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))), key=natural_sort_key
  )


# ------------------------------------------------------------------------------ GOT-10k
@register("got10k")
def open_got10k(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`<split>/<seq>/*.jpg`, groundtruth.txt (x,y,w,h), absence.label, cover.label, <split>/list.txt.

  Visible = absence.label == 0 and w, h > 0; cover.label (0..8) is kept in `meta["cover"]`.
  Without list.txt every sequence folder is listed.
  """
  task = fixed_task("got10k", "box", task)
  split = split or "val"
  base = os.path.join(root, split)
  if not os.path.isdir(base) and os.path.isfile(os.path.join(root, "list.txt")):
    base = root
  existing_dir(base, "GOT-10k split folder")
  list_path = os.path.join(base, "list.txt")
  names = read_lines(list_path, "GOT-10k list") if os.path.isfile(list_path) else _subdirs(base)

  def build(name):
    d = os.path.join(base, name)
    existing_dir(d, "GOT-10k sequence folder")
    gt = os.path.join(d, "groundtruth.txt")
    boxes = read_boxes(gt)
    rows, visible, meta = len(boxes), None, {}
    absence = os.path.join(d, "absence.label")
    if os.path.isfile(absence):
      visible = check_length(read_flags(absence), rows, absence) == 0
    cover = os.path.join(d, "cover.label")
    if os.path.isfile(cover):
      meta["cover"] = check_length(read_flags(cover), rows, cover)
    return box_sequence(name, d, gt, boxes, visible, meta)

  return Dataset("got10k", task, root, split, names, build)


# ------------------------------------------------------------------------------ LaSOT
def _lasot_dir(root: str, name: str) -> str:
  """`<root>/<class>-<n>` when that is a sequence folder (flat copies), else the official
  `<root>/<class>/<class>-<n>`."""
  flat = os.path.join(root, name)
  if os.path.isdir(os.path.join(flat, "img")):
    return flat
  return os.path.join(root, name.rsplit("-", 1)[0], name)


def _lasot_all(root: str) -> List[str]:
  found = []
  for top in _subdirs(root):
    if os.path.isdir(os.path.join(root, top, "img")):
      found.append(top)
    else:
      found += [
        n
        for n in _subdirs(os.path.join(root, top))
        if os.path.isdir(os.path.join(root, top, n, "img"))
      ]
  return sorted(set(found), key=natural_sort_key)


def _lasot_names(root: str, split: str) -> List[str]:
  lists = {"test": "testing_set.txt", "train": "training_set.txt"}
  if split == "all":
    return _lasot_all(root)
  if split not in lists:
    raise DatasetError(f"LaSOT split {split!r} is unknown; give test, train or all")
  path = os.path.join(root, lists[split])
  if os.path.isfile(path):
    return read_lines(path, "LaSOT split list")
  found = _lasot_all(root)
  if split == "train" and os.path.isfile(os.path.join(root, lists["test"])):
    test = set(read_lines(os.path.join(root, lists["test"])))
    found = [n for n in found if n not in test]
  if not found:
    raise DatasetError(
      f"LaSOT root {root!r} has neither {lists[split]} nor <class>/<class>-<n>/img folders"
    )
  return found


@register("lasot")
def open_lasot(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`<class>/<class>-<n>/img/*.jpg`, `groundtruth.txt`, `full_occlusion.txt`, `out_of_view.txt`.

  The test split is `testing_set.txt` (every sequence found when it is absent); visible =
  not fully occluded and not out of view (either file may be absent) and w, h > 0.
  """
  task = fixed_task("lasot", "box", task)
  split = split or "test"
  names = _lasot_names(root, split)

  def build(name):
    d = existing_dir(_lasot_dir(root, name), "LaSOT sequence folder")
    gt = os.path.join(d, "groundtruth.txt")
    boxes = read_boxes(gt)
    visible = np.ones(len(boxes), bool)
    for flag in ("full_occlusion.txt", "out_of_view.txt"):
      p = os.path.join(d, flag)
      if os.path.isfile(p):
        visible &= check_length(read_flags(p), len(boxes), p) == 0
    meta = {"class": name.rsplit("-", 1)[0]}
    return box_sequence(name, os.path.join(d, "img"), gt, boxes, visible, meta)

  return Dataset("lasot", task, root, split, names, build)


# ------------------------------------------------------------------------------ TrackingNet
def _trackingnet_chunks(root: str, split: str) -> List[str]:
  split = split.upper()
  if split == "TRAIN":
    chunks = [c for c in _subdirs(root) if c.upper().startswith("TRAIN_")]
    if not chunks:
      raise DatasetError(f"TrackingNet root {root!r} has no TRAIN_<k> folders")
    return chunks
  return [split]


@register("trackingnet")
def open_trackingnet(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`<SPLIT>/frames/<seq>/<i>.jpg`, `<SPLIT>/anno/<seq>.txt` (TEST has only frame 0's box).

  split: TEST (default), TRAIN (every TRAIN_<k> chunk) or one chunk such as TRAIN_3.
  """
  task = fixed_task("trackingnet", "box", task)
  split = (split or "TEST").upper()
  where: Dict[str, str] = {}
  for chunk in _trackingnet_chunks(root, split):
    anno = existing_dir(os.path.join(root, chunk, "anno"), "TrackingNet annotation folder")
    for n in os.listdir(anno):
      if n.endswith(".txt"):
        where[n[:-4]] = chunk
  if not where:
    raise DatasetError(f"TrackingNet split {split!r} under {root!r} has no anno/<seq>.txt files")
  names = sorted(where, key=natural_sort_key)

  def build(name):
    chunk = os.path.join(root, where[name])
    return box_sequence(
      name,
      os.path.join(chunk, "frames", name),
      os.path.join(chunk, "anno", f"{name}.txt"),
      meta={"chunk": where[name]},
    )

  return Dataset("trackingnet", task, root, split, names, build)
