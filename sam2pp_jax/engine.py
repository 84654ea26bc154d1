"""The data engine: sparse key-frame annotations -> a dense annotation set (SAM 2++ data engine).

Every gap between consecutive key frames k_i < k_j is filled by two independent passes of the
interactive predictor: a forward pass prompted only with k_i's annotation (frames k_i+1..k_j-1)
and a backward pass prompted only with k_j's (frames k_j-1..k_i+1). The predictor's state is
reset between passes (`reset_state`: image features stay cached), so each pass remembers only its
own key frame and the two are independent opinions that the fuse rule can compare. Frames before
the first key frame get the backward pass only, frames after the last one the forward pass only.
Key frames output exactly their annotation.

Fuse rules, per frame and per object (an object a pass was not prompted with, because its key
frame does not show it, counts as absent with object score logit -inf):
  nearest (default): the pass whose key frame is nearer (a tie goes to the forward pass), unless
    that pass says absent (object score logit < 0) while the other says present with a logit
    above PRESENT_MARGIN: then the other one.
  score: the pass with the higher confidence, predicted IoU (clipped to [0, 1]) x sigmoid(object
    score logit) for masks and boxes, sigmoid(object score logit) for points; ties go to nearest.

Memory: one gap's forward-pass results (bool masks / boxes / points) are held until the backward
pass over the same gap fuses them; results stream out frame by frame in video order.

Annotations per task (video pixels; `KeyFrames.annotations[frame]`):
  mask   uint8 [H,W] id map (0 background), every non-zero id an object;
  box    float32 [4] (x0, y0, x1, y1), one object (id 1);
  point  (xy float32 [N,2], visible bool [N]): N tracks, a track hidden on a key frame is not
         prompted there (that frame's pass has no opinion about it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np

from sam2pp_jax.data.formats.base import DatasetError, load_points_npz
from sam2pp_jax.io.png import read_palette_png
from sam2pp_jax.io.video import VideoError
from sam2pp_jax.tracking import outputs, prompts

FUSE_RULES = ("nearest", "score")
EDGE_TOLERANCE = 1.0  # px: a visible key point this far outside the frame is clipped to it
PRESENT_MARGIN = 2.0  # object score logit (sigmoid 0.88) that overrides a nearer "absent"


class AnnotationError(ValueError):
  """A bad key-frame input; the message names the file, the problem and the fix."""


# ------------------------------------------------------------------------------ key frames
@dataclasses.dataclass(frozen=True)
class KeyFrames:
  """Sparse annotations of one video: the key frames (sorted), every object id, and per key
  frame its annotation (layout per task in the module docstring)."""

  task: str
  num_frames: int
  obj_ids: tuple
  annotations: dict

  @property
  def frames(self) -> list:
    return sorted(self.annotations)


def _frame_stems(frame_names: Sequence[str]) -> dict:
  return {os.path.splitext(n)[0]: i for i, n in enumerate(frame_names)}


def read_mask_keys(folder: str, frame_names: Sequence[str], hw) -> KeyFrames:
  """A folder of palette PNGs named like the frames -> KeyFrames (all ids of all PNGs)."""
  if not os.path.isdir(folder):
    raise AnnotationError(
      f"--keyframes {folder!r}: not a folder; give a folder of palette PNGs named like the frames"
    )
  stems = _frame_stems(frame_names)
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
  if not names:
    raise AnnotationError(
      f"--keyframes {folder!r}: no key frames (no .png file); add at least one palette PNG "
      "named like its frame, e.g. 00000.png"
    )
  ann, ids = {}, set()
  for n in names:
    path = os.path.join(folder, n)
    stem = os.path.splitext(n)[0]
    if stem not in stems:
      first, last = os.path.splitext(frame_names[0])[0], os.path.splitext(frame_names[-1])[0]
      raise AnnotationError(
        f"--keyframes {path!r}: matches no frame of the video (frames {first} .. {last}, "
        f"{len(frame_names)} in all); rename it after its frame or remove it"
      )
    try:
      m, _ = read_palette_png(path)
    except (VideoError, OSError) as e:
      raise AnnotationError(f"--keyframes {path!r}: cannot read the PNG ({e})") from None
    if m.ndim != 2 or m.shape != tuple(hw):
      raise AnnotationError(
        f"--keyframes {path!r}: mask of shape {m.shape} but the video is {hw[1]}x{hw[0]} (WxH); "
        "give a 2-D index PNG of the frame's size"
      )
    if not m.any():
      raise AnnotationError(
        f"--keyframes {path!r}: the mask is empty (all 0); a key frame must show at least one "
        "object: annotate it or remove the file"
      )
    ann[stems[stem]] = m.astype(np.uint8)
    ids.update(int(v) for v in np.unique(m) if v)
  return KeyFrames("mask", len(frame_names), tuple(sorted(ids)), ann)


def _numbers(line: str, where: str, n: int) -> list:
  parts = line.replace(",", " ").split()
  try:
    vals = [float(p) for p in parts]
  except ValueError:
    vals = []
  if len(vals) != n:
    raise AnnotationError(
      f"{where}: {line.strip()!r} is not {n} numbers; write one key frame per line as "
      "frame,x,y,w,h (GOT-10k x,y,w,h in video pixels)"
    )
  return vals


def _key_frame_index(value: float, where: str, num_frames: int) -> int:
  if value != int(value) or not 0 <= value < num_frames:
    raise AnnotationError(
      f"{where}: frame {value:g} is out of range; the video has {num_frames} frames, "
      f"give a frame index in 0..{num_frames - 1}"
    )
  return int(value)


def read_box_keys(path: str, num_frames: int, hw) -> KeyFrames:
  """A text file of 'frame,x,y,w,h' lines (blank lines and '#' comments skipped) -> KeyFrames."""
  if not os.path.isfile(path):
    raise AnnotationError(
      f"--keyframes {path!r}: file does not exist; give a text file of frame,x,y,w,h lines"
    )
  with open(path) as f:
    lines = f.read().splitlines()
  ann = {}
  for i, line in enumerate(lines, 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    where = f"--keyframes {path}:{i}"
    t, x, y, w, h = _numbers(line, where, 5)
    t = _key_frame_index(t, where, num_frames)
    if t in ann:
      raise AnnotationError(f"{where}: frame {t} has a second box; keep one box per key frame")
    try:
      ann[t] = prompts.check_box([x, y, x + w, y + h], hw)
    except ValueError as e:
      raise AnnotationError(f"{where}: {e}") from None
  if not ann:
    raise AnnotationError(
      f"--keyframes {path!r}: no key frames (no frame,x,y,w,h line); add at least one"
    )
  return KeyFrames("box", num_frames, (1,), ann)


def key_frame_list(num_frames: int, every: int | None = None, frames: str | None = None) -> list:
  """--key-every K (frames 0, K, 2K, ... and the last) or --key-frames '0,10,20' -> sorted list."""
  if (every is None) == (frames is None):
    raise AnnotationError(
      "point key frames: give exactly one of --key-every K or --key-frames 0,10,20"
    )
  if every is not None:
    if every < 1:
      raise AnnotationError(f"--key-every {every}: give an interval >= 1")
    return sorted(set(range(0, num_frames, every)) | {num_frames - 1})
  out = set()
  for p in frames.replace(",", " ").split():
    try:
      v = float(p)
    except ValueError:
      raise AnnotationError(f"--key-frames {frames!r}: {p!r} is not a frame index") from None
    out.add(_key_frame_index(v, f"--key-frames {frames}", num_frames))
  if not out:
    raise AnnotationError(f"--key-frames {frames!r}: no key frames; list at least one index")
  return sorted(out)


def _inside(xy, hw, tol: float = 0.0):
  """bool [N]: finite points within the frame [0,W]x[0,H] grown by tol pixels."""
  h, w = hw
  x, y = xy[..., 0], xy[..., 1]
  with np.errstate(invalid="ignore"):
    return (x >= -tol) & (x <= w + tol) & (y >= -tol) & (y <= h + tol)


def read_point_keys(path: str, num_frames: int, hw, key_frames: Sequence[int]) -> KeyFrames:
  """A TAP-Vid npz (trajs_2d [T,N,2], visibs [T,N]) and the chosen key frames -> KeyFrames."""
  try:  # the datasets' TAP-Vid reader (its checks and messages), errors as AnnotationError
    trajs, vis, _ = load_points_npz(path)
  except DatasetError as e:
    raise AnnotationError(f"--keyframes: {e}") from None
  xy = trajs.astype(np.float32)
  if xy.ndim != 3 or xy.shape[-1] != 2 or vis.shape != xy.shape[:2] or xy.shape[1] == 0:
    raise AnnotationError(
      f"--keyframes {path!r}: trajs_2d {xy.shape} / visibs {vis.shape} must be [T,N,2] / [T,N] "
      "with N >= 1"
    )
  if xy.shape[0] != num_frames:
    raise AnnotationError(
      f"--keyframes {path!r}: {xy.shape[0]} frames but the video has {num_frames}; give the npz "
      "of this video"
    )
  keys = sorted(int(k) for k in key_frames)
  ann = {}
  for k in keys:
    v = vis[k].copy()
    far = v & ~_inside(xy[k], hw, EDGE_TOLERANCE)
    if far.any():
      i = int(np.flatnonzero(far)[0])
      raise AnnotationError(
        f"--keyframes {path!r}: track {i} on key frame {k} is visible at {xy[k, i].tolist()}, "
        f"outside the {hw[1]}x{hw[0]} frame; fix the point or mark it hidden"
      )
    ann[k] = (xy[k].copy(), v)
  seen = np.any([vis[k] for k in keys], axis=0)
  if not seen.any():
    raise AnnotationError(
      f"--keyframes {path!r}: no track is visible on any key frame {keys[:10]}; choose key "
      "frames where the points are visible"
    )
  if not seen.all():
    lost = np.flatnonzero(~seen).tolist()
    raise AnnotationError(
      f"--keyframes {path!r}: tracks {lost[:10]} are visible on no key frame, so nothing can "
      "prompt them; add a key frame where they are visible or remove them"
    )
  return KeyFrames("point", num_frames, tuple(range(xy.shape[1])), ann)


# ------------------------------------------------------------------------------ the passes
@dataclasses.dataclass(frozen=True)
class Pass:
  """One tracking pass: prompted on `key`, tracking `key`..`stop` (inclusive) in one direction."""

  key: int
  stop: int
  reverse: bool

  @property
  def length(self) -> int:
    return abs(self.stop - self.key)


def pass_frames(p: Pass) -> range:
  """The frames a pass fills, in its tracking order (its key frame excluded)."""
  return range(p.key - 1, p.stop - 1, -1) if p.reverse else range(p.key + 1, p.stop + 1)


@dataclasses.dataclass(frozen=True)
class Gap:
  """Non-key frames [start, end) and the passes that fill them (None: no key frame that side)."""

  start: int
  end: int
  forward: Pass | None
  backward: Pass | None


def plan_gaps(key_frames: Sequence[int], num_frames: int) -> list:
  """The gaps between sorted key frames, each with its forward and backward pass."""
  keys = sorted(set(int(k) for k in key_frames))
  if not keys:
    raise AnnotationError("no key frames; annotate at least one frame")
  gaps = []
  if keys[0] > 0:
    gaps.append(Gap(0, keys[0], None, Pass(keys[0], 0, True)))
  for a, b in zip(keys, keys[1:]):
    if b - a > 1:
      gaps.append(Gap(a + 1, b, Pass(a, b - 1, False), Pass(b, a + 1, True)))
  if keys[-1] < num_frames - 1:
    gaps.append(Gap(keys[-1] + 1, num_frames, Pass(keys[-1], num_frames - 1, False), None))
  return gaps


@dataclasses.dataclass
class PassFrame:
  """One pass's opinion on one frame, over all objects (absent from the pass: score -inf).
  values: mask bool [N,H,W]; box float32 [1,4] xyxy; point float32 [N,2] xy."""

  values: np.ndarray
  score: np.ndarray  # [N] object score logits
  iou: np.ndarray  # [N] predicted IoU (0 where absent)


def _prompt_pass(predictor, state, keys: KeyFrames, k: int) -> list:
  """Prompt object(s) of key frame k; returns the predictor's obj ids."""
  a = keys.annotations[k]
  if keys.task == "mask":
    ids = [int(v) for v in np.unique(a) if v]
    for o in ids:
      predictor.add_new_mask(state, k, o, a == o)
    return ids
  if keys.task == "box":
    predictor.add_new_points_or_box(state, k, 1, box=np.asarray(a, np.float32))
    return [1]
  xy, vis = a
  h, w = state.video_hw
  xy = np.clip(xy, 0.0, [w, h])  # points on the frame edge (EDGE_TOLERANCE) prompt at the edge
  cfg = predictor.model.config
  ids = [int(i) for i in np.flatnonzero(vis)]
  for i in ids:
    predictor.add_new_points_and_generate_gaussian_mask(
      state,
      k,
      i,
      points=xy[i][None],
      labels=np.ones(1, np.int32),
      radius=int(cfg.point_gaussian_radius),
      sigma=float(cfg.point_gaussian_sigma),
    )
  return ids


