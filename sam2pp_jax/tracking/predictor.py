"""Interactive video predictor with SAM 2's vocabulary (init_state, add_new_*, propagate_in_video).

Reproduces the reference's interactive predictor (`SAM2VideoPredictor_Plus`, eval mode, no
post-processing) for one task per predictor instance:

* prompts on any frame are decoded at once ("temporary" outputs, no memory yet); a frame not
  tracked before is a *conditioning* frame decoded without memory, a frame already tracked is
  corrected with memory (and, for clicks, the frame's previous low-res logits clamped to
  [-32, 32] as the dense prompt) and stays a non-conditioning frame;
* `propagate_in_video` first consolidates: every temporary output gets its memory encoded from
  its low-res logits upsampled to SxS, then moves into the per-object output store; then each
  frame is tracked with memory attention over the selected conditioning frames, the
  num_maskmem-1 nearest tracked frames (in the tracking direction) and up to
  min(T, max_obj_ptrs)-1 object pointers (only past ones; signed offsets when reversed);
* per-task routing: mask task + mask -> the mask is the output; point task + Gaussian clicks ->
  the heatmap is the output; box / clicks / masks in the other combinations -> the decoder
  (multimask for 0..1 points, a box-only prompt counting as 0 points).

Objects are a batch axis: on each tracked frame, the objects whose memories sit on the same
frames run as one batch through one jitted step over a fixed-shape `MemoryBank`.

Outputs: the add_* methods return `(frame_idx, obj_ids, masks)` and `propagate_in_video`
yields `(frame_idx, obj_ids, masks)` (or `(frame_idx, obj_ids, masks, info)` with
`with_info=True`), masks being float32 [O,H,W] logits at video resolution. The per-frame extras
`info` are also kept in `state.frame_info[frame_idx]`: object_score_logits [O], visible [O],
low_res_masks [O,S/4,S/4]; box task: boxes_xyxy [O,4] (video px), boxes_xyxy_norm [O,4];
point task: points_xy [O,2] (x, y): int, the first maximum of the video-res logits (the
reference's readout, default), or float with point_readout="soft_argmax" (point_readout.py).
`frame_output(state, frame_idx, obj_id)` returns one object's stored output (pointer, memory).
"""

from __future__ import annotations

import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.data.video_io import VideoFrames, load_video_for_model, preprocess
from sam2pp_jax.model.resize import resize_bilinear
from sam2pp_jax.model.sam2pp import NO_OBJ_SCORE
from sam2pp_jax.tracking import prompts
from sam2pp_jax.tracking.memory_bank import EMPTY, MemoryBank
from sam2pp_jax.tracking.point_readout import check_readout, read_points
from sam2pp_jax.tracking.propagate import encode_frames

PREV_LOGIT_CLAMP = 32.0      # previous logits fed back as a dense prompt are clamped to +-this


# -----------------------------------------------------------------------------------------------
# state
# -----------------------------------------------------------------------------------------------
class _Object:
  """One object's prompts and outputs (outputs keyed by frame; see `FrameOut` keys below)."""

  def __init__(self):
    self.point_inputs: dict = {}      # frame -> (coords [P,2] model px float32, labels [P] int32)
    self.mask_inputs: dict = {}       # frame -> [S,S] float32
    self.out = {"cond": {}, "non_cond": {}}
    self.temp = {"cond": {}, "non_cond": {}}
    self.tracked: dict = {}           # frame -> reverse flag of the pass that tracked it


class InferenceState:
  """Everything a predictor session holds for one video (SAM 2's `inference_state`).

  Per-object outputs are dicts: low_res [S/4,S/4] logits, score () object score logit, obj_ptr
  [C], box [4] normalised (box task) or None, maskmem [HW,Cm] bfloat16 or None (not yet
  encoded).
  """

  def __init__(self, images: np.ndarray, video_hw: tuple[int, int]):
    self.images = images                       # float32 [T,S,S,3] normalised
    self.num_frames = int(images.shape[0])
    self.video_height, self.video_width = (int(v) for v in video_hw)
    self.cached_features: dict = {}            # frame -> {vision, vision_pos, s0, s1} [1,...]
    self.obj_ids: list = []
    self.objects: list[_Object] = []
    self.maskmem_pos = None                    # [HW,Cm], the same for every memory
    self.frame_info: dict = {}                 # frame -> extras of the latest output

  @property
  def video_hw(self) -> tuple[int, int]:
    return self.video_height, self.video_width

  def obj_idx(self, obj_id) -> int:
    return self.obj_ids.index(obj_id)


