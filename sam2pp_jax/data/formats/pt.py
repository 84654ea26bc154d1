"""Point-tracking benchmark readers: TAP-Vid DAVIS / Kinetics (pickle or npz layout) and BADJA.

Every track is one object (obj_id = track index) prompted at its first visible frame, TAP-Vid's
"first" query mode and the reference `pt_inference_plus.py` per-object path.

Pixel convention for TAP-Vid pickles (points normalised to [0, 1]): x_px = x * W, y_px = y * H,
as tapnet's `evaluation_datasets.py` (so 1.0 is the far image edge and floor(x_px) is the pixel
that holds the point, matching the reference's `astype(int)` and argmax-pixel predictions).
Some other loaders (e.g. CoTracker options) use x * (W - 1); this reader does not.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import List, Optional, Tuple

import numpy as np

from sam2pp_jax.data.formats.base import (
  JPEG_EXTS,
  PNG_EXTS,
  ArrayFrames,
  Dataset,
  DatasetError,
  EncodedFrames,
  Sequence,
  disk_frames,
  existing_dir,
  fixed_task,
  load_points_npz,
  mask_paths_by_stem,
  register,
  stem,
)
from sam2pp_jax.io.video import natural_sort_key

BADJA_SEQUENCES = ("bear", "camel", "cows", "dog", "dog-agility", "horsejump-high", "horsejump-low")


def tapvid_to_pixels(points_norm, video_hw) -> np.ndarray:
  """TAP-Vid normalised (x, y) -> pixels: x * W, y * H (tapnet's convention)."""
  h, w = video_hw
  return np.asarray(points_norm, np.float64) * np.array([w, h], np.float64)


def npz_sequence(
  name: str, frame_dir: str, npz_path: str, exts=JPEG_EXTS, mask_dir=None, task: str = "point"
) -> Sequence:
  """A Sequence from a frame folder and a SAM2-Plus point npz (trajs_2d pixels, visibs, size)."""
  frames, stems = disk_frames(frame_dir, exts)
  trajs, vis, size = load_points_npz(npz_path)
  masks = _badja_masks(mask_dir, stems) if mask_dir else None
  return Sequence(
    name,
    task,
    frames,
    stems,
    points_xy=trajs,
    point_visible=vis,
    mask_paths=masks,
    expected_hw=None if size is None else (size[1], size[0]),
    meta={"point_file": npz_path},
  )


def _subdirs(folder: str) -> List[str]:
  return sorted(
    (n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))), key=natural_sort_key
  )


# ------------------------------------------------------------------------------ TAP-Vid pickles
def _load_pickle(path: str):
  """The videos of one pickle: a dict name -> video, or a list of videos."""
  st = os.stat(path)
  return _load_pickle_cached(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1)
def _load_pickle_cached(path: str, mtime_ns: int, size: int):
  """One pickle at a time stays in memory (Kinetics shards are large); keyed on mtime and size."""
  try:
    with open(path, "rb") as f:
      data = pickle.load(f)
  except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
    raise DatasetError(f"TAP-Vid pickle {path!r} is unreadable: {e}") from None
  if isinstance(data, dict) and not {"video", "points"} <= set(data):
    return data
  if isinstance(data, dict):
    return [data]
  if isinstance(data, (list, tuple)):
    return list(data)
  raise DatasetError(
    f"TAP-Vid pickle {path!r} holds a {type(data).__name__}; expected a dict "
    "of videos or a list of videos"
  )


def _pickle_index(paths: List[str]) -> List[Tuple[str, str, object]]:
  """(sequence name, pickle path, key) for every video: dict keys, or a running 5-digit index
  over the sorted pickles for list pickles (Kinetics shards)."""
  index, k = [], 0
  for p in paths:
    data = _load_pickle(p)
    if isinstance(data, dict):
      index += [(str(key), p, key) for key in sorted(data, key=lambda s: natural_sort_key(str(s)))]
    else:
      for j in range(len(data)):
        index.append((f"{k:05d}", p, j))
        k += 1
  return index


def _frame_source(video, where: str):
  if isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4:
    return ArrayFrames(video, where)
  if len(video) and isinstance(video[0], (bytes, bytearray, np.bytes_)):
    return EncodedFrames(list(video), where)
  if len(video) and np.asarray(video[0]).ndim == 3:
    return ArrayFrames(video, where)
  raise DatasetError(f"{where}: 'video' must be uint8 [T,H,W,3] or a list of JPEG bytes")