def _absent(keys: KeyFrames, k: int, hw) -> PassFrame:
  """A pass's frame before it says anything: every object absent (score -inf). Points stay at
  the key frame's annotated position (hidden tracks too), the best guess a baseline makes."""
  n = len(keys.obj_ids)
  if keys.task == "mask":
    values = np.zeros((n,) + tuple(hw), bool)
  elif keys.task == "box":
    values = np.zeros((1, 4), np.float32)
  else:
    values = keys.annotations[k][0].astype(np.float32)
  return PassFrame(values, np.full(n, -np.inf, np.float32), np.zeros(n, np.float32))


def run_pass(predictor, state, keys: KeyFrames, p: Pass) -> Iterator[tuple]:
  """Reset the session, prompt key frame p.key alone, track to p.stop; yields (frame,
  PassFrame) for every tracked frame except the key frame itself."""
  predictor.reset_state(state)
  if not _prompt_pass(predictor, state, keys, p.key):  # the key frame shows no object
    for f in pass_frames(p):
      yield f, _absent(keys, p.key, state.video_hw)
    return
  index = {o: i for i, o in enumerate(keys.obj_ids)}
  tracked = predictor.propagate_in_video(
    state, start_frame_idx=p.key, max_frame_num_to_track=p.length, reverse=p.reverse, with_info=True
  )
  for f, obj_ids, masks, info in tracked:
    if f == p.key:
      continue
    r = _absent(keys, p.key, state.video_hw)
    rows = [index[o] for o in obj_ids]
    if keys.task == "mask":
      r.values[rows] = np.asarray(masks) > 0
    elif keys.task == "box":
      r.values[:] = info["boxes_xyxy"]
    else:
      r.values[rows] = info["points_xy"]
    r.score[rows] = info["object_score_logits"]
    r.iou[rows] = [predictor.frame_output(state, f, o)["iou"] for o in obj_ids]
    yield f, r


