"""Training clips and batches for SAM 2++'s three-task (mask / box / point) training, on grain.

Why: the trainer needs fixed-shape, seed-reproducible clips that follow the reference recipe
(sam2.1_hiera_b+_predmasks_decoupled_MAME_mixtraining_threetasks.yaml) and a batch stream whose
global content does not depend on how many hosts share it, with an iterator that checkpoints.

Recipe (reference samplers, datasets and transforms):
  * frames: `num_frames` consecutive frames from a uniformly drawn start (stride 1, no time
    reversal: the released samplers use reverse_time_prob 0);
  * objects: up to `max_objects` (box: `max_objects_box` = 1) drawn without replacement among
    those visible in the clip's first frame; mask: more than 5 pixels (VOS sampler), box: the
    visibility flag, point: each keypoint track is one object, visible in the first frame;
  * augmentation, in this order: consistent horizontal flip (p .5); mask task only: consistent
    RandomAffine (rotation +-25 deg, x-shear +-20 deg, no translation / scale, image fill
    (123, 116, 103)), skipped when it empties a first-frame mask; square resize to S; consistent
    ColorJitter(.1, .03, .03); consistent RandomGrayscale p .05; per-frame ColorJitter(.1, .05,
    .05); ImageNet normalisation;
  * targets after augmentation: boxes are the tight boxes of the augmented masks (box task: a box
    needs >= 4 pixels, else it is absent); a clip whose first-frame objects do not all survive
    is drawn again (the reference re-samples).

Conventions: coordinates are continuous with pixel i covering [i, i + 1) (as
`tracking.prompts.to_model_coords`, x * S / W), so a flip maps x -> W - x (the reference's
`hflip_with_png` formula); boxes are xyxy pixel extents [x0, y0, x_max + 1, y_max + 1] (the
inverse of the reference's box -> mask rasterisation, and `x + w` of benchmark xywh boxes).

Clip / batch arrays (O = max_objects, 1 for box; padded objects have obj_valid False and zeros):
frames float32 [T,S,S,3] normalised; masks bool [T,O,S,S] (point task: the pixel holding the
point, the reference's one-pixel segment; the trainer draws the Gaussian targets); boxes float32
[T,O,4] xyxy model pixels (0 where absent); points float32 [T,O,2] model pixels (point task, 0
where absent); visible bool [T,O]; obj_valid bool [O]. A batch stacks them with a leading B.

Pipeline (grain): `MapDataset.range` over this process's clips of steps start_step, ... ->
`.map(clip)` (one element = one clip, a pure function of (seed, step, global clip index, task);
all clips of a step share the step's task) -> `.batch(local batch)` (one element = one step) ->
`.to_iter_dataset(ReadOptions(num_threads, prefetch_buffer_size))` (batches built ahead in
threads) -> optionally `.mp_prefetch(num_workers)` (in worker processes, each a slice of the
steps). Batching before the slicing keeps every batch one step whatever the number of workers,
and clip j of a step draws from SeedSequence((seed, step, j)) whatever the number of processes,
so `TrainIterator`'s state is just the next step: a checkpoint valid across threads / workers.

Differences from the reference (on purpose): numpy/OpenCV instead of PIL/torchvision, so
resampling and colour blends match in kind but not bit for bit; points are moved with the exact
continuous geometry instead of through a one-pixel heatmap (no integer quantisation); the mask
task resizes masks as the VOS transform does (bilinear, >= .5), box/point with 'nearest';
rejection loops (first-frame visibility) are replaced by drawing among the valid choices.
The synthetic generator puts pixel centres at integers, so on flipped synthetic clips the
reference's x -> W - x moves points by one video pixel relative to the image content.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import List, Mapping, Optional, Tuple

import cv2
import grain
import ml_collections
import numpy as np
from absl import flags as absl_flags

from sam2pp_jax.data import synthetic
from sam2pp_jax.data.formats import open_dataset
from sam2pp_jax.io.video import normalize_u8
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.tracking.prompts import mask_to_box

CLIP_KEYS = ("frames", "masks", "boxes", "points", "visible", "obj_valid")
SOURCE_KINDS = ("synthetic", "dataset")
_SYNTHETIC_KEYS = {
  "kind",
  "seed_offset",
  "weight",
  "difficulty",
  "video_hw",
  "video_frames",
  "num_objects",
  "num_points",
  "tasks",
  "steps",
}
_DATASET_KEYS = {"kind", "name", "root", "split", "task", "weight", "tasks", "steps"}
_TASK_STREAM = 1  # SeedSequence spawn key of the per-step task draw
_NUM_STEPS = sys.maxsize // 2  # the step range of the grain dataset (effectively endless)


class ClipError(Exception):
  """This video (window) cannot give a valid clip; the caller draws another video."""


# ------------------------------------------------------------------------------ config
def default_data_config() -> ml_collections.ConfigDict:
  """Defaults of the tiny demo; yaml keys of the released three-task config in comments."""
  c = ml_collections.ConfigDict()
  c.image_size = 64  # scratch.resolution (1024 there; the tiny model runs at 64)
  c.num_frames = 8  # scratch.num_frames
  c.max_objects = 3  # scratch.max_num_objects (mask and point RandomUniformSampler)
  c.max_objects_box = 1  # box sampler max_num_objects: 1 (single-object tracking)
  c.global_batch = 8  # clips per step over all processes (yaml: train_batch_size 1/GPU)
  # mask : box : point = 1 : 4 : 5 (the yaml's data.train.dataset_prob is [0.30, 0.30, 0.40]).
  c.task_probs = (0.1, 0.4, 0.5)
  # optional curriculum over tasks: ((first, stop), (mask, box, point)) entries override
  # task_probs for steps first <= step < stop (e.g. a mask-only first stage)
  c.task_stages = ()
  c.sources = [
    dict(
      kind="synthetic",
      seed_offset=0,
      weight=1.0,
      difficulty="normal",
      video_hw=(128, 128),
      video_frames=None,
      num_objects=(1, 3),
      num_points=8,
    )
  ]
  c.augment = ml_collections.ConfigDict(
    dict(
      hflip_p=0.5,  # RandomHorizontalFlip (p default 0.5), consistent
      affine_tasks=("mask",),  # vos.train_transforms only (commented out for box/point)
      affine_degrees=25.0,  # RandomAffine degrees: 25
      affine_shear=20.0,  # RandomAffine shear: 20 (x shear only)
      affine_fill=(123.0, 116.0, 103.0),  # RandomAffine image_mean default
      jitter_consistent=(0.1, 0.03, 0.03),  # ColorJitter consistent: brightness/contrast/saturation
      grayscale_p=0.05,  # RandomGrayscale p: 0.05, consistent
      jitter_per_frame=(0.1, 0.05, 0.05),  # ColorJitter consistent_transform False
    )
  )
  c.mask_visible_above = 5  # vos_sampler: a first-frame object needs segment.sum() > 5
  c.box_min_pixels = 4  # BoxDataset: a box exists when its mask has >= 4 pixels
  c.clip_attempts = 4  # windows / augmentations tried per video before another video
  c.video_attempts = 32  # videos tried per clip before giving up
  # input pipeline: batches are built ahead of the trainer so the device does not wait on them
  c.num_threads = 2  # grain ReadOptions threads building batches (0: in the training thread);
  # per process, and per worker process when num_workers > 0
  c.prefetch_buffer_size = 4  # batches built ahead (>= num_threads keeps them busy; 0 with 0)
  c.num_workers = 0  # grain mp_prefetch worker processes (0: none; for a GIL-bound pipeline)
  c.worker_buffer_size = 2  # batches each worker process keeps ready
  return c


def _num(name: str, value, minimum, integer=True):
  """value as int/float >= minimum, or a ValueError naming the config field."""
  kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value) if integer else float(value)


def check_task_probs(probs) -> np.ndarray:
  """(mask, box, point) probabilities: three non-negative numbers summing to 1."""
  try:
    p = np.asarray(probs, np.float64).reshape(-1)
  except (TypeError, ValueError):
    raise ValueError(
      f"task_probs must be three numbers (mask, box, point), got {probs!r}"
    ) from None
  if p.shape != (3,) or not np.all(np.isfinite(p)) or np.any(p < 0):
    raise ValueError(
      f"task_probs must be three non-negative numbers (mask, box, point), got {probs!r}"
    )
  if abs(p.sum() - 1.0) > 1e-6:
    raise ValueError(f"task_probs must sum to 1, got {tuple(p)} (sum {p.sum():g})")
  return p


def _check_source(i: int, src) -> dict:
  """One source entry, checked; the message names sources[i].<field>."""
  if not isinstance(src, Mapping):
    raise ValueError(f"sources[{i}] must be a dict, got {type(src).__name__}")
  src = dict(src)
  kind = src.get("kind")
  if kind not in SOURCE_KINDS:
    raise ValueError(f"sources[{i}].kind must be one of {SOURCE_KINDS}, got {kind!r}")
  allowed = _SYNTHETIC_KEYS if kind == "synthetic" else _DATASET_KEYS
  extra = sorted(set(src) - allowed)
  if extra:
    raise ValueError(
      f"sources[{i}] ({kind}) has unknown fields {extra}; allowed: {sorted(allowed)}"
    )
  w = _num(f"sources[{i}].weight", src.get("weight", 1.0), 0, integer=False)
  if not w > 0:
    raise ValueError(f"sources[{i}].weight must be > 0, got {w}")
  steps = src.get("steps")
  if steps is not None:
    if isinstance(steps, str) or len(tuple(steps)) != 2:
      raise ValueError(f"sources[{i}].steps must be (first, stop) training steps, got {steps!r}")
    first = _num(f"sources[{i}].steps[0]", steps[0], 0)
    stop = _num(f"sources[{i}].steps[1]", steps[1], first + 1)
    src["steps"] = (first, stop)
  tasks = src.get("tasks")
  if tasks is not None and (isinstance(tasks, str) or not set(tasks) <= set(TASKS) or not tasks):
    raise ValueError(f"sources[{i}].tasks must be a non-empty subset of {TASKS}, got {tasks!r}")
  if kind == "synthetic":
    hw = tuple(src.get("video_hw", (128, 128)))
    if len(hw) != 2:
      raise ValueError(f"sources[{i}].video_hw must be (height, width), got {hw!r}")
    for v in hw:
      _num(f"sources[{i}].video_hw", v, 32)
    _num(f"sources[{i}].seed_offset", src.get("seed_offset", 0), 0)
    if src.get("video_frames") is not None:
      _num(f"sources[{i}].video_frames", src["video_frames"], 1)
    try:
      synthetic._checked(
        num_objects=_object_range(src),
        difficulty=src.get("difficulty", "normal"),
        num_points=src.get("num_points", 8),
      )
    except ValueError as e:
      raise ValueError(f"sources[{i}]: {e}") from None
  else:
    for key in ("name", "root"):
      if not src.get(key):
        raise ValueError(f"sources[{i}].{key} is required for a dataset source")
  return src


def check_data_config(cfg) -> None:
  """Every field the pipeline reads; ValueError naming the first bad one."""
  _num("image_size", cfg.image_size, 8)
  _num("num_frames", cfg.num_frames, 1)
  _num("max_objects", cfg.max_objects, 1)
  _num("max_objects_box", cfg.max_objects_box, 1)
  _num("global_batch", cfg.global_batch, 1)
  _num("mask_visible_above", cfg.mask_visible_above, 0)
  _num("box_min_pixels", cfg.box_min_pixels, 1)
  _num("clip_attempts", cfg.clip_attempts, 1)
  _num("video_attempts", cfg.video_attempts, 1)
  _check_pipeline(cfg)
  check_task_probs(cfg.task_probs)
  _check_task_stages(cfg.get("task_stages", ()))
  if not cfg.sources:
    raise ValueError("sources must list at least one source")
  for i, src in enumerate(cfg.sources):
    _check_source(i, src)
  a = cfg.augment
  for name in ("hflip_p", "grayscale_p"):
    p = _num(f"augment.{name}", a[name], 0, integer=False)
    if p > 1:
      raise ValueError(f"augment.{name} is a probability in [0, 1], got {p}")
  for name in ("jitter_consistent", "jitter_per_frame"):
    if len(a[name]) != 3 or any(float(v) < 0 for v in a[name]):
      raise ValueError(
        f"augment.{name} must be three non-negative numbers "
        f"(brightness, contrast, saturation), got {a[name]!r}"
      )
  if not set(a.affine_tasks) <= set(TASKS):
    raise ValueError(f"augment.affine_tasks must be a subset of {TASKS}, got {a.affine_tasks!r}")


def _check_pipeline(cfg) -> None:
  """Threads without a buffer (or a buffer without threads) would silently build nothing ahead
  in grain; refuse them."""
  threads = _num("num_threads", cfg.get("num_threads", 0), 0)
  buffer = _num("prefetch_buffer_size", cfg.get("prefetch_buffer_size", 0), 0)
  if bool(threads) != bool(buffer):
    raise ValueError(
      f"num_threads={threads} and prefetch_buffer_size={buffer}: both must be > 0 (batches "
      "built ahead in threads) or both 0 (built in the training thread)"
    )
  _num("num_workers", cfg.get("num_workers", 0), 0)
  _num("worker_buffer_size", cfg.get("worker_buffer_size", 1), 1)


def _check_task_stages(stages) -> tuple:
  """task_stages entries ((first, stop), probs), checked; the message names the entry."""
  out = []
  for i, entry in enumerate(stages or ()):
    try:
      (first, stop), probs = entry
    except (TypeError, ValueError):
      raise ValueError(
        f"task_stages[{i}] must be ((first, stop), (mask, box, point)), got {entry!r}"
      ) from None
    first = _num(f"task_stages[{i}] first step", first, 0)
    stop = _num(f"task_stages[{i}] stop step", stop, first + 1)
    try:
      p = check_task_probs(probs)
    except ValueError as e:
      raise ValueError(f"task_stages[{i}]: {e}") from None
    out.append(((first, stop), tuple(float(x) for x in p)))
  return tuple(out)


def task_probs_at(cfg, step: int):
  """The (mask, box, point) probabilities of `step`: the first task_stages window holding it,
  else task_probs."""
  for (first, stop), probs in _check_task_stages(cfg.get("task_stages", ())):
    if first <= int(step) < stop:
      return probs
  return tuple(cfg.task_probs)


def _check_task(task: str) -> str:
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  return task


def num_objects_for(task: str, cfg) -> int:
  """O of a task's clips: the box task tracks a single object, as the reference."""
  return int(cfg.max_objects_box if _check_task(task) == "box" else cfg.max_objects)


