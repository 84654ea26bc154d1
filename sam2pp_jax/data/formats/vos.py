"""Mask (VOS) benchmark readers: DAVIS-2017, YouTube-VOS and MOSE.

DAVIS prompts with frame 0's objects only (as the reference `vos_inference.py`); YouTube-VOS
and MOSE annotate sparsely, so each object is prompted where it first appears
(the reference's `--track_object_appearing_later_in_video` path).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from sam2pp_jax.data.formats.base import (
  Dataset,
  DatasetError,
  Sequence,
  disk_frames,
  existing_dir,
  fixed_task,
  mask_paths_by_stem,
  read_lines,
  register,
)
from sam2pp_jax.io.video import natural_sort_key


def _vos_sequence(name, img_dir, ann_dir, mask_prompt, meta=None) -> Sequence:
  frames, stems = disk_frames(img_dir)
  masks = mask_paths_by_stem(ann_dir, stems)
  if not masks:
    raise DatasetError(
      f"annotation folder {ann_dir!r} has no <frame>.png matching the frames "
      f"of {img_dir!r} (e.g. {stems[0]}.png)"
    )
  return Sequence(name, "mask", frames, stems, mask_paths=masks, mask_prompt=mask_prompt, meta=meta)


# ------------------------------------------------------------------------------ DAVIS-2017
@register("davis2017")
def open_davis2017(
  root: str, split: Optional[str], task: Optional[str], resolution: str = "480p"
) -> Dataset:
  """`JPEGImages/<res>/<seq>/*.jpg`, `Annotations/<res>/<seq>/*.png`,
  `ImageSets/2017/<split>.txt`."""
  task = fixed_task("davis2017", "mask", task)
  split = split or "val"
  img_root = existing_dir(os.path.join(root, "JPEGImages", resolution), "DAVIS frame folder")
  ann_root = existing_dir(os.path.join(root, "Annotations", resolution), "DAVIS annotation folder")
  names = read_lines(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), "DAVIS split list")

  def build(name):
    seq = _vos_sequence(name, os.path.join(img_root, name), os.path.join(ann_root, name), "first")
    if 0 not in seq.annotated_mask_frames:
      first = os.path.join(ann_root, name, seq.frame_names[0] + ".png")
      raise DatasetError(f"DAVIS sequence {name!r}: first-frame annotation {first!r} is missing")
    return seq

  return Dataset("davis2017", task, root, split, names, build)


# ------------------------------------------------------------------------------ YouTube-VOS / MOSE
def _split_dir(root: str, split: str) -> str:
  """`<root>/<split>`, or `root` itself when it already holds JPEGImages/ (a split folder)."""
  cand = os.path.join(root, split)
  if os.path.isdir(cand):
    return cand
  if os.path.isdir(os.path.join(root, "JPEGImages")):
    return root
  raise DatasetError(f"split folder {cand!r} does not exist (and {root!r} has no JPEGImages/)")


def _read_meta(path: str) -> Optional[dict]:
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
    return meta["videos"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DatasetError(f"meta file {path!r} is unreadable or has no 'videos' entry: {e}") from None


def _check_meta_objects(seq: Sequence, objects: dict, ann_dir: str):
  """Each object meta.json lists must start on a frame that has an annotation PNG."""
  have = {seq.frame_names[i] for i in seq.annotated_mask_frames}
  for oid, info in objects.items():
    frames = info.get("frames") or []
    if frames and frames[0] not in have:
      raise DatasetError(
        f"meta.json: object {oid} of {seq.name!r} starts at frame {frames[0]!r} "
        f"but {os.path.join(ann_dir, frames[0] + '.png')!r} is missing"
      )


def _open_sparse(dataset: str, root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  task = fixed_task(dataset, "mask", task)
  split = split or "valid"
  base = _split_dir(root, split)
  img_root = existing_dir(os.path.join(base, "JPEGImages"), f"{dataset} frame folder")
  ann_root = existing_dir(os.path.join(base, "Annotations"), f"{dataset} annotation folder")
  meta = _read_meta(os.path.join(base, "meta.json"))
  names = sorted(
    (n for n in os.listdir(img_root) if os.path.isdir(os.path.join(img_root, n))),
    key=natural_sort_key,
  )
  if not names:
    raise DatasetError(f"{dataset} frame folder {img_root!r} has no sequence folders")

  def build(name):
    ann_dir = os.path.join(ann_root, name)
    existing_dir(ann_dir, f"{dataset} annotation folder")
    objects = (meta or {}).get(name, {}).get("objects")
    seq = _vos_sequence(
      name,
      os.path.join(img_root, name),
      ann_dir,
      "appear",
      {"objects": objects} if objects else None,
    )
    if objects:
      _check_meta_objects(seq, objects, ann_dir)
    return seq

  return Dataset(dataset, task, root, split, names, build)


@register("youtubevos")
def open_youtubevos(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`<split>/JPEGImages/<seq>/*.jpg`, `<split>/Annotations/<seq>/*.png`, optional
  `<split>/meta.json`."""
  return _open_sparse("youtubevos", root, split, task)


@register("mose")
def open_mose(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """Same layout as YouTube-VOS (MOSE valid annotates frame 0 only; later objects are allowed)."""
  return _open_sparse("mose", root, split, task)