# ------------------------------------------------------------------------------ fusion
def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def confidence(task: str, score, iou) -> np.ndarray:
  """The 'score' rule's per-object confidence: IoU x sigmoid(score); points: sigmoid(score)."""
  c = _sigmoid(score)
  return c if task == "point" else c * np.clip(np.asarray(iou, np.float64), 0.0, 1.0)


def take_forward(rule: str, task: str, t: int, gap: Gap, fwd: PassFrame, bwd: PassFrame):
  """bool [N]: per object, True where the forward pass's result is kept on frame t."""
  near_fwd = (t - gap.forward.key) <= (gap.backward.key - t)
  take = np.full(fwd.score.shape, near_fwd)
  if rule == "nearest":
    f_absent, b_absent = fwd.score < 0, bwd.score < 0
    if near_fwd:
      return take & ~(f_absent & (bwd.score > PRESENT_MARGIN))
    return take | (b_absent & (fwd.score > PRESENT_MARGIN))
  if rule == "score":
    cf, cb = confidence(task, fwd.score, fwd.iou), confidence(task, bwd.score, bwd.iou)
    return np.where(cf == cb, take, cf > cb)
  raise ValueError(f"fuse rule {rule!r} is unknown; use one of {', '.join(FUSE_RULES)}")


def fuse(task: str, take_fwd, fwd: PassFrame, bwd: PassFrame) -> PassFrame:
  """Per object the kept pass's values, score and IoU (the box task has one object)."""
  take = np.asarray(take_fwd, bool)
  pick = lambda a, b: np.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return PassFrame(pick(fwd.values, bwd.values), pick(fwd.score, bwd.score), pick(fwd.iou, bwd.iou))