# ------------------------------------------------------------------------------ task sampling
def task_for_step(seed: int, step: int, probs=(0.1, 0.4, 0.5)) -> str:
  """The task of every clip of `step`: a pure function of (seed, step), so all hosts agree."""
  p = check_task_probs(probs)
  ss = np.random.SeedSequence(
    (_num("seed", seed, 0), _num("step", step, 0)), spawn_key=(_TASK_STREAM,)
  )
  u = np.random.default_rng(ss).random()
  k = int(np.searchsorted(np.cumsum(p), u, side="right"))
  return TASKS[min(k, int(np.flatnonzero(p)[-1]))]  # the min guards a sum just below 1


# ------------------------------------------------------------------------------ dataset sequences
def sequence_to_video(seq, frames_idx) -> dict:
  """Frames `frames_idx` of a benchmark `Sequence` in the synthetic video layout.

  masks: object ids remapped to 1..K over these frames (int32 [t,H,W]; an unannotated frame is
  all background), with `obj_ids` the original ids and `visible` any-pixel; boxes_xywh [t,1,4] +
  visible [t,1] for box sequences; points_xy [t,1,N,2] + point_visible [t,1,N] for point tracks.
  """
  idx = [int(i) for i in frames_idx]
  if not idx:
    raise ValueError("frames_idx is empty")
  video = {"frames": np.stack([seq.frame(i) for i in idx])}
  if seq.annotated_mask_frames:
    h, w = video["frames"].shape[1:3]
    raw = [seq.gt_masks(i) for i in idx]
    raw = np.stack([np.zeros((h, w), np.int32) if m is None else m for m in raw])
    ids = np.unique(raw)
    ids = ids[ids != 0]
    masks = np.searchsorted(ids, raw).astype(np.int32) + 1
    masks[raw == 0] = 0
    video["masks"], video["obj_ids"] = masks, ids.astype(np.int32)
    obj = np.arange(1, len(ids) + 1)[None, :, None, None]
    video["visible"] = (masks[:, None] == obj).any((2, 3))
  elif seq.gt_boxes_xywh is not None:
    video["boxes_xywh"] = seq.gt_boxes_xywh[idx][:, None].astype(np.float32)
    video["visible"] = seq.gt_visible[idx][:, None].copy()
  if seq.gt_points_xy is not None:
    video["points_xy"] = np.nan_to_num(seq.gt_points_xy[idx][:, None]).astype(np.float32)
    video["point_visible"] = seq.gt_point_visible[idx][:, None].copy()
  return video