# -----------------------------------------------------------------------------------------------
# predictor
# -----------------------------------------------------------------------------------------------
class VideoPredictor:
  """SAM 2-style interactive predictor for one task ("mask" | "box" | "point").

  model: a SAM2Plus module; params: its parameter tree. encode_chunk: frames encoded per
  image-encoder call (features cached per frame); max_cached_frames: keep at most this many
  frames' features (None = all). max_cond_frames_in_attn: None = the model config's value
  (-1 = all conditioning frames). point_readout: "argmax" (the reference's) or "soft_argmax"
  (the training readout, sub-pixel; see point_readout.py).
  """

  def __init__(self, model, params, task: str, *, encode_chunk: int = 4,
               max_cached_frames: int | None = None, max_cond_frames_in_attn: int | None = None,
               point_readout: str = "argmax"):
    if task not in ("mask", "box", "point"):
      raise ValueError(f"task={task!r} is unknown; use 'mask', 'box' or 'point'")
    self.point_readout = check_readout(point_readout)
    c = model.config
    self.model, self.params, self.task = model, params, task
    self.image_size = int(c.image_size)
    self.hidden_dim, self.mem_dim = int(c.hidden_dim), int(c.mem_dim)
    self.num_maskmem = int(c.num_maskmem)
    self.max_obj_ptrs = int(c.max_obj_ptrs_in_encoder)
    mc = c.max_cond_frames_in_attn if max_cond_frames_in_attn is None else max_cond_frames_in_attn
    self.max_cond_frames_in_attn = int(mc)
    if self.max_cond_frames_in_attn not in (-1,) and self.max_cond_frames_in_attn < 2:
      raise ValueError(f"max_cond_frames_in_attn={mc}: use -1 (all) or at least 2")
    self.multimask_min_pt_num = int(c.multimask_min_pt_num)
    self.multimask_max_pt_num = int(c.multimask_max_pt_num)
    self.gaussian_radius = int(c.point_gaussian_radius)
    self.gaussian_sigma = float(c.point_gaussian_sigma)
    self.encode_chunk = int(encode_chunk)
    self.max_cached_frames = max_cached_frames
    self._fns: dict = {}

  # ---------------------------------------------------------------------------------------------
  # session
  # ---------------------------------------------------------------------------------------------
  def init_state(self, video, video_hw=None) -> InferenceState:
    """A new session. video: a frame folder / video file path, a `VideoFrames`, uint8 RGB
    frames [T,H,W,3], or already preprocessed float32 [T,S,S,3] (then video_hw=(H, W) is
    required). Frame 0 is encoded at once (warm-up), other frames lazily in chunks."""
    s = self.image_size
    if isinstance(video, (str, os.PathLike)):
      images, h, w, _ = load_video_for_model(video, s)
    elif isinstance(video, VideoFrames):
      images, h, w = preprocess(video.frames, s), video.height, video.width
    else:
      arr = np.asarray(video)
      if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"video has shape {arr.shape}; give uint8 frames [T,H,W,3], "
                         f"preprocessed float32 frames [T,{s},{s},3] or a path")
      if arr.dtype == np.uint8:
        images, (h, w) = preprocess(arr, s), arr.shape[1:3]
      else:
        if arr.shape[1:3] != (s, s):
          raise ValueError(f"preprocessed video has frames of {arr.shape[1:3]}; the model "
                           f"takes {s}x{s} (or give uint8 frames to be resized)")
        if video_hw is None:
          raise ValueError("video_hw is required with preprocessed frames: give the original "
                           "(height, width) so outputs are resized back to it")
        images, (h, w) = arr.astype(np.float32), video_hw
    if images.shape[0] < 1:
      raise ValueError("video has no frames; give at least one frame")
    state = InferenceState(images, (h, w))
    self._features(state, 0)
    return state

  def reset_state(self, state: InferenceState) -> None:
    """Drop every object, prompt and output (cached image features are kept)."""
    state.obj_ids.clear()
    state.objects.clear()
    state.frame_info.clear()

  def remove_object(self, state: InferenceState, obj_id, strict: bool = True,
                    need_output: bool = True):
    """Remove an object. Returns (remaining obj_ids, [(frame_idx, masks [O,H,W])] for the
    frames where it had prompts). Unknown obj_id: ValueError (strict) or a no-op."""
    if obj_id not in state.obj_ids:
      if not strict:
        return list(state.obj_ids), []
      raise ValueError(f"obj_id={obj_id!r} is not tracked in this session (known ids: "
                       f"{state.obj_ids}); pass one of them")
    i = state.obj_idx(obj_id)
    frames = sorted(set(state.objects[i].point_inputs) | set(state.objects[i].mask_inputs))
    if len(state.obj_ids) == 1:
      self.reset_state(state)
      return [], []
    del state.obj_ids[i]
    del state.objects[i]
    updated = []
    if need_output:
      for f in frames:
        is_cond = any(f in o.temp["cond"] for o in state.objects)
        updated.append((f, self._consolidated(state, f, is_cond)[0]))
    return list(state.obj_ids), updated

  def frame_output(self, state: InferenceState, frame_idx: int, obj_id) -> dict | None:
    """One object's stored output on a frame (numpy): low_res, score, obj_ptr, box, maskmem
    (float32 [h,w,Cm] bf16 values, None before consolidation), is_cond; None if absent."""
    o = state.objects[self._known_obj(state, obj_id)]
    for store, is_cond in ((o.temp["cond"], True), (o.temp["non_cond"], False),
                           (o.out["cond"], True), (o.out["non_cond"], False)):
      if frame_idx in store:
        r = {k: None if v is None else np.asarray(v, np.float32)
             for k, v in store[frame_idx].items()}
        if r["maskmem"] is not None:
          h = self.image_size // 16
          r["maskmem"] = r["maskmem"].reshape(h, h, self.mem_dim)
        r["is_cond"] = is_cond
        return r
    return None

  # ---------------------------------------------------------------------------------------------
  # prompts
  # ---------------------------------------------------------------------------------------------
  def add_new_mask(self, state: InferenceState, frame_idx: int, obj_id, mask):
    """A mask [H,W] (video size) for one object on one frame. Returns (frame_idx, obj_ids,
    masks [O,H,W] logits of every object on that frame)."""
    frame_idx = prompts.check_frame_index(frame_idx, state.num_frames)
    m = prompts.check_mask(mask, state.video_hw)
    i = self._obj_id_to_idx(state, obj_id)
    o = state.objects[i]
    m_model = prompts.mask_to_model_res(m, self.image_size).astype(np.float32)
    o.mask_inputs[frame_idx] = m_model
    o.point_inputs.pop(frame_idx, None)
    is_init, reverse = self._frame_status(o, frame_idx)
    if self.task == "mask":
      out = self._prompt_as_output(state, frame_idx, m_model, None)
    else:
      out = self._decode(state, o, frame_idx, is_init, reverse, None, m_model)
    return self._store_temp(state, o, frame_idx, is_init, out)

  def add_new_points_or_box(self, state: InferenceState, frame_idx: int, obj_id, points=None,
                            labels=None, clear_old_points: bool = True,
                            normalize_coords: bool = True, box=None):
    """Clicks (labels 1 positive / 0 negative) and/or a box (x0, y0, x1, y1) for one object.

    Coordinates are video pixels (normalize_coords=True) or already in [0, 1]. A box becomes
    two points with labels 2, 3 placed before the clicks. On a frame already tracked, the
    clicks correct the tracked mask. Not available in the point task (the reference's point
    task needs the Gaussian heatmap: use add_new_points_and_generate_gaussian_mask).
    """
    if self.task == "point":
      raise ValueError("add_new_points_or_box is not available in the point task (the "
                       "reference requires the Gaussian heatmap with every click); use "
                       "add_new_points_and_generate_gaussian_mask")
    frame_idx = prompts.check_frame_index(frame_idx, state.num_frames)
    coords, labs = self._user_points(state, points, labels, box, normalize_coords,
                                     allow_empty=box is not None)
    if box is not None:
      if not clear_old_points:
        raise ValueError("box with clear_old_points=False: a box must come before any click; "
                         "pass clear_old_points=True")
      b = self._user_box(state, box, normalize_coords)
      coords = np.concatenate([b, coords])
      labs = np.concatenate([np.array(prompts.BOX_LABELS, np.int32), labs])
    i = self._obj_id_to_idx(state, obj_id)
    o = state.objects[i]
    coords, labs = self._merge_points(o, frame_idx, coords, labs, clear_old_points)
    o.point_inputs[frame_idx] = (coords, labs)
    o.mask_inputs.pop(frame_idx, None)
    is_init, reverse = self._frame_status(o, frame_idx)
    prev = self._previous_output(o, frame_idx, is_init)
    prev_logits = None
    if prev is not None:
      prev_logits = jnp.clip(prev["low_res"], -PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
    out = self._decode(state, o, frame_idx, is_init, reverse, (coords, labs), prev_logits)
    return self._store_temp(state, o, frame_idx, is_init, out)

  def add_new_points_and_generate_gaussian_mask(self, state: InferenceState, frame_idx: int,
                                                obj_id, points, labels, radius: int = 5,
                                                sigma: float = 2.0,
                                                clear_old_points: bool = True,
                                                normalize_coords: bool = True):
    """Point task: one click -> its Gaussian heatmap (radius, sigma at model resolution); the
    heatmap is the frame's output and, with the click, makes the object pointer."""
    if self.task != "point":
      raise ValueError(f"add_new_points_and_generate_gaussian_mask is for the point task; "
                       f"this predictor's task is {self.task!r} (use add_new_points_or_box "
                       f"or add_new_mask)")
    frame_idx = prompts.check_frame_index(frame_idx, state.num_frames)
    coords, labs = self._user_points(state, points, labels, None, normalize_coords)
    if coords.shape[0] != 1:
      raise ValueError(f"points has {coords.shape[0]} points; the Gaussian heatmap is made "
                       "from exactly one point per call (call again with "
                       "clear_old_points=False to add more clicks)")
    i = self._obj_id_to_idx(state, obj_id)
    o = state.objects[i]
    heat = prompts.gaussian_point_mask(float(coords[0, 0]), float(coords[0, 1]),
                                       (self.image_size, self.image_size), int(radius),
                                       float(sigma))
    coords, labs = self._merge_points(o, frame_idx, coords, labs, clear_old_points)
    o.point_inputs[frame_idx] = (coords, labs)
    o.mask_inputs[frame_idx] = heat
    is_init, _ = self._frame_status(o, frame_idx)
    out = self._prompt_as_output(state, frame_idx, heat, (coords, labs))
    return self._store_temp(state, o, frame_idx, is_init, out)

  # ---------------------------------------------------------------------------------------------
  # propagation
  # ---------------------------------------------------------------------------------------------
  def propagate_in_video(self, state: InferenceState, start_frame_idx: int | None = None,
                         max_frame_num_to_track: int | None = None, reverse: bool = False,
                         with_info: bool = False) -> Iterator[tuple]:
    """Track every object; yields (frame_idx, obj_ids, masks [O,H,W] logits[, info]).

    Default start: the earliest conditioning frame. Forward: frames start..min(start+max,
    T-1); reverse: start down to max(start-max, 0) (nothing when start is 0). Conditioning
    frames yield their prompt outputs unchanged.
    """
    self._preflight(state)
    t_total = state.num_frames
    if start_frame_idx is None:
      start_frame_idx = min(f for o in state.objects for f in o.out["cond"])
    start = prompts.check_frame_index(start_frame_idx, t_total)
    n = t_total if max_frame_num_to_track is None else int(max_frame_num_to_track)
    if n < 0:
      raise ValueError(f"max_frame_num_to_track={max_frame_num_to_track}: give a number >= 0")
    if reverse:
      end = max(start - n, 0)
      order = range(start, end - 1, -1) if start > 0 else range(0)
    else:
      end = min(start + n, t_total - 1)
      order = range(start, end + 1)
    for f in order:
      todo = [i for i, o in enumerate(state.objects) if f not in o.out["cond"]]
      groups: dict = {}
      for i in todo:
        groups.setdefault(self._layout(state.objects[i], f, reverse, t_total), []).append(i)
      for layout, members in groups.items():
        outs = self._track(state, f, reverse, layout, members)
        for i, out in zip(members, outs):
          state.objects[i].out["non_cond"][f] = out
      for o in state.objects:
        o.tracked[f] = reverse
      masks, info = self._frame_result(state, [self._any_output(o, f) for o in state.objects])
      state.frame_info[f] = info
      ids = list(state.obj_ids)
      yield (f, ids, masks, info) if with_info else (f, ids, masks)

  # ---------------------------------------------------------------------------------------------
  # host-side bookkeeping
  # ---------------------------------------------------------------------------------------------
  def _obj_id_to_idx(self, state, obj_id) -> int:
    """Index of obj_id, registering a new object (allowed at any time, as the reference)."""
    if obj_id in state.obj_ids:
      return state.obj_idx(obj_id)
    state.obj_ids.append(obj_id)
    state.objects.append(_Object())
    return len(state.objects) - 1

  def _known_obj(self, state, obj_id) -> int:
    if obj_id not in state.obj_ids:
      raise ValueError(f"obj_id={obj_id!r} is not tracked in this session (known ids: "
                       f"{state.obj_ids}); pass one of them")
    return state.obj_idx(obj_id)

  @staticmethod
  def _frame_status(o: _Object, f: int):
    """(is_init_cond_frame, reverse flag of the pass that tracked it)."""
    if f in o.tracked:
      return False, bool(o.tracked[f])
    return True, False

  @staticmethod
  def _previous_output(o: _Object, f: int, is_cond: bool):
    key = "cond" if is_cond else "non_cond"
    for store in (o.temp[key], o.out["cond"], o.out["non_cond"]):
      if f in store:
        return store[f]
    return None

  @staticmethod
  def _any_output(o: _Object, f: int):
    return o.out["cond"].get(f, o.out["non_cond"].get(f))

  def _user_points(self, state, points, labels, box, normalize, allow_empty=False):
    """Validated clicks -> model-scale float32 [P,2], int32 [P] (P may be 0 with a box)."""
    if (points is None) != (labels is None):
      raise ValueError("points and labels must be given together (one label per point)")
    if points is None and box is None:
      raise ValueError("give points with labels, or a box")
    if points is None:
      return np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
    xy = np.asarray(points, np.float32).reshape(-1, 2) if np.size(points) else None
    lab = np.asarray(labels).reshape(-1)
    if xy is None:
      if allow_empty and lab.size == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
      raise ValueError("points is empty; give at least one (x, y) point")
    if lab.shape[0] != xy.shape[0]:
      raise ValueError(f"points has {xy.shape[0]} points but labels has {lab.shape[0]} "
                       "labels; give one label per point")
    if normalize:
      xy, lab = prompts.check_points(xy, lab, state.video_hw)
      return prompts.to_model_coords(xy, state.video_hw, self.image_size), lab
    xy, lab = prompts.check_points(xy, lab, (1, 1))
    return (xy * np.float32(self.image_size)).astype(np.float32), lab

  def _user_box(self, state, box, normalize):
    if normalize:
      b = prompts.check_box(box, state.video_hw)
      return prompts.box_to_points(b, state.video_hw, self.image_size)[0]
    b = prompts.check_box(box, (1, 1))
    return (b.reshape(2, 2) * np.float32(self.image_size)).astype(np.float32)

  @staticmethod
  def _merge_points(o, f, coords, labs, clear_old):
    if not clear_old and f in o.point_inputs:
      old_c, old_l = o.point_inputs[f]
      return np.concatenate([old_c, coords]), np.concatenate([old_l, labs])
    return coords, labs

  def _use_multimask(self, labels) -> bool:
    """Multimask output for 0..1 points (box task: a box-only prompt counts as 0 points).
    Applies to initial and tracked frames alike (multimask_output_for_tracking)."""
    if labels is None:
      n = 0
    elif self.task == "box" and np.all(labels > 1):
      n = 0
    elif self.task == "box" and not np.all(labels < 2):
      n = len(labels) - 2
    else:
      n = len(labels)
    return self.multimask_min_pt_num <= n <= self.multimask_max_pt_num

  def _store_temp(self, state, o, f, is_init, out):
    o.temp["cond" if is_init else "non_cond"][f] = out
    masks, info = self._consolidated(state, f, is_init)
    state.frame_info[f] = info
    return f, list(state.obj_ids), masks

  def _consolidated(self, state, f, is_cond):
    """Every object's latest output on frame f (temporary first), at video resolution."""
    return self._frame_result(state, [self._previous_output(o, f, is_cond)
                                      for o in state.objects])

  def _preflight(self, state):
    """Encode the memory of every temporary output and move it into the output store."""
    if not state.objects:
      raise ValueError("no object has a prompt yet; call add_new_mask, add_new_points_or_box "
                       "or add_new_points_and_generate_gaussian_mask first")
    for obj_id, o in zip(state.obj_ids, state.objects):
      for key in ("non_cond", "cond"):
        for f, out in o.temp[key].items():
          if out["maskmem"] is None:
            out = dict(out)
            feats = self._features(state, f)
            mem, pos = self._fn("memory")(self.params, feats["vision"], out["low_res"][None],
                                           out["score"][None])
            out["maskmem"] = mem[0]
            if state.maskmem_pos is None:
              state.maskmem_pos = pos
          o.out[key][f] = out
        o.temp[key].clear()
      if not o.out["cond"]:
        raise ValueError(f"object id {obj_id!r} has no prompt on any frame (only corrections); "
                         "add a mask, box or points for it first")
      for f in o.out["cond"]:
        o.out["non_cond"].pop(f, None)

  def _select_cond(self, f, cond: dict):
    """(selected, unselected) conditioning frames, the temporally closest ones first."""
    k = self.max_cond_frames_in_attn
    if k == -1 or len(cond) <= k:
      return sorted(cond), []
    sel = []
    before = [t for t in cond if t < f]
    after = [t for t in cond if t >= f]
    if before:
      sel.append(max(before))
    if after:
      sel.append(min(after))
    rest = sorted((t for t in cond if t not in sel), key=lambda t: abs(t - f))
    sel += rest[:k - len(sel)]
    return sorted(sel), sorted(t for t in cond if t not in sel)

  def _layout(self, o: _Object, f: int, reverse: bool, t_total: int):
    """Frames whose memories frame f attends to: (cond frames, spatial slot frames by distance
    1..num_maskmem-1, pointer slot frames by distance 1..max_ptrs-1); EMPTY where absent."""
    sel, unsel = self._select_cond(f, o.out["cond"])
    unsel = set(unsel)
    sign = -1 if reverse else 1
    have = lambda t: t in o.out["non_cond"] or t in unsel
    mem = tuple(f - d * sign if have(f - d * sign) else EMPTY
                for d in range(1, self.num_maskmem))
    ptr = [EMPTY] * (self.max_obj_ptrs - 1)
    for d in range(1, min(t_total, self.max_obj_ptrs)):
      t = f - d * sign
      if t < 0 or t >= t_total:
        break
      if have(t):
        ptr[d - 1] = t
    return tuple(sel), mem, tuple(ptr)

  def _track(self, state, f, reverse, layout, members):
    """Run the memory-conditioned step on frame f for objects sharing one memory layout."""
    sel, mem, ptr = layout
    objs = [state.objects[i] for i in members]
    get = lambda o, t: o.out["cond"].get(t, o.out["non_cond"].get(t))
    k = max(2, 1 << (len(sel) - 1).bit_length()) if sel else 2
    cond_frames = list(sel) + [EMPTY] * (k - len(sel))
    bank_in = self._bank_inputs(objs, get, cond_frames, mem, ptr)
    fn = self._fn("track", state.num_frames, False, False, True, True)
    res = fn(self.params, self._features(state, f), bank_in, state.maskmem_pos,
             jnp.int32(f), jnp.bool_(reverse), None, None, None)
    return self._split(res, len(objs))

  def _bank_inputs(self, objs, get, cond_frames, mem, ptr):
    """Per-slot per-object arrays (zeros for empty slots) plus slot frame indices."""
    hw = (self.image_size // 16) ** 2
    z_mem = jnp.zeros((hw, self.mem_dim), jnp.bfloat16)
    z_ptr = jnp.zeros((self.hidden_dim,), jnp.float32)
    slot = lambda t, key, z: tuple(z if t == EMPTY else get(o, t)[key] for o in objs)
    return {
        "cond_feats": tuple(slot(t, "maskmem", z_mem) for t in cond_frames),
        "cond_ptr": tuple(slot(t, "obj_ptr", z_ptr) for t in cond_frames),
        "cond_frame": np.asarray(cond_frames, np.int32),
        "mem_feats": tuple(slot(t, "maskmem", z_mem) for t in mem),
        "mem_frame": np.asarray(mem, np.int32),
        "ptr": tuple(slot(t, "obj_ptr", z_ptr) for t in ptr),
        "ptr_frame": np.asarray(ptr, np.int32),
    }

  def _decode(self, state, o, f, is_init, reverse, points, mask_prompt):
    """Decoder on a prompted frame: without memory (new conditioning frame) or with it."""
    labels = None if points is None else points[1]
    mm = self._use_multimask(labels)
    has_pts, has_mask = points is not None, mask_prompt is not None
    pts = None if points is None else jnp.asarray(points[0])[None]
    labs = None if points is None else jnp.asarray(points[1])[None]
    mp = None if mask_prompt is None else jnp.asarray(mask_prompt, jnp.float32)[None]
    feats = self._features(state, f)
    if is_init:
      fn = self._fn("track", state.num_frames, has_pts, has_mask, mm, False)
      res = fn(self.params, feats, None, None, jnp.int32(f), jnp.bool_(False), pts, labs, mp)
    else:
      layout = self._layout(o, f, reverse, state.num_frames)
      sel, mem, ptr = layout
      get = lambda ob, t: ob.out["cond"].get(t, ob.out["non_cond"].get(t))
      k = max(2, 1 << (len(sel) - 1).bit_length()) if sel else 2
      bank_in = self._bank_inputs([o], get, list(sel) + [EMPTY] * (k - len(sel)), mem, ptr)
      fn = self._fn("track", state.num_frames, has_pts, has_mask, mm, True)
      res = fn(self.params, feats, bank_in, state.maskmem_pos, jnp.int32(f),
               jnp.bool_(reverse), pts, labs, mp)
    out = self._split(res, 1)[0]
    out["maskmem"] = None
    return out

  def _prompt_as_output(self, state, f, mask_model, points):
    feats = self._features(state, f)
    pts = None if points is None else jnp.asarray(points[0])[None]
    labs = None if points is None else jnp.asarray(points[1])[None]
    res = self._fn("prompt", points is not None)(
        self.params, feats, jnp.asarray(mask_model, jnp.float32)[None], pts, labs)
    out = self._split(res, 1)[0]
    out["maskmem"] = None
    return out

  @staticmethod
  def _split(res, b):
    return [{k: (None if v is None else v[i]) for k, v in res.items()} for i in range(b)]

  def _frame_result(self, state, outs):
    """Objects' outputs (None = absent) -> video-res masks [O,H,W] (numpy) and the info dict."""
    s4 = self.image_size // 4
    low = jnp.stack([jnp.full((s4, s4), NO_OBJ_SCORE, jnp.float32) if o is None
                     else o["low_res"] for o in outs])
    score = jnp.stack([jnp.float32(NO_OBJ_SCORE) if o is None else o["score"] for o in outs])
    box = None
    if self.task == "box":
      box = jnp.stack([jnp.zeros((4,), jnp.float32) if o is None or o["box"] is None
                       else o["box"] for o in outs])
    r = self._fn("video", state.video_hw)(low, score, box)
    r = {k: np.asarray(v) for k, v in r.items()}
    masks = r.pop("masks")
    return masks, r

  # ---------------------------------------------------------------------------------------------
  # image features
  # ---------------------------------------------------------------------------------------------
  def _features(self, state: InferenceState, f: int) -> dict:
    """Frame f's features [1,...] (encoded with its chunk on a miss, then cached)."""
    cache = state.cached_features
    if f in cache:
      if self.max_cached_frames is not None:
        cache[f] = cache.pop(f)          # most recently used last
      return cache[f]
    c = self.encode_chunk
    i0 = (f // c) * c
    feats = encode_frames(self.model, self.params, state.images[i0:i0 + c], self.task, c)
    for j in range(feats["vision"].shape[0]):
      state.cached_features[i0 + j] = {k: feats[k][j:j + 1]
                                       for k in ("vision", "vision_pos", "s0", "s1")}
    if self.max_cached_frames is not None:
      keep = max(int(self.max_cached_frames), c)
      while len(state.cached_features) > keep:
        oldest = next(iter(state.cached_features))
        if i0 <= oldest < i0 + c:
          break
        del state.cached_features[oldest]
    return state.cached_features[f]

  # ---------------------------------------------------------------------------------------------
  # jitted steps (cached per static signature)
  # ---------------------------------------------------------------------------------------------
  def _fn(self, kind, *static):
    key = (kind,) + static
    if key not in self._fns:
      self._fns[key] = jax.jit(getattr(self, f"_build_{kind}")(*static))
    return self._fns[key]

  def _apply(self, params, method, *args, **kw):
    return self.model.apply({"params": params}, *args, method=method, **kw)

  @staticmethod
  def _pack(o) -> dict:
    return {"low_res": o["low_res_masks"], "score": o["object_score_logits"][:, 0],
            "obj_ptr": o["obj_ptr"], "box": o["boxes"]}

  def _build_prompt(self, has_points):
    """Mask / point task: the prompt is the output; one decoder call for the pointer."""
    task = self.task

    def run(params, feats, mask, pts, labs):
      b = mask.shape[0]
      bc = lambda x: jnp.broadcast_to(x, (b,) + x.shape[1:])
      o = self._apply(params, "prompt_as_output", bc(feats["vision"]), bc(feats["s0"]),
                      bc(feats["s1"]), mask, pts if has_points else None,
                      labs if has_points else None, task=task)
      return self._pack(o)
    return run

  def _build_track(self, num_frames, has_points, has_mask, multimask, use_memory):
    """One frame through memory attention (or no-memory embedding) + decoder (+ memory)."""
    task = self.task
    run_mem = use_memory and not has_points and not has_mask   # propagation step

    def run(params, feats, bank_in, mem_pos, t, reverse, pts, labs, mask_prompt):
      b = (pts.shape[0] if has_points else mask_prompt.shape[0] if has_mask
           else len(bank_in["cond_ptr"][0]))
      bc = lambda x: jnp.broadcast_to(x, (b,) + x.shape[1:])
      vision, vpos, s0, s1 = (bc(feats[k]) for k in ("vision", "vision_pos", "s0", "s1"))
      if use_memory:
        bank = _make_bank(bank_in, mem_pos)
        tpos = params["maskmem_tpos_enc"][:, 0, 0]
        ptr_pe = lambda rel, tdm: self._apply(params, "obj_ptr_pos_encoding", rel, tdm)
        memory, mpos, mmask = bank.select(t, num_frames, tpos, ptr_pe, reverse=reverse)
        pix = self._apply(params, "condition_on_memory", vision, vpos, memory, mpos, mmask,
                          task=task, num_obj_ptr_tokens=bank.num_ptr_tokens)
      else:
        pix = self._apply(params, "no_memory_features", vision)
      mp = mask_prompt[..., None] if has_mask else None
      o = self._apply(params, "sam_heads", pix, s0, s1, pts if has_points else None,
                      labs if has_points else None, mp, task=task, multimask_output=multimask)
      out = self._pack(o)
      if run_mem:
        high = self._apply(params, "upsample_to_image", o["low_res_masks"])
        feats_m, _ = self._apply(params, "encode_memory", vision, high,
                                 o["object_score_logits"], task=task)
        out["maskmem"] = feats_m.reshape(b, -1, feats_m.shape[-1]).astype(jnp.bfloat16)
      return out
    return run

  def _build_memory(self):
    """Memory of prompted frames at consolidation: low-res logits upsampled to SxS."""
    task = self.task

    def run(params, vision, low_res, score):
      high = self._apply(params, "upsample_to_image", low_res)
      feats, pos = self._apply(params, "encode_memory", vision, high, score[:, None], task=task)
      hw = feats.shape[1] * feats.shape[2]
      return (feats.reshape(feats.shape[0], hw, -1).astype(jnp.bfloat16),
              pos[0].reshape(hw, -1))
    return run

  def _build_video(self, video_hw):
    """Low-res logits -> video-res logits (+ visibility, boxes in px, the point readout)."""
    h, w = video_hw
    task, readout = self.task, self.point_readout

    def run(low, score, box):
      masks = resize_bilinear(low[..., None], (h, w))[..., 0]
      out = {"masks": masks, "low_res_masks": low, "object_score_logits": score,
             "visible": score > 0}
      if task == "box":
        out["boxes_xyxy_norm"] = box
        out["boxes_xyxy"] = box * jnp.asarray([w, h, w, h], jnp.float32)
      if task == "point":
        out["points_xy"] = read_points(readout, low, masks, self.image_size, (h, w))
      return out
    return run


def _make_bank(bank_in: dict, mem_pos) -> MemoryBank:
  """Stack per-slot, per-object arrays into a fixed-shape MemoryBank (inside jit)."""
  stack = lambda slots, dt: jnp.stack([jnp.stack(objs) for objs in slots], axis=1).astype(dt)
  cond = stack(bank_in["cond_feats"], jnp.float32)
  mem = stack(bank_in["mem_feats"], jnp.float32)
  return MemoryBank(
      cond_feats=cond, cond_pos=jnp.broadcast_to(mem_pos, cond.shape),
      cond_ptr=stack(bank_in["cond_ptr"], jnp.float32),
      cond_frame=jnp.asarray(bank_in["cond_frame"], jnp.int32),
      mem_feats=mem, mem_pos=jnp.broadcast_to(mem_pos, mem.shape),
      mem_frame=jnp.asarray(bank_in["mem_frame"], jnp.int32),
      ptr=stack(bank_in["ptr"], jnp.float32),
      ptr_frame=jnp.asarray(bank_in["ptr_frame"], jnp.int32))


__all__ = ["VideoPredictor", "InferenceState"]