def frame_result(task: str, obj_ids, r: PassFrame):
  """A fused PassFrame -> the output of its task: mask uint8 id map (the lowest id wins an
  overlap, as outputs.ids_from_logits); box float32 [4] xyxy; point (xy [N,2], visible [N])."""
  if task == "mask":
    h, w = r.values.shape[1:]
    out = np.zeros((h, w), np.uint8)
    for i in np.argsort(np.asarray(obj_ids))[::-1]:
      out[r.values[i]] = int(obj_ids[i])
    return out
  if task == "box":
    return r.values[0].astype(np.float32)
  return r.values.astype(np.float32), r.score > 0


def key_result(keys: KeyFrames, k: int):
  """A key frame's output: its annotation, unchanged."""
  a = keys.annotations[k]
  if keys.task == "point":
    return a[0].astype(np.float32), a[1].copy()
  return a.copy()


def _fill_gap(predictor, state, keys: KeyFrames, gap: Gap, rules) -> Iterator[tuple]:
  """(frame, {rule: result}) for the gap's frames in order. Held at once: the forward pass's
  frames of the gap, then the fused results as the backward pass meets them."""
  task, ids = keys.task, keys.obj_ids
  each = lambda r: {rule: frame_result(task, ids, r) for rule in rules}
  if gap.backward is None:  # after the last key frame: stream the forward pass
    for t, f in run_pass(predictor, state, keys, gap.forward):
      yield t, each(f)
    return
  fwd = {} if gap.forward is None else dict(run_pass(predictor, state, keys, gap.forward))
  done = {}
  for t, b in run_pass(predictor, state, keys, gap.backward):
    f = fwd.pop(t, None)
    if f is None:
      done[t] = each(b)
    else:
      done[t] = {
        rule: frame_result(task, ids, fuse(task, take_forward(rule, task, t, gap, f, b), f, b))
        for rule in rules
      }
  for t in range(gap.start, gap.end):
    yield t, done.pop(t)