@functools.lru_cache(maxsize=32)
def _open_dataset(name: str, root: str, split: Optional[str], task: Optional[str]):
  """Opened once per process: listing a benchmark's sequences can read many files."""
  return open_dataset(name, root, split, task)


def _source_dataset(src: dict):
  return _open_dataset(src["name"], str(src["root"]), src.get("split"), src.get("task"))


def source_tasks(src: Mapping) -> Tuple[str, ...]:
  """Tasks a source can serve: synthetic all three; a dataset its benchmark task (or `tasks`)."""
  if src.get("tasks"):
    return tuple(src["tasks"])
  if src["kind"] == "synthetic":
    return TASKS
  return (_source_dataset(dict(src)).task,)


def _dataset_window(src: dict, task: str, rng: np.random.Generator, cfg) -> dict:
  """A random sequence and `num_frames`-long window (annotated mask frames where masks exist)."""
  ds = _source_dataset(src)
  names = ds.sequence_names()
  seq = ds.sequence(names[int(rng.integers(len(names)))])
  frames = seq.annotated_mask_frames or list(range(seq.num_frames))
  t = int(cfg.num_frames)
  if len(frames) < t:
    raise ClipError(f"{seq.name!r} has {len(frames)} usable frames < num_frames {t}")
  start = int(rng.integers(len(frames) - t + 1))
  return sequence_to_video(seq, frames[start : start + t])