def _tapvid_sequence(name: str, entry, where: str) -> Sequence:
  if not isinstance(entry, dict) or not {"video", "points", "occluded"} <= set(entry):
    raise DatasetError(f"{where}: expected a dict with 'video', 'points' and 'occluded'")
  frames = _frame_source(entry["video"], where)
  pts = np.asarray(entry["points"], np.float64)
  occ = np.asarray(entry["occluded"]).astype(bool)
  if pts.ndim != 3 or pts.shape[-1] != 2 or occ.shape != pts.shape[:2]:
    raise DatasetError(
      f"{where}: points {pts.shape} / occluded {occ.shape} must be [N,T,2] / [N,T]"
    )
  first = frames.read(0)
  xy = tapvid_to_pixels(pts, first.shape[:2]).transpose(1, 0, 2)
  return Sequence(
    name,
    "point",
    frames,
    [f"{i:05d}" for i in range(len(frames))],
    points_xy=xy,
    point_visible=~occ.T,
    expected_hw=first.shape[:2],
    meta={"source": where},
  )


def _tapvid_pickles(root: str, dataset: str) -> List[str]:
  if os.path.isfile(root):
    return [root]
  pkls = sorted(n for n in os.listdir(root) if n.endswith(".pkl"))
  if dataset == "tapvid_davis" and "tapvid_davis.pkl" in pkls:
    pkls = ["tapvid_davis.pkl"]
  return [os.path.join(root, n) for n in pkls]


def _open_tapvid(dataset: str, root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """A .pkl file, a folder of .pkl files, or the npz layout (`JPEGImages/<seq>/`,
  `Points/<seq>.npz`)."""
  task = fixed_task(dataset, "point", task)
  pkls = _tapvid_pickles(root, dataset)
  if pkls:
    index = {name: (p, key) for name, p, key in _pickle_index(pkls)}

    def build(name):
      p, key = index[name]
      return _tapvid_sequence(name, _load_pickle(p)[key], f"video {name!r} of {p!r}")

    return Dataset(dataset, task, root, split, list(index), build)
  if not os.path.isdir(os.path.join(root, "Points")):
    raise DatasetError(
      f"{dataset} root {root!r} has no .pkl file and no Points/ folder "
      "(npz layout: JPEGImages/<seq>/*.jpg + Points/<seq>.npz)"
    )
  img_root = existing_dir(os.path.join(root, "JPEGImages"), f"{dataset} frame folder")

  def build_npz(name):
    return npz_sequence(
      name, os.path.join(img_root, name), os.path.join(root, "Points", f"{name}.npz")
    )

  return Dataset(dataset, task, root, split, _subdirs(img_root), build_npz)


@register("tapvid_davis", file_root=True)
def open_tapvid_davis(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`tapvid_davis.pkl` (dict: name -> video [T,H,W,3] uint8, points [N,T,2] in [0,1],
  occluded [N,T]) or the npz layout."""
  return _open_tapvid("tapvid_davis", root, split, task)


@register("tapvid_kinetics", file_root=True)
def open_tapvid_kinetics(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`*_of_0010.pkl` shards (lists of videos whose frames are JPEG bytes), named 00000, 00001, ...
  in shard order, or the npz layout."""
  return _open_tapvid("tapvid_kinetics", root, split, task)


# ------------------------------------------------------------------------------ BADJA
def _badja_masks(mask_dir: str, stems: List[str]):
  """Masks matched by frame stem; if the names differ but the counts agree, by natural order."""
  existing_dir(mask_dir, "BADJA annotation folder")
  by_stem = mask_paths_by_stem(mask_dir, stems)
  if by_stem:
    return by_stem
  pngs = sorted(
    (n for n in os.listdir(mask_dir) if n.lower().endswith(".png")), key=natural_sort_key
  )
  if len(pngs) != len(stems):
    raise DatasetError(
      f"annotation folder {mask_dir!r} has {len(pngs)} PNGs whose names match "
      f"none of the {len(stems)} frames"
    )
  return {i: os.path.join(mask_dir, n) for i, n in enumerate(pngs)}


@register("badja")
def open_badja(root: str, split: Optional[str], task: Optional[str]) -> Dataset:
  """`PNGImages/<seq>/*.png`, `Points/<seq>.npz`, `Annotations/<seq>/*.png` (masks, for PCK).

  Sequences: the reference's seven (bear ... horsejump-low) that are present; when none of them
  is, every `Points/<seq>.npz`.
  """
  task = fixed_task("badja", "point", task)
  pts_dir = existing_dir(os.path.join(root, "Points"), "BADJA point folder")
  have = sorted((stem(n) for n in os.listdir(pts_dir) if n.endswith(".npz")), key=natural_sort_key)
  names = [n for n in BADJA_SEQUENCES if n in have] or have
  if not names:
    raise DatasetError(f"BADJA point folder {pts_dir!r} has no <seq>.npz files")

  def build(name):
    mask_dir = os.path.join(root, "Annotations", name)
    return npz_sequence(
      name,
      os.path.join(root, "PNGImages", name),
      os.path.join(pts_dir, f"{name}.npz"),
      PNG_EXTS,
      mask_dir if os.path.isdir(mask_dir) else None,
    )

  return Dataset("badja", task, root, split, names, build)