def fill_video(predictor, state, keys: KeyFrames, rules=("nearest",)) -> Iterator[tuple]:
  """Yields (frame, {rule: result}) for every frame in order: key frames their annotation, the
  others the fused passes (one pair of passes per gap, shared by all `rules`)."""
  for r in rules:
    if r not in FUSE_RULES:
      raise ValueError(f"fuse rule {r!r} is unknown; use one of {', '.join(FUSE_RULES)}")
  gaps = {g.start: g for g in plan_gaps(keys.frames, keys.num_frames)}
  t = 0
  while t < keys.num_frames:
    if t in keys.annotations:
      yield t, {r: key_result(keys, t) for r in rules}
      t += 1
    else:
      gap = gaps[t]
      yield from _fill_gap(predictor, state, keys, gap, rules)
      t = gap.end


def nearest_key(t: int, key_frames: Sequence[int]) -> int:
  """The key frame nearest to t (the earlier one on a tie): the copy baseline's source."""
  return min(sorted(key_frames), key=lambda k: (abs(k - t), k))


def copy_nearest(keys: KeyFrames) -> Iterator[tuple]:
  """The baseline: every frame repeats the nearest key frame's annotation."""
  for t in range(keys.num_frames):
    yield t, key_result(keys, nearest_key(t, keys.frames))


# ------------------------------------------------------------------------------ writing
def write_dense(task: str, out_dir: str, name: str, frame_names, hw, results, palette=None):
  """Write per-frame outputs (an iterable in frame order) in the scorers' layouts, atomically:
  mask OUT/<name>/<frame>.png; box OUT/<name>.txt (+ _xyxy.npz); point OUT/<name>.npz.
  Returns the written paths."""
  if task == "mask":
    return [outputs.write_mask_dir(os.path.join(out_dir, name), frame_names, results, palette)]
  rows = list(results)
  os.makedirs(out_dir, exist_ok=True)
  if task == "box":
    return outputs.write_box_results(os.path.join(out_dir, name + ".txt"), np.stack(rows))
  xy = np.stack([r[0] for r in rows])
  vis = np.stack([r[1] for r in rows])
  return [outputs.write_points_npz(os.path.join(out_dir, name + ".npz"), xy, vis, hw[::-1])]