def _object_range(src: Mapping):
  """A synthetic source's num_objects: an int, or a (min, max) list/tuple made a tuple."""
  n = src.get("num_objects", (1, 3))
  return tuple(n) if isinstance(n, (list, tuple)) else n


def _synthetic_video(src: dict, seed: int, index: int, cfg) -> dict:
  """Video `index` of the source's endless synthetic stream."""
  h, w = (int(v) for v in src.get("video_hw", (128, 128)))
  return synthetic.generate_video(
    synthetic.video_seed(seed + int(src.get("seed_offset", 0)), index),
    num_frames=int(src.get("video_frames") or cfg.num_frames),
    height=h,
    width=w,
    num_objects=_object_range(src),
    difficulty=src.get("difficulty", "normal"),
    num_points=int(src.get("num_points", 8)),
  )


# ------------------------------------------------------------------------------ window / objects
def _eligible(video: dict, task: str, cfg) -> np.ndarray:
  """bool [T_video, K]: objects (point: tracks) the sampler may pick when frame t starts a clip."""
  if task == "point":
    if "points_xy" not in video:
      raise ValueError("the point task needs points_xy / point_visible in the video")
    pv = np.asarray(video["point_visible"], bool)
    return pv.reshape(pv.shape[0], -1)
  if task == "mask":
    if "masks" not in video:
      raise ValueError("the mask task needs masks in the video")
    ids = np.asarray(video["masks"])
    k = int(ids.max()) if ids.size else 0
    k = max(k, np.asarray(video.get("visible", np.zeros((1, 0)))).shape[1])
    counts = np.stack([np.bincount(m.ravel(), minlength=k + 1)[1 : k + 1] for m in ids])
    return counts > int(cfg.mask_visible_above)
  if "visible" not in video or ("masks" not in video and "boxes_xywh" not in video):
    raise ValueError("the box task needs masks or boxes_xywh, and visible, in the video")
  return np.asarray(video["visible"], bool)


def _sample_window(eligible: np.ndarray, t: int, n_max: int, rng) -> Tuple[int, np.ndarray]:
  """(start, object columns): a uniform start among those with a first-frame object, then up to
  n_max of its eligible objects without replacement (rejection-free form of the reference)."""
  starts = np.arange(eligible.shape[0] - t + 1)
  ok = starts[eligible[starts].any(1)] if eligible.shape[1] else starts[:0]
  if ok.size == 0:
    raise ClipError("no window whose first frame shows an object")
  start = int(ok[int(rng.integers(ok.size))])
  cand = np.flatnonzero(eligible[start])
  pick = rng.choice(cand, size=min(n_max, cand.size), replace=False)
  return start, np.asarray(pick, np.int64)


