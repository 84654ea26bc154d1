"""Common shape of every benchmark reader: lazily read `Sequence`s, a `Dataset`, a registry.

Readers differ only in where files live; ground truth, prompts and errors look the same for all
of them, so evaluation code never branches on the benchmark.

Conventions (all readers):
  * frames are uint8 RGB [H,W,3], decoded with OpenCV one at a time when asked for;
  * masks are integer ids [H,W] (0 = background, every other value one object, as the
    reference's `get_per_obj_mask`); `gt_masks(i)` is None where frame i has no annotation;
  * boxes are float64 x,y,w,h pixels; a frame whose target is absent (flagged absent/occluded,
    w or h <= 0, not finite, or beyond the last annotated row) is a NaN row with gt_visible False;
    the rows exactly as read are in `raw_boxes_xywh` (NaN only past the end of the file);
  * points are float64 [T,N,2] (x, y) pixels and visibility bool [T,N];
  * prompts follow `sam2pp_jax.tracking.propagate.prepare_prompt` (video pixels; box xyxy =
    x, y, x+w, y+h as the reference's `np_box_xywh_to_xyxy`).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional
from typing import Sequence as SequenceT

import numpy as np

from sam2pp_jax.io.png import read_palette_png
from sam2pp_jax.io.video import VideoError, natural_sort_key, read_rgb_image
from sam2pp_jax.model.presets import TASKS

JPEG_EXTS = (".jpg", ".jpeg")
PNG_EXTS = (".png",)


class DatasetError(ValueError):
  """A dataset that cannot be read as its layout says; the message names the path and problem."""


# ------------------------------------------------------------------------------ frame sources
class DiskFrames:
  """Frames stored one image file per frame; each read decodes one file."""

  def __init__(self, paths: SequenceT[str]):
    self.paths = list(paths)

  def __len__(self):
    return len(self.paths)

  def read(self, i: int) -> np.ndarray:
    path = self.paths[i]
    if not os.path.isfile(path):
      raise DatasetError(f"frame file {path!r} is missing")
    try:
      return read_rgb_image(path)  # the decoder of load_video
    except VideoError as e:
      raise DatasetError(f"frame file {path!r} is unreadable: {e}") from None

  def where(self, i: int) -> str:
    return repr(self.paths[i])


class ArrayFrames:
  """Frames already decoded in memory (e.g. a TAP-Vid pickle holding [T,H,W,3] uint8)."""

  def __init__(self, frames, source: str):
    self.frames, self.source = frames, source

  def __len__(self):
    return len(self.frames)

  def read(self, i: int) -> np.ndarray:
    img = np.asarray(self.frames[i])
    if img.ndim != 3 or img.shape[-1] != 3:
      raise DatasetError(f"frame {i} of {self.source} has shape {img.shape}; expected [H,W,3]")
    return np.ascontiguousarray(img.astype(np.uint8, copy=False))

  def where(self, i: int) -> str:
    return f"frame {i} of {self.source}"


class EncodedFrames(ArrayFrames):
  """Frames stored as encoded image bytes (TAP-Vid Kinetics: one JPEG per frame)."""

  def read(self, i: int) -> np.ndarray:
    return decode_rgb(self.frames[i], self.where(i))


def decode_rgb(data: bytes, what: str) -> np.ndarray:
  """Encoded image bytes -> uint8 RGB [H,W,3] (OpenCV, EXIF orientation ignored like load_video)."""
  import cv2

  flags = cv2.IMREAD_COLOR | getattr(cv2, "IMREAD_IGNORE_ORIENTATION", 0)
  buf = np.frombuffer(bytes(data), np.uint8)
  img = cv2.imdecode(buf, flags) if buf.size else None
  if img is None:
    raise DatasetError(f"{what}: cannot decode the image bytes (corrupt or not an image)")
  return np.ascontiguousarray(img[:, :, ::-1])


# ------------------------------------------------------------------------------ Sequence
class Sequence:
  """One video: lazily read frames plus whatever ground truth its benchmark has.

  Works as a lazy frame list (`len(seq)`, `seq[i]`, `seq[a:b]`) for `track_video`-style loaders.
  `mask_prompt` is "first" (frame 0's objects only: DAVIS, TAG) or "appear" (every object at the
  first annotated frame it appears in: YouTube-VOS, MOSE).
  """

  def __init__(
    self,
    name: str,
    task: str,
    frames,
    frame_names: List[str],
    *,
    mask_paths: Optional[Dict[int, str]] = None,
    mask_prompt: str = "first",
    boxes_xywh=None,
    box_visible=None,
    points_xy=None,
    point_visible=None,
    expected_hw=None,
    meta: Optional[dict] = None,
  ):
    if len(frame_names) != len(frames):
      raise DatasetError(
        f"sequence {name!r}: {len(frame_names)} frame names for {len(frames)} frames"
      )
    if len(frames) == 0:
      raise DatasetError(f"sequence {name!r} has no frames")
    self.name, self.task, self._frames = name, task, frames
    self.frame_names = list(frame_names)
    self._mask_paths = dict(mask_paths or {})
    self.mask_prompt = mask_prompt
    self._hw = None
    self._expected_hw = None if expected_hw is None else (int(expected_hw[0]), int(expected_hw[1]))
    self.meta = dict(meta or {})
    self._set_boxes(boxes_xywh, box_visible)
    self._set_points(points_xy, point_visible)

  # ---- frames
  @property
  def num_frames(self) -> int:
    return len(self._frames)

  @property
  def video_hw(self):
    """(H, W) of frame 0 (decodes it once)."""
    if self._hw is None:
      img = self._frames.read(0)
      hw = (int(img.shape[0]), int(img.shape[1]))
      if self._expected_hw is not None and hw != self._expected_hw:
        raise DatasetError(
          f"sequence {self.name!r}: {self._frames.where(0)} is "
          f"{hw[1]}x{hw[0]} (WxH) but its annotation says "
          f"{self._expected_hw[1]}x{self._expected_hw[0]}"
        )
      self._hw = hw
    return self._hw

  def frame(self, i: int) -> np.ndarray:
    """Frame i as uint8 RGB [H,W,3]; a frame whose size differs from frame 0 raises."""
    i = self._index(i)
    hw = self.video_hw
    img = self._frames.read(i)
    if img.shape[:2] != hw:
      raise DatasetError(
        f"sequence {self.name!r}: {self._frames.where(i)} is "
        f"{img.shape[1]}x{img.shape[0]} (WxH) but frame 0 is {hw[1]}x{hw[0]}; "
        "all frames of a video must have one size"
      )
    return img

  def __len__(self):
    return self.num_frames

  def __getitem__(self, i):
    if isinstance(i, slice):
      return np.stack([self.frame(j) for j in range(*i.indices(self.num_frames))])
    return self.frame(i)

  def _index(self, i) -> int:
    t = self.num_frames
    i = int(i)
    if not -t <= i < t:
      raise IndexError(f"frame {i} out of range for sequence {self.name!r} of {t} frames")
    return i % t

  # ---- masks
  @property
  def annotated_mask_frames(self) -> List[int]:
    """Indices of the frames that have a mask annotation file."""
    return sorted(self._mask_paths)

  def gt_masks(self, i: int) -> Optional[np.ndarray]:
    """Object ids int32 [H,W] of frame i, or None when frame i has no annotation."""
    path = self._mask_paths.get(self._index(i))
    if path is None:
      return None
    try:
      ids, _ = read_palette_png(path)
    except VideoError as e:
      raise DatasetError(f"annotation {path!r} is unreadable: {e}") from None
    if ids.shape != self.video_hw:
      raise DatasetError(
        f"annotation {path!r} is {ids.shape[1]}x{ids.shape[0]} (WxH) but the "
        f"frames of {self.name!r} are {self.video_hw[1]}x{self.video_hw[0]}"
      )
    return ids.astype(np.int32)

  # ---- boxes
  def _set_boxes(self, boxes, visible):
    self.raw_boxes_xywh = self.gt_boxes_xywh = self.gt_visible = None
    if boxes is None:
      return
    t = self.num_frames
    raw = np.asarray(boxes, np.float64).reshape(-1, 4)
    if raw.shape[0] not in (1, t):
      raise DatasetError(
        f"sequence {self.name!r}: {raw.shape[0]} box rows for {t} frames "
        f"({self.meta.get('box_file', 'box annotation')}); expected {t} "
        "(or 1 for first-frame-only test splits)"
      )
    n = raw.shape[0]
    flags = np.ones(n, bool) if visible is None else np.asarray(visible, bool).reshape(-1)
    if flags.shape[0] != n:
      raise DatasetError(
        f"sequence {self.name!r}: {flags.shape[0]} visibility flags for {n} box rows"
      )
    full = np.full((t, 4), np.nan)
    full[:n] = raw
    vis = np.zeros(t, bool)
    vis[:n] = flags
    vis &= np.isfinite(full).all(1) & (full[:, 2] > 0) & (full[:, 3] > 0)
    self.raw_boxes_xywh = full
    self.gt_boxes_xywh = np.where(vis[:, None], full, np.nan)
    self.gt_visible = vis
    self.meta.setdefault("box_rows", int(raw.shape[0]))

  # ---- points
  def _set_points(self, points, visible):
    self.gt_points_xy = self.gt_point_visible = None
    if points is None:
      return
    pts = np.asarray(points, np.float64)
    vis = np.asarray(visible, bool)
    t = self.num_frames
    if pts.ndim != 3 or pts.shape[-1] != 2 or vis.shape != pts.shape[:2]:
      raise DatasetError(
        f"sequence {self.name!r}: points {pts.shape} / visibility {vis.shape} "
        "must be [T,N,2] / [T,N]"
      )
    if pts.shape[0] != t:
      raise DatasetError(
        f"sequence {self.name!r}: point tracks have {pts.shape[0]} frames but the video has {t}"
      )
    self.gt_points_xy, self.gt_point_visible = pts, vis

  # ---- prompts
  @property
  def tasks(self) -> List[str]:
    """Tasks this sequence has ground truth for."""
    have = {
      "mask": bool(self._mask_paths),
      "box": self.gt_visible is not None,
      "point": self.gt_points_xy is not None,
    }
    return [t for t in TASKS if have[t]]

  def prompts(self, task: Optional[str] = None) -> List[dict]:
    """Every prompt of the benchmark's protocol, one dict per prompt frame, by frame.

    Each dict: {"frame": int, "obj_ids": [..], "prompt": <prepare_prompt dict>}. One dict for
    first-frame protocols; sparse VOS and points give one per frame where objects first appear.
    """
    task = task or self.task
    if task not in self.tasks:
      raise DatasetError(
        f"sequence {self.name!r} has no {task!r} ground truth (it has: {self.tasks or 'none'})"
      )
    return {"mask": self._mask_prompts, "box": self._box_prompts, "point": self._point_prompts}[
      task
    ]()

  def first_prompt(self, task: Optional[str] = None) -> dict:
    """The earliest prompt group (`prompts(task)[0]`); objects that first appear later are only
    in `prompts(task)`, so check `len(prompts(task)) > 1` for sparse benchmarks."""
    return self.prompts(task)[0]

  def _mask_prompts(self) -> List[dict]:
    frames = self.annotated_mask_frames
    if self.mask_prompt == "first":
      if 0 not in self._mask_paths:
        raise DatasetError(
          f"sequence {self.name!r}: no annotation for the first frame "
          f"{self.frame_names[0]!r}; this benchmark prompts with frame 0's mask"
        )
      frames = [0]
    groups, seen = [], set()
    for f in frames:
      ids = self.gt_masks(f)
      new = [int(v) for v in np.unique(ids) if v != 0 and int(v) not in seen]
      if new:
        seen.update(new)
        groups.append(
          {"frame": f, "obj_ids": new, "prompt": {"mask": np.stack([ids == v for v in new])}}
        )
    if not groups:
      where = self._mask_paths.get(frames[0]) if frames else "its annotation folder"
      raise DatasetError(f"sequence {self.name!r}: no object in the prompt annotation {where!r}")
    return groups

  def _box_prompts(self) -> List[dict]:
    idx = np.flatnonzero(self.gt_visible)
    if idx.size == 0:
      raise DatasetError(
        f"sequence {self.name!r}: the target is absent in every annotated "
        "frame, so there is no box to prompt with"
      )
    f = int(idx[0])
    x, y, w, h = self.gt_boxes_xywh[f]
    box = np.array([[x, y, x + w, y + h]], np.float32)
    return [{"frame": f, "obj_ids": [1], "prompt": {"box_xyxy": box}}]

  def _point_prompts(self) -> List[dict]:
    vis = self.gt_point_visible
    first = np.where(vis.any(0), vis.argmax(0), -1)  # first visible frame of each track
    groups = []
    for f in sorted(set(int(v) for v in first if v >= 0)):
      ids = [int(n) for n in np.flatnonzero(first == f)]
      xy = self.gt_points_xy[f, ids].astype(np.float32)[:, None, :]
      groups.append(
        {
          "frame": f,
          "obj_ids": ids,
          "prompt": {"points_xy": xy, "point_labels": np.ones((len(ids), 1), np.int32)},
        }
      )
    if not groups:
      raise DatasetError(f"sequence {self.name!r}: no point track is visible in any frame")
    return groups

  def __repr__(self):
    return f"Sequence({self.name!r}, task={self.task!r}, {self.num_frames} frames)"


# ------------------------------------------------------------------------------ Dataset
class Dataset:
  """A benchmark split: ordered sequence names and a builder that reads one sequence on demand."""

  def __init__(
    self,
    name: str,
    task: str,
    root: str,
    split: Optional[str],
    names: List[str],
    build: Callable[[str], Sequence],
  ):
    self.name, self.task, self.root, self.split = name, task, root, split
    self._names, self._build = list(names), build

  def sequence_names(self) -> List[str]:
    return list(self._names)

  def sequence(self, name: str) -> Sequence:
    if name not in self._names:
      raise DatasetError(
        f"{self.name}: no sequence {name!r} in split {self.split!r} of "
        f"{self.root!r} (it has {len(self._names)}, e.g. {self._names[:3]})"
      )
    return self._build(name)

  def __len__(self):
    return len(self._names)

  def __iter__(self):
    return (self.sequence(n) for n in self._names)

  def __repr__(self):
    return (
      f"Dataset({self.name!r}, task={self.task!r}, split={self.split!r}, {len(self)} sequences)"
    )


# ------------------------------------------------------------------------------ registry
_OPENERS: Dict[str, Callable] = {}
_FILE_ROOTS = set()  # datasets whose root may also be a single file (TAP-Vid pickles)


def register(name: str, file_root: bool = False):
  """Decorator: `fn(root, split, task, **kw) -> Dataset` becomes `open_dataset(name, ...)`."""

  def deco(fn):
    _OPENERS[name] = fn
    if file_root:
      _FILE_ROOTS.add(name)
    return fn

  return deco


def known_datasets() -> List[str]:
  return sorted(_OPENERS)


def open_dataset(
  name: str, root, split: Optional[str] = None, task: Optional[str] = None, **kwargs
) -> Dataset:
  """Open benchmark `name` stored under `root`; `split` None = the benchmark's evaluation split.

  `task` is needed only for "tag" (mask, box or point); other benchmarks have one task and
  refuse a different one. Extra keyword arguments go to the reader (e.g. DAVIS `resolution`).
  """
  key = str(name).lower()
  if key not in _OPENERS:
    raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(known_datasets())}")
  if task is not None and task not in TASKS:
    raise DatasetError(f"unknown task {task!r}; give one of {', '.join(TASKS)}")
  root = os.path.abspath(os.fspath(root))
  if not (key in _FILE_ROOTS and os.path.isfile(root)):
    existing_dir(root, f"{key} root")
  return _OPENERS[key](root, split, task, **kwargs)


def fixed_task(dataset: str, own: str, task: Optional[str]) -> str:
  """The single task of a benchmark; asking it for another task is an error."""
  if task not in (None, own):
    raise DatasetError(f"{dataset} is a {own!r} benchmark; it has no {task!r} ground truth")
  return own


# ------------------------------------------------------------------------------ file helpers
def existing_dir(path, what: str) -> str:
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    problem = "is not a directory" if os.path.exists(path) else "does not exist"
    raise DatasetError(f"{what} {path!r} {problem}")
  return path


def existing_file(path, what: str) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DatasetError(f"{what} {path!r} is missing")
  return path


def list_images(folder: str, exts=JPEG_EXTS) -> List[str]:
  """Image file names in `folder` with one of `exts` (any case), in natural order."""
  existing_dir(folder, "frame folder")
  names = [
    n
    for n in os.listdir(folder)
    if os.path.splitext(n)[1].lower() in exts and os.path.isfile(os.path.join(folder, n))
  ]
  if not names:
    raise DatasetError(f"frame folder {folder!r} has no {'/'.join(exts)} images")
  return sorted(names, key=natural_sort_key)


def stem(name: str) -> str:
  return os.path.splitext(name)[0]


def disk_frames(folder: str, exts=JPEG_EXTS):
  """(DiskFrames, frame stems) of one frame folder."""
  names = list_images(folder, exts)
  return DiskFrames([os.path.join(folder, n) for n in names]), [stem(n) for n in names]


def read_lines(path: str, what: str = "list file") -> List[str]:
  """Non-empty stripped lines of a text file."""
  existing_file(path, what)
  try:
    with open(path, encoding="utf-8") as f:
      return [ln.strip() for ln in f if ln.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise DatasetError(f"{what} {path!r} is unreadable: {e}") from None


def read_table(path: str, ncols: int, what: str = "annotation") -> np.ndarray:
  """float64 [rows, ncols] from comma-, tab- or space-separated numbers ("nan" allowed)."""
  rows = []
  for k, ln in enumerate(read_lines(path, what)):
    parts = ln.replace(",", " ").split()
    try:
      vals = [float(p) for p in parts]
    except ValueError:
      raise DatasetError(f"{what} {path!r} line {k + 1}: {ln!r} is not {ncols} numbers") from None
    if len(vals) != ncols:
      raise DatasetError(f"{what} {path!r} line {k + 1}: {len(vals)} values, expected {ncols}")
    rows.append(vals)
  if not rows:
    raise DatasetError(f"{what} {path!r} is empty")
  return np.asarray(rows, np.float64)


def read_flags(path: str, what: str = "label file") -> np.ndarray:
  """int64 [T] from one value per line or one comma-separated line (GOT-10k, LaSOT, TAG)."""
  vals = []
  for ln in read_lines(path, what):
    for p in ln.replace(",", " ").split():
      try:
        vals.append(int(float(p)))
      except ValueError:
        raise DatasetError(f"{what} {path!r}: {p!r} is not an integer flag") from None
  return np.asarray(vals, np.int64)


def check_length(flags: np.ndarray, rows: int, path: str):
  """The first `rows` flags; a file with fewer values than box rows is an error."""
  if len(flags) < rows:
    raise DatasetError(f"label file {path!r} has {len(flags)} values for {rows} annotated frames")
  return flags[:rows]


def mask_paths_by_stem(ann_dir: str, stems: List[str]) -> Dict[int, str]:
  """{frame index: PNG path} for the frames whose `<stem>.png` exists in `ann_dir`."""
  existing_dir(ann_dir, "annotation folder")
  have = {stem(n): n for n in os.listdir(ann_dir) if n.lower().endswith(".png")}
  return {i: os.path.join(ann_dir, have[s]) for i, s in enumerate(stems) if s in have}


def load_points_npz(path: str):
  """(trajs [T,N,2] float64 pixels, visibs [T,N] bool, size (W, H) or None) of a SAM2-Plus npz."""
  existing_file(path, "point annotation")
  try:
    with np.load(path, allow_pickle=False) as z:
      trajs = np.asarray(z["trajs_2d"], np.float64)
      vis = np.asarray(z["visibs"]).astype(bool)
      size = tuple(int(v) for v in np.asarray(z["size"]).reshape(-1)[:2]) if "size" in z else None
  except KeyError as e:
    raise DatasetError(
      f"point annotation {path!r} lacks {e}; expected trajs_2d [T,N,2], visibs [T,N] and size (W,H)"
    ) from None
  except (OSError, ValueError) as e:
    raise DatasetError(f"point annotation {path!r} is unreadable: {e}") from None
  return trajs, vis, size
