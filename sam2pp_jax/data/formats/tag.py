"""Tracking-Any-Granularity (TAG) reader: one video set annotated with masks, boxes and points.

The same sequences serve all three tasks, so the dataset is opened for one `task`; the layout and
protocols follow the reference's TAG loaders and `tools/*_inference_plus.sh`.

  <root>/ImageSets/<split>.txt              sequence names (split: valid or test)
  <root>/<split>/JPEGImages/<seq>/*.jpg
  <root>/<split>/Annotations/<seq>/*.png    palette masks (mask task; prompt = frame 0's objects)
  <root>/<split>/Boxes/<seq>.txt            x,y,w,h per frame (box task)
  <root>/<split>/Visibles/<seq>.txt         1/0 per frame; visible = flag and w, h > 0
  <root>/<split>/Points/<seq>.npz           trajs_2d [T,N,2] px, visibs [T,N], size (W,H)

`root` may also be the split folder itself (the reference passes `.../Tracking-Any-Granularity/
valid`); its list is then `../ImageSets/<split>.txt`. Without a list file every JPEGImages/<seq>
folder is a sequence.
"""

from __future__ import annotations

import os
from typing import Optional

from sam2pp_jax.data.formats.base import (
  TASKS,
  Dataset,
  DatasetError,
  Sequence,
  disk_frames,
  existing_dir,
  existing_file,
  load_points_npz,
  mask_paths_by_stem,
  read_flags,
  read_lines,
  register,
)
from sam2pp_jax.data.formats.sot import read_boxes
from sam2pp_jax.io.video import natural_sort_key


def _locate(root: str, split: Optional[str]):
  """(split folder, split name, list file path) for a TAG root or a TAG split folder."""
  if os.path.isdir(os.path.join(root, "JPEGImages")):
    split = split or os.path.basename(root.rstrip(os.sep))
    return root, split, os.path.join(os.path.dirname(root), "ImageSets", f"{split}.txt")
  split = split or "valid"
  base = existing_dir(os.path.join(root, split), "TAG split folder")
  return base, split, os.path.join(root, "ImageSets", f"{split}.txt")


def _tag_sequence(base: str, name: str, task: str) -> Sequence:
  frames, stems = disk_frames(os.path.join(base, "JPEGImages", name))
  ann_dir = os.path.join(base, "Annotations", name)
  masks = None
  if task == "mask" or os.path.isdir(ann_dir):
    masks = mask_paths_by_stem(ann_dir, stems)
    if task == "mask" and not masks:
      raise DatasetError(f"TAG annotation folder {ann_dir!r} has no <frame>.png for {name!r}")
  kw, meta = {}, {}
  if task == "box":
    gt = os.path.join(base, "Boxes", f"{name}.txt")
    boxes = read_boxes(gt)
    vis_path = os.path.join(base, "Visibles", f"{name}.txt")
    vis = read_flags(existing_file(vis_path, "TAG visibility file")) != 0
    if len(vis) != len(boxes):
      raise DatasetError(
        f"TAG visibility file {vis_path!r} has {len(vis)} values for {len(boxes)} boxes in {gt!r}"
      )
    kw, meta = {"boxes_xywh": boxes, "box_visible": vis}, {"box_file": gt}
  elif task == "point":
    path = os.path.join(base, "Points", f"{name}.npz")
    trajs, vis, size = load_points_npz(path)
    kw = {
      "points_xy": trajs,
      "point_visible": vis,
      "expected_hw": None if size is None else (size[1], size[0]),
    }
    meta = {"point_file": path}
  return Sequence(name, task, frames, stems, mask_paths=masks, mask_prompt="first", meta=meta, **kw)


@register("tag")
def open_tag(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """Open TAG for one task (mask, box or point)."""
  if task not in TASKS:
    raise DatasetError(
      f"tag serves several tasks: give task= one of {', '.join(TASKS)} (got {task!r})"
    )
  base, split, list_path = _locate(root, split)
  if os.path.isfile(list_path):
    names = read_lines(list_path, "TAG split list")
  else:
    img_root = existing_dir(os.path.join(base, "JPEGImages"), "TAG frame folder")
    names = sorted(
      (n for n in os.listdir(img_root) if os.path.isdir(os.path.join(img_root, n))),
      key=natural_sort_key,
    )
  return Dataset("tag", task, root, split, names, lambda name: _tag_sequence(base, name, task))