def _rasterize_boxes(boxes_xywh: np.ndarray, visible: np.ndarray, hw) -> np.ndarray:
  """bool [t,n,H,W] filled boxes, as the reference's box_to_mask (int-truncated, clipped)."""
  h, w = hw
  t, n = visible.shape
  out = np.zeros((t, n, h, w), bool)
  for i in range(t):
    for j in range(n):
      if visible[i, j]:
        x, y, bw, bh = (float(v) for v in boxes_xywh[i, j])
        x0, x1 = int(np.clip(x, 0, w)), int(np.clip(x + bw, 0, w))
        y0, y1 = int(np.clip(y, 0, h)), int(np.clip(y + bh, 0, h))
        out[i, j, y0:y1, x0:x1] = True
  return out


def _object_tracks(video: dict, task: str, frames: slice, cols: np.ndarray):
  """(masks bool [t,n,H,W] or None, points [t,n,2] or None, point visibility [t,n] or None)."""
  if task == "point":
    pts = np.asarray(video["points_xy"], np.float32)
    pts = pts.reshape(pts.shape[0], -1, 2)[frames][:, cols]
    pv = np.asarray(video["point_visible"], bool)
    return None, pts.astype(np.float64), pv.reshape(pv.shape[0], -1)[frames][:, cols]
  if "masks" in video:
    ids = np.asarray(video["masks"])[frames]
    return ids[:, None] == (cols + 1)[None, :, None, None], None, None
  hw = np.asarray(video["frames"]).shape[1:3]
  vis = np.asarray(video["visible"], bool)[frames][:, cols]
  return _rasterize_boxes(np.asarray(video["boxes_xywh"])[frames][:, cols], vis, hw), None, None


# ------------------------------------------------------------------------------ geometry
def _affine_matrix(angle_deg: float, shear_x_deg: float) -> np.ndarray:
  """torchvision's forward rotation+shear matrix (scale 1, no y shear) about the image centre."""
  r, sx = math.radians(angle_deg), math.radians(shear_x_deg)
  return np.array(
    [
      [math.cos(r), -math.cos(r) * math.tan(sx) - math.sin(r)],
      [math.sin(r), -math.sin(r) * math.tan(sx) + math.cos(r)],
    ]
  )


def _warp_matrix(a: np.ndarray, hw) -> np.ndarray:
  """2x3 OpenCV matrix (pixel centres at integers) of x -> A (x - c) + c, c the image centre."""
  c = np.array([(hw[1] - 1) / 2.0, (hw[0] - 1) / 2.0])
  return np.concatenate([a, (c - a @ c)[:, None]], 1)


def _random_affine(frames, masks, points, rng, aug):
  """The mask task's consistent RandomAffine; left out (as the reference) when it would empty
  a first-frame mask."""
  angle = rng.uniform(-aug.affine_degrees, aug.affine_degrees)
  shear = rng.uniform(-aug.affine_shear, aug.affine_shear)
  hw = frames.shape[1:3]
  a = _affine_matrix(angle, shear)
  m = _warp_matrix(a, hw)
  size = (hw[1], hw[0])

  def warp_mask(x):
    return cv2.warpAffine(
      x.astype(np.uint8),
      m,
      size,
      flags=cv2.INTER_NEAREST,
      borderMode=cv2.BORDER_CONSTANT,
      borderValue=0,
    ).astype(bool)

  if masks is not None:
    first = [warp_mask(x) for x in masks[0]]
    if not all(x.any() for x in first):
      return frames, masks, points
    masks = np.stack([np.stack(first)] + [np.stack([warp_mask(x) for x in mt]) for mt in masks[1:]])
  fill = tuple(float(v) for v in aug.affine_fill)
  frames = np.stack(
    [
      cv2.warpAffine(
        f, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
      )
      for f in frames
    ]
  )
  if points is not None:
    c = np.array([hw[1] / 2.0, hw[0] / 2.0])
    points = (points - c) @ a.T + c
  return frames, masks, points


@functools.lru_cache(maxsize=64)
def _aa_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """(indices, weights) [out, K] of PIL's bilinear resize along one axis: a triangle filter
  widened by the downscale factor, weights normalised (zero-weight taps pad K)."""
  scale = in_size / out_size
  support = max(scale, 1.0)
  k = int(math.ceil(support)) * 2 + 1
  idx = np.zeros((out_size, k), np.int64)
  wts = np.zeros((out_size, k), np.float32)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    j = np.arange(lo, hi)
    w = np.clip(1.0 - np.abs((j + 0.5 - center) / support), 0.0, None)
    idx[i, : j.size], wts[i, : j.size] = j, w / w.sum()
  return idx, wts


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
  """Antialiased bilinear resize of float `x` along `axis` (a gather and a weighted sum: banded
  taps stay single-threaded and fast, where small BLAS calls thrash on busy hosts)."""
  idx, wts = _aa_taps(x.shape[axis], out_size)
  x = np.moveaxis(x, axis, 0)
  y = (x[idx] * wts.reshape(wts.shape + (1,) * (x.ndim - 1))).sum(1)
  return np.moveaxis(y, 0, axis)


