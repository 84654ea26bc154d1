"""`VideoPredictor`: SAM 2's interactive API over one session's host state.

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

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.model.sam2pp import NO_OBJ_SCORE
from sam2pp_jax.tracking import prompts
from sam2pp_jax.tracking.memory import MemoryPolicy, get_policy
from sam2pp_jax.tracking.memory.policy import RELEASED
from sam2pp_jax.tracking.point_readout import check_readout
from sam2pp_jax.tracking.postprocess import video_outputs
from sam2pp_jax.tracking.predictor import inputs, layout, pathways
from sam2pp_jax.tracking.predictor.state import InferenceState
from sam2pp_jax.tracking.predictor.steps import frame_step, prompt_memory
from sam2pp_jax.tracking.propagate import encode_frames, encode_mode
from sam2pp_jax.tracking.step import FEATURE_KEYS, FramePrompt, count_clicks, use_multimask

PREV_LOGIT_CLAMP = 32.0  # previous logits fed back as a dense prompt are clamped to +-this


class VideoPredictor:
  """SAM 2-style interactive predictor for one task ("mask" | "box" | "point").

  model: a SAM2Plus module; params: its parameter tree. encode_chunk: frames encoded per
  image-encoder call on a cache miss (features cached per frame; None: 1 on CPU, where a batch
  costs more per frame and a prompt would wait for its whole chunk, 4 elsewhere);
  propagate_chunk: frames per compiled propagation call; max_cached_frames: keep at most this many
  frames' features (None = all). max_cond_frames_in_attn: None = the model config's value
  (-1 = all conditioning frames). point_readout: "argmax" (the reference's) or "soft_argmax"
  (the training readout, sub-pixel; see point_readout.py).
  """

  def __init__(
    self,
    model,
    params,
    task: str,
    *,
    encode_chunk: int | None = None,
    propagate_chunk: int = 4,
    max_cached_frames: int | None = None,
    max_cond_frames_in_attn: int | None = None,
    point_readout: str = "argmax",
    memory: MemoryPolicy | str = "sam2",
  ):
    if task not in TASKS:
      raise ValueError(f"task={task!r} is unknown; use one of {', '.join(TASKS)}")
    self.point_readout = check_readout(point_readout)
    self.memory = get_policy(memory) if isinstance(memory, str) else memory
    c = model.config
    self.memory.check_model(c)
    self.model, self.params, self.task = model, params, task
    self.image_size = int(c.image_size)
    self.hidden_dim, self.mem_dim = int(c.hidden_dim), int(c.mem_dim)
    self.num_maskmem = int(c.num_maskmem)
    self.max_obj_ptrs = int(c.max_obj_ptrs_in_encoder)
    mc = c.max_cond_frames_in_attn if max_cond_frames_in_attn is None else max_cond_frames_in_attn
    self.max_cond_frames_in_attn = int(mc)
    if self.max_cond_frames_in_attn not in (-1,) and self.max_cond_frames_in_attn < 2:
      raise ValueError(f"max_cond_frames_in_attn={mc}: use -1 (all) or at least 2")
    if encode_chunk is None:
      encode_chunk = 1 if encode_mode("auto") == "frame" else 4  # track_video's per-backend rule
    for name, v in (("encode_chunk", encode_chunk), ("propagate_chunk", propagate_chunk)):
      if int(v) < 1:
        raise ValueError(f"{name}={v}: use at least 1")
    self.encode_chunk = int(encode_chunk)
    self.propagate_chunk = int(propagate_chunk)
    self.max_cached_frames = max_cached_frames

  # ---------------------------------------------------------------------------------------------
  # session
  # ---------------------------------------------------------------------------------------------
  def init_state(self, video, video_hw=None) -> InferenceState:
    """A new session. video: a frame folder / video file path, a `VideoFrames`, uint8 RGB
    frames [T,H,W,3], or already preprocessed float32 [T,S,S,3] (then video_hw=(H, W) is
    required). Frame 0 is encoded at once (warm-up), other frames lazily in chunks."""
    images, hw = inputs.session_video(video, self.image_size, video_hw)
    state = InferenceState(images, hw)
    self._features(state, 0)
    return state

  def reset_state(self, state: InferenceState) -> None:
    """Drop every object, prompt and output (cached image features are kept)."""
    state.obj_ids.clear()
    state.objects.clear()
    state.frame_info.clear()

  def remove_object(
    self, state: InferenceState, obj_id, strict: bool = True, need_output: bool = True
  ):
    """Remove an object. Returns (remaining obj_ids, [(frame_idx, masks [O,H,W])] for the
    frames where it had prompts). Unknown obj_id: ValueError (strict) or a no-op."""
    if obj_id not in state.obj_ids and not strict:
      return list(state.obj_ids), []
    i = state.known_obj(obj_id)
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
    o = state.objects[state.known_obj(obj_id)]
    for store, is_cond in (
      (o.temp["cond"], True),
      (o.temp["non_cond"], False),
      (o.out["cond"], True),
      (o.out["non_cond"], False),
    ):
      if frame_idx in store:
        r = {
          k: None if v is None else np.asarray(v, np.float32) for k, v in store[frame_idx].items()
        }
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
    self._refuse_prompt(state, obj_id, frame_idx)
    m = prompts.check_mask(mask, state.video_hw)
    o = state.objects[state.obj_or_new(obj_id)]
    m_model = prompts.mask_to_model_res(m, self.image_size).astype(np.float32)
    o.mask_inputs[frame_idx] = m_model
    o.point_inputs.pop(frame_idx, None)
    is_init, reverse = o.status(frame_idx)
    if self.task == "mask":
      out = self._prompt_as_output(state, frame_idx, m_model, None)
    else:
      out = self._decode(state, o, frame_idx, is_init, reverse, None, m_model)
    return self._store_temp(state, o, frame_idx, is_init, out)

  def add_new_points_or_box(
    self,
    state: InferenceState,
    frame_idx: int,
    obj_id,
    points=None,
    labels=None,
    clear_old_points: bool = True,
    normalize_coords: bool = True,
    box=None,
  ):
    """Clicks (labels 1 positive / 0 negative) and/or a box (x0, y0, x1, y1) for one object.

    Coordinates are video pixels (normalize_coords=True) or already in [0, 1]. A box becomes
    two points with labels 2, 3 placed before the clicks. On a frame already tracked, the
    clicks correct the tracked mask. Not available in the point task (the reference's point
    task needs the Gaussian heatmap: use add_new_points_and_generate_gaussian_mask).
    """
    if self.task == "point":
      raise ValueError(
        "add_new_points_or_box is not available in the point task (the "
        "reference requires the Gaussian heatmap with every click); use "
        "add_new_points_and_generate_gaussian_mask"
      )
    frame_idx = prompts.check_frame_index(frame_idx, state.num_frames)
    self._refuse_prompt(state, obj_id, frame_idx)
    coords, labs = inputs.user_points(
      points,
      labels,
      state.video_hw,
      self.image_size,
      normalize_coords,
      box,
      allow_empty=box is not None,
    )
    if box is not None:
      if not clear_old_points:
        raise ValueError(
          "box with clear_old_points=False: a box must come before any click; "
          "pass clear_old_points=True"
        )
      b = inputs.user_box(box, state.video_hw, self.image_size, normalize_coords)
      coords = np.concatenate([b, coords])
      labs = np.concatenate([np.array(prompts.BOX_LABELS, np.int32), labs])
    o = state.objects[state.obj_or_new(obj_id)]
    coords, labs = o.merge_points(frame_idx, coords, labs, clear_old_points)
    o.point_inputs[frame_idx] = (coords, labs)
    o.mask_inputs.pop(frame_idx, None)
    is_init, reverse = o.status(frame_idx)
    prev = o.previous_output(frame_idx, is_init)
    prev_logits = None
    if prev is not None:
      prev_logits = jnp.clip(prev["low_res"], -PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
    out = self._decode(state, o, frame_idx, is_init, reverse, (coords, labs), prev_logits)
    return self._store_temp(state, o, frame_idx, is_init, out)

  def add_new_points_and_generate_gaussian_mask(
    self,
    state: InferenceState,
    frame_idx: int,
    obj_id,
    points,
    labels,
    radius: int = 5,
    sigma: float = 2.0,
    clear_old_points: bool = True,
    normalize_coords: bool = True,
  ):
    """Point task: one click -> its Gaussian heatmap (radius, sigma at model resolution); the
    heatmap is the frame's output and, with the click, makes the object pointer."""
    if self.task != "point":
      raise ValueError(
        f"add_new_points_and_generate_gaussian_mask is for the point task; "
        f"this predictor's task is {self.task!r} (use add_new_points_or_box "
        f"or add_new_mask)"
      )
    frame_idx = prompts.check_frame_index(frame_idx, state.num_frames)
    self._refuse_prompt(state, obj_id, frame_idx)
    coords, labs = inputs.user_points(
      points, labels, state.video_hw, self.image_size, normalize_coords
    )
    if coords.shape[0] != 1:
      raise ValueError(
        f"points has {coords.shape[0]} points; the Gaussian heatmap is made "
        "from exactly one point per call (call again with "
        "clear_old_points=False to add more clicks)"
      )
    o = state.objects[state.obj_or_new(obj_id)]
    heat = prompts.gaussian_point_mask(
      float(coords[0, 0]),
      float(coords[0, 1]),
      (self.image_size, self.image_size),
      int(radius),
      float(sigma),
    )
    coords, labs = o.merge_points(frame_idx, coords, labs, clear_old_points)
    o.point_inputs[frame_idx] = (coords, labs)
    o.mask_inputs[frame_idx] = heat
    is_init, _ = o.status(frame_idx)
    out = self._prompt_as_output(state, frame_idx, heat, (coords, labs))
    return self._store_temp(state, o, frame_idx, is_init, out)

  # ---------------------------------------------------------------------------------------------
  # propagation
  # ---------------------------------------------------------------------------------------------
  def propagate_in_video(
    self,
    state: InferenceState,
    start_frame_idx: int | None = None,
    max_frame_num_to_track: int | None = None,
    reverse: bool = False,
    with_info: bool = False,
  ) -> Iterator[tuple]:
    """Track every object; yields (frame_idx, obj_ids, masks [O,H,W] logits[, info]).

    Default start: the earliest conditioning frame. Forward: frames start..min(start+max,
    T-1); reverse: start down to max(start-max, 0) (nothing when start is 0). Conditioning
    frames yield their prompt outputs unchanged. A policy with several rows per object
    (SAM2Long) tracks the whole range first, then yields (predictor/pathways.py).
    """
    if self.memory.rows_per_object > 1:
      yield from pathways.propagate_whole_video(
        self, state, start_frame_idx, max_frame_num_to_track, reverse, with_info
      )
      return
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
      for lay, members in groups.items():
        outs = self._step(
          state,
          f,
          reverse,
          lay,
          [state.objects[i] for i in members],
          None,
          multimask=True,
          encode_memory=True,
        )
        for i, out in zip(members, outs):
          state.objects[i].out["non_cond"][f] = out
      for o in state.objects:
        o.tracked[f] = reverse
      masks, info = self._frame_result(state, [o.stored_output(f) for o in state.objects])
      state.frame_info[f] = info
      ids = list(state.obj_ids)
      yield (f, ids, masks, info) if with_info else (f, ids, masks)

  # ---------------------------------------------------------------------------------------------
  # host-side bookkeeping
  # ---------------------------------------------------------------------------------------------
  def _refuse_prompt(self, state, obj_id, frame_idx: int) -> None:
    """A prompt the memory policy cannot take, refused before anything is stored: on a frame
    this object was already tracked on (a correction), or (a one-prompt-frame policy, DAM4SAM)
    on a frame other than the one where the objects' prompts are."""
    self._refuse_correction(state, obj_id, frame_idx)
    if not self.memory.one_prompt_frame:
      return
    others = {f for o in state.objects for f in (*o.point_inputs, *o.mask_inputs)}
    others = sorted(others - {frame_idx})
    if others:
      raise ValueError(
        f"memory={self.memory.name!r} tracks every object from one prompted frame: the "
        f"prompts are on frame {others[0]}, so object {obj_id!r} cannot be prompted on frame "
        f"{frame_idx}; prompt it on frame {others[0]}, call reset_state to start on another "
        "frame, or use memory='sam2' or 'samurai' for prompts on several frames"
      )

  def _refuse_correction(self, state, obj_id, frame_idx: int) -> None:
    """A prompt on a frame this object was already tracked on, under a memory policy that
    cannot take one: refused before anything is stored on the object."""
    if obj_id not in state.obj_ids:
      return
    o = state.objects[state.obj_idx(obj_id)]
    if frame_idx not in o.tracked:
      return
    name = self.memory.name
    if self.memory.rows_per_object > 1:
      raise ValueError(
        f"memory={name!r} cannot correct frame {frame_idx} of object {obj_id!r}: its memory "
        "pathways are resolved only after the last frame, so a tracked frame has no pathway to "
        "edit; call reset_state and prompt again, or use memory='sam2' or 'samurai' for "
        "interactive corrections"
      )
    if not self.memory.corrections:
      raise ValueError(
        f"memory={name!r} cannot correct frame {frame_idx} of object {obj_id!r}: it builds its "
        "memory frame by frame from the prompt frame (corrections on tracked frames are not "
        "supported); call reset_state and prompt again, or use memory='sam2' or 'samurai' for "
        "interactive corrections"
      )

  def _layout(self, o, f, reverse, t_total):
    return layout.memory_layout(
      o,
      f,
      reverse,
      t_total,
      num_maskmem=self.num_maskmem,
      max_obj_ptrs=self.max_obj_ptrs,
      max_cond=self.max_cond_frames_in_attn,
      memory=self.memory,
    )

  def _step(self, state, f, reverse, lay, objs, prompt, *, multimask, encode_memory):
    """track_step on frame f for objects sharing one memory layout (None: no memory)."""
    slots = None
    if lay is not None:
      slots = layout.bank_slots(
        objs, lay, (self.image_size // 16) ** 2, self.mem_dim, self.hidden_dim
      )
    route = "no_memory" if lay is None else "memory"
    # prompt frames of a several-rows policy (SAM2Long) decode as SAM 2 does, one row each
    memory = RELEASED if self.memory.rows_per_object > 1 else self.memory
    res = frame_step(
      self.model,
      self.params,
      self._features(state, f),
      slots,
      state.maskmem_pos,
      jnp.int32(f),
      jnp.bool_(reverse),
      prompt,
      task=self.task,
      route=route,
      multimask=bool(multimask),
      num_frames=state.num_frames,
      encode_memory=encode_memory,
      memory=memory,
      policy_state=_stack_states(
        [memory.init_state(1) if o.policy_state is None else o.policy_state for o in objs]
      ),
    )
    outs, states = _split(res, len(objs))
    for o, st in zip(objs, states):
      o.policy_state = st  # the policy's per-object state follows the latest step
    return outs

  def _decode(self, state, o, f, is_init, reverse, points, mask_prompt):
    """Decoder on a prompted frame: without memory (new conditioning frame) or with it."""
    labels = np.zeros((0,), np.int32) if points is None else points[1]
    mm = use_multimask(count_clicks(labels, self.task), self.model.config)
    prompt = _frame_prompt(points, mask_prompt)
    lay = None if is_init else self._layout(o, f, reverse, state.num_frames)
    out = self._step(state, f, reverse, lay, [o], prompt, multimask=mm, encode_memory=False)[0]
    out["maskmem"] = None
    return out

  def _prompt_as_output(self, state, f, mask_model, points):
    res = frame_step(
      self.model,
      self.params,
      self._features(state, f),
      None,
      None,
      jnp.int32(f),
      jnp.bool_(False),
      _frame_prompt(points, mask_model),
      task=self.task,
      route="prompt_as_output",
      multimask=False,
      num_frames=state.num_frames,
      encode_memory=False,
    )
    out = _split(res, 1)[0][0]
    out["maskmem"] = None
    return out

  def _store_temp(self, state, o, f, is_init, out):
    o.temp["cond" if is_init else "non_cond"][f] = out
    masks, info = self._consolidated(state, f, is_init)
    state.frame_info[f] = info
    return f, list(state.obj_ids), masks

  def _consolidated(self, state, f, is_cond):
    """Every object's latest output on frame f (temporary first), at video resolution."""
    return self._frame_result(state, [o.previous_output(f, is_cond) for o in state.objects])

  def _preflight(self, state):
    """Encode the memory of every temporary output and move it into the output store."""
    if not state.objects:
      raise ValueError(
        "no object has a prompt yet; call add_new_mask, add_new_points_or_box "
        "or add_new_points_and_generate_gaussian_mask first"
      )
    for obj_id, o in zip(state.obj_ids, state.objects):
      for key in ("non_cond", "cond"):
        for f, out in o.temp[key].items():
          if out["maskmem"] is None:
            out = dict(out)
            feats = self._features(state, f)
            mem, pos = prompt_memory(
              self.model,
              self.params,
              feats["vision"],
              out["low_res"][None],
              out["score"][None],
              task=self.task,
              binarize=key == "cond" and self.memory.binarize_prompt_memory,
            )
            out["maskmem"] = mem[0]
            if state.maskmem_pos is None:
              state.maskmem_pos = pos
          o.out[key][f] = out
        o.temp[key].clear()
      if not o.out["cond"]:
        raise ValueError(
          f"object id {obj_id!r} has no prompt on any frame (only corrections); "
          "add a mask, box or points for it first"
        )
      for f in o.out["cond"]:
        o.out["non_cond"].pop(f, None)

  def _frame_result(self, state, outs):
    """Objects' outputs (None = absent) -> video-res masks [O,H,W] (numpy) and the info dict."""
    s4 = self.image_size // 4
    low = jnp.stack(
      [jnp.full((s4, s4), NO_OBJ_SCORE, jnp.float32) if o is None else o["low_res"] for o in outs]
    )
    score = np.asarray(
      jnp.stack([jnp.float32(NO_OBJ_SCORE) if o is None else o["score"] for o in outs])
    )
    r = video_outputs(
      low,
      video_hw=state.video_hw,
      task=self.task,
      readout=self.point_readout,
      image_size=self.image_size,
    )
    info = {"low_res_masks": np.asarray(low), "object_score_logits": score, "visible": score > 0}
    if self.task == "box":
      box = np.stack(
        [
          np.zeros((4,), np.float32)
          if o is None or o["box"] is None
          else np.asarray(o["box"], np.float32)
          for o in outs
        ]
      )
      h, w = state.video_hw
      info["boxes_xyxy_norm"] = box
      info["boxes_xyxy"] = box * np.asarray([w, h, w, h], np.float32)
    if self.task == "point":
      info["points_xy"] = np.asarray(r["points_xy"])
    return np.asarray(r["masks"]), info

  # ---------------------------------------------------------------------------------------------
  # image features
  # ---------------------------------------------------------------------------------------------
  def _features(self, state: InferenceState, f: int) -> dict:
    """Frame f's features [1,...] (encoded with its chunk on a miss, then cached)."""
    cache = state.cached_features
    if f in cache:
      if self.max_cached_frames is not None:
        cache[f] = cache.pop(f)  # most recently used last
      return cache[f]
    c = self.encode_chunk
    i0 = (f // c) * c
    feats = encode_frames(self.model, self.params, state.images[i0 : i0 + c], self.task, c)
    for j in range(feats["vision"].shape[0]):
      cache[i0 + j] = {k: feats[k][j : j + 1] for k in FEATURE_KEYS}
    if self.max_cached_frames is not None:
      keep = max(int(self.max_cached_frames), c)
      while len(cache) > keep:
        oldest = next(iter(cache))
        if i0 <= oldest < i0 + c:
          break
        del cache[oldest]
    return cache[f]


def _frame_prompt(points, mask) -> FramePrompt:
  """One object's host prompt ((coords [P,2], labels [P]) or None; mask or None) as a batch."""
  arr = lambda x, dt=None: None if x is None else jnp.asarray(x, dt)[None]
  return FramePrompt(
    point_coords=None if points is None else arr(points[0]),
    point_labels=None if points is None else arr(points[1]),
    mask=arr(mask, jnp.float32),
  )


def _split(res: dict, b: int) -> tuple[list[dict], list]:
  """Batched step results -> per-object stored outputs and per-object policy states."""
  res = dict(res)
  st = res.pop("policy_state")
  outs = [{k: (None if v is None else v[i]) for k, v in res.items()} for i in range(b)]
  states = [None if st is None else jax.tree.map(lambda a, i=i: a[i : i + 1], st) for i in range(b)]
  return outs, states


def _stack_states(states: list):
  """Per-object policy states (batch 1 each) -> one batched state (None: stateless policy)."""
  if any(s is None for s in states):
    return None
  return jax.tree.map(lambda *a: jnp.concatenate(a), *states)