def _resize_frames(frames: np.ndarray, s: int) -> np.ndarray:
  """uint8 [T,H,W,3] -> uint8 [T,S,S,3], antialiased bilinear (PIL's F.resize default)."""
  x = _resize_axis(_resize_axis(frames.astype(np.float32), 1, s), 2, s)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _resize_masks(masks: np.ndarray, s: int, bilinear: bool) -> np.ndarray:
  """bool [...,H,W] -> [...,S,S]: the VOS transform's bilinear resize of a 0/1 uint8 mask
  (rounded, i.e. >= .5) for the mask task; torch 'nearest' (floor(i * H / S)) for box/point."""
  h, w = masks.shape[-2:]
  if bilinear:
    x = masks.astype(np.float32)
    return _resize_axis(_resize_axis(x, x.ndim - 2, s), x.ndim - 1, s) >= 0.5
  rows = np.minimum(np.floor(np.arange(s) * (h / s)).astype(np.int64), h - 1)
  cols = np.minimum(np.floor(np.arange(s) * (w / s)).astype(np.int64), w - 1)
  return masks[..., rows[:, None], cols[None, :]]


def _geometry(frames, masks, points, task, rng, cfg):
  """Flip -> (mask task) affine -> square resize, applied alike to frames, masks and points."""
  aug, s = cfg.augment, int(cfg.image_size)
  h, w = frames.shape[1:3]
  if rng.random() < aug.hflip_p:
    frames = frames[:, :, ::-1]
    masks = None if masks is None else masks[..., ::-1]
    if points is not None:
      points = points.copy()
      points[..., 0] = w - points[..., 0]
  if task in tuple(aug.affine_tasks):
    frames, masks, points = _random_affine(np.ascontiguousarray(frames), masks, points, rng, aug)
  frames = _resize_frames(np.ascontiguousarray(frames), s)
  if masks is not None:
    masks = _resize_masks(np.ascontiguousarray(masks), s, bilinear=(task == "mask"))
  if points is not None:
    points = points * np.array([s / w, s / h])
  return frames, masks, points


# ------------------------------------------------------------------------------ photometry
def _gray(x: np.ndarray) -> np.ndarray:
  """PIL's convert("L") (ITU-R 601-2 luma), rounded, on float [...,3]."""
  return np.rint(x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114)


def _jitter_params(rng, strengths) -> Tuple[np.ndarray, np.ndarray]:
  """torchvision ColorJitter.get_params without hue: a random op order and three factors."""
  order = rng.permutation(3)
  factors = np.array([rng.uniform(max(0.0, 1 - s), 1 + s) for s in strengths])
  return order, factors


def _apply_jitter(x: np.ndarray, order, factors) -> np.ndarray:
  """Brightness / contrast / saturation blends on float [...,H,W,3], rounded to uint8 levels
  after each (PIL ImageEnhance semantics; the contrast anchor is the frame's mean luma)."""
  for op in order:
    f = factors[op]
    if op == 0:
      x = x * f
    elif op == 1:
      mean = np.floor(_gray(x).mean(axis=(-2, -1), keepdims=True)[..., None] + 0.5)
      x = mean + f * (x - mean)
    else:
      g = _gray(x)[..., None]
      x = g + f * (x - g)
    x = np.clip(np.rint(x), 0, 255)
  return x


def _photometric(frames: np.ndarray, rng, aug) -> np.ndarray:
  """Consistent jitter -> consistent grayscale -> per-frame jitter (uint8 in, uint8 out)."""
  x = _apply_jitter(frames.astype(np.float32), *_jitter_params(rng, aug.jitter_consistent))
  if rng.random() < aug.grayscale_p:
    x = np.repeat(_gray(x)[..., None], 3, -1)
  x = np.stack([_apply_jitter(f, *_jitter_params(rng, aug.jitter_per_frame)) for f in x])
  return x.astype(np.uint8)


# ------------------------------------------------------------------------------ targets
def _targets(task, masks, points, pvis, cfg):
  """(masks, boxes, points, visible) per task, after augmentation."""
  s = int(cfg.image_size)
  if task == "point":
    inside = np.all((points >= 0) & (points < s), -1)
    vis = pvis & inside
    pts = np.where(vis[..., None], points, 0.0).astype(np.float32)
    t, n = vis.shape
    masks = np.zeros((t, n, s, s), bool)
    ti, oi = np.nonzero(vis)
    px = np.minimum(np.floor(pts[ti, oi]).astype(np.int64), s - 1)  # float32 may round up to S
    masks[ti, oi, px[:, 1], px[:, 0]] = True
    return masks, np.zeros((t, n, 4), np.float32), pts, vis
  if task == "box":
    vis = masks.sum((-2, -1)) >= int(cfg.box_min_pixels)
    masks = masks & vis[..., None, None]
  else:
    vis = masks.any((-2, -1))
  return masks, mask_to_box(masks), np.zeros(vis.shape + (2,), np.float32), vis


def _pad_objects(clip: dict, o: int) -> dict:
  """Pad the object axis to O with invalid, all-zero objects."""
  n = clip["visible"].shape[1]
  out = {"frames": clip["frames"], "obj_valid": np.arange(o) < n}
  for key in ("masks", "boxes", "points", "visible"):
    x = clip[key]
    pad = [(0, 0), (0, o - n)] + [(0, 0)] * (x.ndim - 2)
    out[key] = np.pad(x, pad)
  return out


# ------------------------------------------------------------------------------ clips
def make_clip(video: dict, task: str, rng: np.random.Generator, cfg) -> dict:
  """One training clip (module docstring layout) from a video in the synthetic layout.

  Raises ClipError when no window / augmentation keeps every chosen object visible in the first
  frame (the caller then draws another video, as the reference's dataset retries).
  """
  _check_task(task)
  t, o = int(cfg.num_frames), num_objects_for(task, cfg)
  frames_all = np.asarray(video["frames"])
  if frames_all.dtype != np.uint8 or frames_all.ndim != 4 or frames_all.shape[-1] != 3:
    raise ValueError(
      f"video frames must be uint8 [T,H,W,3], got {frames_all.dtype} {frames_all.shape}"
    )
  if frames_all.shape[0] < t:
    raise ClipError(f"video has {frames_all.shape[0]} frames < num_frames {t}")
  eligible = _eligible(video, task, cfg)
  for _ in range(int(cfg.clip_attempts)):
    start, cols = _sample_window(eligible, t, o, rng)
    window = slice(start, start + t)
    masks, points, pvis = _object_tracks(video, task, window, cols)
    frames, masks, points = _geometry(frames_all[window], masks, points, task, rng, cfg)
    frames = _photometric(frames, rng, cfg.augment)
    masks, boxes, points, vis = _targets(task, masks, points, pvis, cfg)
    if vis[0].all():
      clip = {
        "frames": normalize_u8(frames),
        "masks": masks,
        "boxes": boxes,
        "points": points,
        "visible": vis,
      }
      return _pad_objects(clip, o)
  raise ClipError(f"no valid {task} clip in {cfg.clip_attempts} attempts")


def _clip_rng(seed: int, step: int, global_j: int) -> np.random.Generator:
  """The generator of clip global_j of `step`: independent of the process layout."""
  return np.random.default_rng(np.random.SeedSequence((seed, step, global_j)))


def _active(src: Mapping, step: int) -> bool:
  """A source with `steps=(first, stop)` serves only steps first <= step < stop (curricula)."""
  steps = src.get("steps")
  return steps is None or int(steps[0]) <= step < int(steps[1])


def _task_sources(cfg, task: str, step: int = 0) -> Tuple[List[dict], np.ndarray]:
  """Sources serving `task` at `step` and their normalised weights."""
  srcs = [dict(s) for s in cfg.sources if task in source_tasks(s) and _active(s, step)]
  if not srcs:
    raise ValueError(
      f"sources: no source serves the {task!r} task at step {step} but task_probs gives "
      "it probability > 0; add one (check the sources' `steps` windows) or set its "
      "probability to 0"
    )
  w = np.array([float(s.get("weight", 1.0)) for s in srcs])
  return srcs, w / w.sum()


def _make_one(seed: int, step: int, global_j: int, task: str, cfg) -> dict:
  """Clip global_j of `step`: draw a source by weight and a video, retrying on ClipError."""
  rng = _clip_rng(seed, step, global_j)
  srcs, w = _task_sources(cfg, task, step)
  attempts = int(cfg.video_attempts)
  last = None
  for attempt in range(attempts):
    src = srcs[int(rng.choice(len(srcs), p=w))]
    try:
      if src["kind"] == "synthetic":
        index = (step * int(cfg.global_batch) + global_j) * attempts + attempt
        video = _synthetic_video(src, seed, index, cfg)
      else:
        video = _dataset_window(src, task, rng, cfg)
      return make_clip(video, task, rng, cfg)
    except ClipError as e:
      last = e
  raise RuntimeError(
    f"step {step} clip {global_j}: no valid {task} clip from {attempts} videos (last: {last})"
  )


def _local_range(cfg, process_index: int, process_count: int) -> range:
  """Global clip indices this process builds: a contiguous block of the step's batch."""
  count = _num("process_count", process_count, 1)
  index = _num("process_index", process_index, 0)
  if index >= count:
    raise ValueError(f"process_index {index} must be < process_count {count}")
  gb = int(cfg.global_batch)
  if gb % count:
    raise ValueError(f"global_batch {gb} must be divisible by process_count {count}")
  local = gb // count
  return range(index * local, (index + 1) * local)


def _stack(clips) -> dict:
  """Clips stacked on a leading batch axis (make_batch and the pipeline's batches alike)."""
  return {k: np.stack([c[k] for c in clips]) for k in CLIP_KEYS}


def make_batch(
  seed: int, step: int, task: str, cfg, *, process_index: int = 0, process_count: int = 1
) -> dict:
  """This process's `global_batch // process_count` clips of `step`, stacked on a leading axis;
  concatenating all processes' batches in index order gives the single-process batch."""
  check_data_config(cfg)
  seed, step = _num("seed", seed, 0), _num("step", step, 0)
  _check_task(task)
  return _stack(
    [_make_one(seed, step, j, task, cfg) for j in _local_range(cfg, process_index, process_count)]
  )


# ------------------------------------------------------------------------------ grain pipeline
class _IndexToClip(grain.transforms.Map):
  """Element i = step * local + k -> (step, task, clip local_range[k] of step): a pure function
  of the index, so grain may build elements in any thread or process, in any order."""

  def __init__(self, cfg, seed: int, local: range):
    self.cfg, self.seed, self.local = cfg, seed, local

  def map(self, index):
    step, k = divmod(int(index), len(self.local))
    task = task_for_step(self.seed, step, task_probs_at(self.cfg, step))
    return step, task, _make_one(self.seed, step, self.local[k], task, self.cfg)


def _collate(elements) -> Tuple[str, dict]:
  """grain batch_fn: the clips of one step -> (task, batch)."""
  steps = {e[0] for e in elements}
  tasks = {e[1] for e in elements}
  if len(steps) != 1 or len(tasks) != 1:  # the index arithmetic keeps a batch to one step
    raise RuntimeError(f"a batch mixes steps {sorted(steps)} / tasks {sorted(tasks)}")
  return tasks.pop(), _stack([e[2] for e in elements])


def _check_sources_serve(cfg, start_step: int) -> None:
  """Every curriculum stage from start_step on has a source for every task it may draw: fail at
  construction, not thousands of steps in."""
  edges = [int(src["steps"][0]) for src in cfg.sources if src.get("steps")]
  for (first, stop), _ in _check_task_stages(cfg.get("task_stages", ())):
    edges += [first, stop]
  bounds = {start_step} | {e for e in edges if e > start_step}
  for step in sorted(bounds):
    for task, p in zip(TASKS, task_probs_at(cfg, step)):
      if p > 0:
        _task_sources(cfg, task, step)


def make_train_dataset(
  cfg, seed: int, *, process_index: int = 0, process_count: int = 1, start_step: int = 0
) -> grain.IterDataset:
  """grain IterDataset of (task, batch) for steps start_step, start_step + 1, ... (module
  docstring: per-clip map, batch, thread prefetch, optional worker processes)."""
  check_data_config(cfg)
  seed, start_step = _num("seed", seed, 0), _num("start_step", start_step, 0)
  local = _local_range(cfg, process_index, process_count)
  _check_sources_serve(cfg, start_step)
  n = len(local)
  ds = grain.MapDataset.range(start_step * n, (start_step + _NUM_STEPS // n) * n)
  ds = ds.map(_IndexToClip(cfg, seed, local))
  # batched as a MapDataset: the worker slices of mp_prefetch are then whole steps
  ds = ds.batch(n, drop_remainder=True, batch_fn=_collate)
  opts = grain.ReadOptions(
    num_threads=int(cfg.get("num_threads", 0)),
    prefetch_buffer_size=int(cfg.get("prefetch_buffer_size", 0)),
  )
  out = ds.to_iter_dataset(opts)
  workers = int(cfg.get("num_workers", 0))
  if workers:
    if not absl_flags.FLAGS.is_parsed():
      # grain 0.2.18 reads an absl flag when starting workers (google/grain#1355): scripts
      # without absl.app (tests, bench) would fail; defaults are what they would get anyway
      absl_flags.FLAGS.mark_as_parsed()
    out = out.mp_prefetch(
      grain.multiprocessing.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=int(cfg.get("worker_buffer_size", 1))
      )
    )
  return out


class TrainIterator:
  """Iterator of (task, batch) per step. Every batch is a pure function of (seed, step), so the
  state is {"next_step": n}: exact, and valid whatever the threads / workers / processes."""

  def __init__(
    self, cfg, seed: int, *, process_index: int = 0, process_count: int = 1, start_step: int = 0
  ):
    self._make = functools.partial(
      make_train_dataset, cfg, seed, process_index=process_index, process_count=process_count
    )
    self._make(start_step=start_step)  # a bad config fails here, not at the first next()
    self._next_step = _num("start_step", start_step, 0)
    self._it = None  # the grain iterator, made at the first next(): workers start then

  def __iter__(self):
    return self

  def __next__(self) -> Tuple[str, dict]:
    if self._it is None:
      self._it = iter(self._make(start_step=self._next_step))
    out = next(self._it)
    self._next_step += 1
    return out

  def get_state(self) -> dict:
    return {"next_step": self._next_step}

  def set_state(self, state: Mapping) -> None:
    """Continue at state's step; also reads the grain state {"next_index": n} of checkpoints
    written before this class (an iterator from step 0, where the index is the step)."""
    key = next((k for k in ("next_step", "next_index") if k in (state or {})), None)
    if not isinstance(state, Mapping) or key is None:
      raise ValueError(f"data iterator state must be {{'next_step': int}}, got {state!r}")
    step = _num(f"data iterator state {key}", state[key], 0)
    self.close()
    self._next_step = step

  def close(self) -> None:
    """Stop the grain threads / worker processes (a later next() starts new ones)."""
    if self._it is not None:
      self._it.close()
      self._it = None


def make_train_iterator(
  cfg, seed: int, *, process_index: int = 0, process_count: int = 1, start_step: int = 0
) -> TrainIterator:
  """Iterator of (task, batch); `get_state()` / `set_state()` checkpoint its position exactly."""
  return TrainIterator(
    cfg, seed, process_index=process_index, process_count=process_count, start_step=start_step
  )
