"""DAM4SAM (Videnovic et al. 2025): a distractor-aware memory, with the fixed capacities of its
multi-object port d4sm. Read for the math only (see dam4sam_rules.py for the sources D and M):
D = github:jovanavidenovic/DAM4SAM 9c95450, M = github:alanlukezic/d4sm 67d5dfe.

Besides the prompt frame (conditioning slot 0), each object keeps a list of at most
max_ram + max_drm memories in ring slots 0 .. max_ram + max_drm - 1, each slot a RAM (recent
appearance) or DRM (distractor-resolving) entry, with its list position in the policy state.
Tracked frame t (counted from the prompt frame, M's frame_index), per object, as M:440-576:
  1. A frame admitted at t - 1 turns from RAM into DRM in place, visible or not at t; above
     max_drm DRM entries the oldest one is dropped.
  2. The candidate is the argmax predicted IoU. Only if its mask is non-empty (visible): no
     RAM entry yet, or the newest RAM entry's frame a multiple of update_delta -> a new RAM
     entry at the end of the list, else the newest RAM entry is overwritten in place; a full
     list (max_ram + max_drm entries, M's len > num_maskmem) drops its oldest RAM entry, so
     RAM borrows free DRM places. Invisible frames write nothing.
  3. dam4sam_rules.admit, the "d4sm" variant (sizes pushed only when visible, inclusive
     boxes): max IoU > iou_threshold, size ratio to the median of recent sizes in
     [area_ratio_low, area_ratio_high], more than update_delta frames since the last
     admission, and some alternative candidate's largest connected component outside the
     chosen mask moves the box (IoU <= distractor_box_iou). The component labelling runs on
     the host inside the scan (`jax.pure_callback`, OpenCV), only on frames where some object
     passed the other tests. An admitted frame is the newest RAM entry, so it becomes DRM at
     the next frame (1.), M's add_to_drm_next.
Read (view): every list entry; DRM entries at the conditioning frames' temporal row
num_maskmem - 1, a RAM entry at row = the number of entries after it in the list (M's
sam2_base.py:717-724). Pointers (M:457-470, M sam2_base.py:726-739): the pointers of the last
P = max_obj_ptrs_in_encoder - 1 frames where the object was visible (M stores none for the
others), each in the pointer ring slot of its visible-frame count (the policy's own pointer
writes), at position 1 + its rank from the newest, the prompt frame's at t; all divided by the
number of listed pointers besides the prompt's (at least 1), not by min(T, max_obj_ptrs) - 1.
The prompt frame's memory is encoded from its mask binarised (logits > 0; M:306-329 encodes
the upsampled low-res mask with is_mask_from_pts=True and binarize_mask_from_pts_for_mem_enc),
in track_video and in VideoPredictor alike (binarize_prompt_memory).

Where the variants differ, d4sm is followed (one list per object with fixed capacities,
updates only when visible, its pointer list), except: M's use_last=False branch is not
offered. Masks are tested at model resolution (the candidates' S x S logits > 0) without hole
filling, not at video resolution after filling holes of up to 8 px.

Frames are counted in clip frames from the prompt frame in the tracking direction: the state's
frames (list, pointer list, sizes) and its arithmetic (update_delta spacing, the RAM chain) see
t = (video frame - origin) * step, origin the prompt frame and step +1 forward / -1 reverse
(track_video: 0 and +1, its clip frames being counted already). In VideoPredictor every object
is prompted on one frame k and propagate_in_video tracks forward or in reverse from k (also
with max_frame_num_to_track, or continuing a pass where it stopped): each pass from k restarts
the state from the prompt frame's (a reverse pass after a forward one does not continue it),
so its outputs equal track_video(prompt_frame=k, reverse=...) on the same video and prompt.
D and M track forward only; reverse tracking is ours, track_video(reverse=True) (the frames
k, k-1, .., 0 tracked as a forward clip). Prompts on a second frame and prompts on frames the
object was already tracked on (corrections) are refused before anything is stored.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.tracking.memory import dam4sam_rules as rules
from sam2pp_jax.tracking.memory.policy import MemoryPolicy, pick, take
from sam2pp_jax.tracking.memory_bank import EMPTY, MemoryView

FREE, RAM, DRM = 0, 1, 2  # kind of a list slot
MAX_PTR_SLOTS = 32  # pointer list entries the state keeps (init_state cannot see the bank's P)
_BIG = jnp.iinfo(jnp.int32).max


@flax.struct.dataclass
class Dam4samState:
  """Per object [B,...]: each list slot's kind [B,N] (FREE / RAM / DRM), list position key
  order [B,N] (larger = later) and frame [B,N] (EMPTY when free), N = max_ram + max_drm;
  pending [B] (the newest entry becomes DRM at the next frame); this frame's ring slot [B]
  (-1: not written); the last frame chosen for [B]; the pointer list: the frames of the
  object's visible tracked frames, newest first, ptr_list [B,MAX_PTR_SLOTS] (EMPTY-padded),
  and their count n_ptr [B] (the k-th one's pointer is in pointer ring slot k % P); this
  frame's pointer ring slot pslot [B] (-1: not written); the admission test's size history;
  origin [B] and step [B]: tracked video frame f is clip frame (f - origin) * step, the frame
  every other field counts in (0 and +1 in track_video; the prompt frame and the direction in
  VideoPredictor)."""

  kind: jax.Array
  order: jax.Array
  frame: jax.Array
  pending: jax.Array
  slot: jax.Array
  last: jax.Array
  ptr_list: jax.Array
  n_ptr: jax.Array
  pslot: jax.Array
  history: rules.DrmHistory
  origin: jax.Array
  step: jax.Array


def _newest(order, where):
  """Slot with the largest list key among `where` [B,N] -> [B] (0 when none)."""
  return jnp.argmax(jnp.where(where, order, -1), axis=-1).astype(jnp.int32)


def _oldest(order, where):
  return jnp.argmin(jnp.where(where, order, _BIG), axis=-1).astype(jnp.int32)


def _at(index, n):
  return index[:, None] == jnp.arange(n)


@dataclasses.dataclass(frozen=True)
class DAM4SAM(MemoryPolicy):
  """DAM4SAM's memory with d4sm's capacities (M:155-158) and DAM4SAM's admission thresholds
  (D:211-254, the same in M); see the module docstring."""

  name: ClassVar[str] = "dam4sam"
  needs_candidates: ClassVar[bool] = True
  binarize_prompt_memory: ClassVar[bool] = True  # M:316-329, is_mask_from_pts=True
  corrections: ClassVar[bool] = False  # the lists are built frame by frame from the prompt
  one_prompt_frame: ClassVar[bool] = True  # ... counting frames from the one prompted frame

  update_delta: int = 5  # RAM chain stride and minimum admission spacing (D and M: 5)
  max_ram: int = 3  # RAM entries kept when the list is full (M: 3)
  max_drm: int = 3  # DRM entries kept (M: 3; D reads the 3 newest); 0: no admission
  iou_threshold: float = rules.IOU_MIN  # admission: max predicted IoU > this (0.8)
  area_ratio_low: float = rules.AREA_RATIO[0]  # admission: size / median >= this (0.8)
  area_ratio_high: float = rules.AREA_RATIO[1]  # admission: size / median <= this (1.2)
  median_of: int = rules.MEDIAN_OF  # newest non-empty sizes in the median (10)
  size_window: int = rules.SIZE_WINDOW  # size entries searched for them (300)
  distractor_box_iou: float = rules.DISTRACTOR_BOX_IOU_MAX  # admission: some box IoU <= (0.7)

  def __post_init__(self):
    if self.max_ram < 1 or self.max_drm < 0 or self.update_delta < 1:
      raise ValueError(
        f"dam4sam needs max_ram >= 1, max_drm >= 0 and update_delta >= 1 (got max_ram="
        f"{self.max_ram}, max_drm={self.max_drm}, update_delta={self.update_delta})"
      )

  @property
  def capacity(self) -> int:
    """List entries besides the prompt frame (d4sm: num_maskmem - 1 = 6)."""
    return int(self.max_ram) + int(self.max_drm)

  def _check_ring(self, r: int):
    if self.capacity > r:
      raise ValueError(
        f"dam4sam: max_ram + max_drm = {self.capacity} memories do not fit the model's "
        f"{r} ring slots (num_maskmem - 1); lower max_ram / max_drm"
      )

  def check_model(self, config) -> None:
    r = int(config.num_maskmem) - 1
    if self.capacity > r:
      raise ValueError(
        f"memory policy 'dam4sam': max_ram + max_drm = {self.capacity} memories do not fit "
        f"this model's {r} ring slots (num_maskmem - 1 = {r}); give max_ram + max_drm <= {r}, "
        f"e.g. --memory-opt max_ram={max(1, r - r // 2)} --memory-opt max_drm={r // 2}"
      )

  def init_state(self, batch: int, origin: int = 0, step: int = 1) -> Dam4samState:
    """A fresh state (the prompt frame's); origin / step: see Dam4samState."""
    n = self.capacity
    return Dam4samState(
      kind=jnp.zeros((batch, n), jnp.int32),
      order=jnp.zeros((batch, n), jnp.int32),
      frame=jnp.full((batch, n), EMPTY, jnp.int32),
      pending=jnp.zeros((batch,), bool),
      slot=jnp.full((batch,), -1, jnp.int32),
      last=jnp.zeros((batch,), jnp.int32),
      ptr_list=jnp.full((batch, MAX_PTR_SLOTS), EMPTY, jnp.int32),
      n_ptr=jnp.zeros((batch,), jnp.int32),
      pslot=jnp.full((batch,), -1, jnp.int32),
      history=rules.init_state(batch, int(self.size_window)),
      origin=jnp.full((batch,), origin, jnp.int32),
      step=jnp.full((batch,), step, jnp.int32),
    )

  # ------------------------------------------------------------------------------- choice
  def choose(self, state, out, cands, t, multimask):
    t = (jnp.asarray(t, jnp.int32) - state.origin) * state.step  # [B] clip frames
    ious = jnp.where(cands.valid, out.ious, -jnp.inf)
    index = jnp.argmax(ious, axis=-1).astype(jnp.int32)
    iou = take(out.ious, index)
    masks = cands.high_res > 0  # [B,M,S,S]
    new = self._update(state, t, masks, cands.valid, index, iou)
    # the prompt frame (the box task decodes it with candidates) changes nothing
    idle = state.replace(slot=jnp.full_like(state.slot, -1), pslot=jnp.full_like(state.pslot, -1))
    on = lambda a: (t >= 1).reshape((-1,) + (1,) * (a.ndim - 1))
    new = jax.tree.map(lambda a, b: jnp.where(on(a), a, b), new, idle)
    return pick(out, cands, index), new, {"iou": iou, "score": out.score}

  def _update(self, st, t, masks, valid, index, iou):
    """Steps 1-3 of the module docstring on tracked clip frame t [B]."""
    n = st.kind.shape[1]
    m = masks.shape[1]
    chosen = take(masks, index)  # [B,S,S]
    visible = chosen.any((-2, -1))
    kind, order, frame = st.kind, st.order, st.frame
    # 1. the frame admitted at t - 1 (the newest entry) becomes DRM; the oldest extra DRM goes
    convert = st.pending[:, None] & _at(_newest(order, kind != FREE), n) & (kind != FREE)
    kind = jnp.where(convert, DRM, kind)
    extra = jnp.sum(kind == DRM, axis=-1) > self.max_drm
    kind = jnp.where(extra[:, None] & _at(_oldest(order, kind == DRM), n), FREE, kind)
    # 2. the RAM write of a visible frame
    ram = kind == RAM
    newest_ram = _newest(order, ram)
    chain = jnp.take_along_axis(frame, newest_ram[:, None], axis=1)[:, 0] % self.update_delta
    append = ~ram.any(-1) | (chain == 0)
    free = kind == FREE
    target = jnp.where(free.any(-1), jnp.argmax(free, axis=-1), _oldest(order, ram))
    slot = jnp.where(visible, jnp.where(append, target, newest_ram), -1).astype(jnp.int32)
    at = _at(slot, n)
    key = jnp.max(jnp.where(kind != FREE, order, -1), axis=-1) + 1
    order = jnp.where(at & append[:, None], key[:, None], order)
    kind = jnp.where(at, RAM, kind)
    frame = jnp.where(at, t[:, None], jnp.where(kind == FREE, EMPTY, frame))
    # 3. the admission test; the admitted frame is the newest (RAM) entry
    if self.max_drm > 0:
      alt = (index[:, None] + jnp.arange(1, m)) % m  # the other candidates [B,M-1]
      alt_masks = jnp.take_along_axis(masks, alt[:, :, None, None], axis=1)
      alt_masks = alt_masks & valid[alt][:, :, None, None]
      admitted, history = rules.admit(
        st.history,
        t,
        chosen,
        alt_masks,
        iou,
        variant="d4sm",
        iou_min=float(self.iou_threshold),
        area_ratio=(float(self.area_ratio_low), float(self.area_ratio_high)),
        median_of=int(self.median_of),
        min_gap=int(self.update_delta),
        max_box_iou=float(self.distractor_box_iou),
      )
    else:
      n_px = chosen.sum((-2, -1), dtype=jnp.int32)
      admitted = jnp.zeros_like(visible)
      history = rules.push_size(st.history, t, n_px, where=n_px >= 1)
    return st.replace(
      kind=kind,
      order=order,
      frame=frame,
      pending=admitted & visible,
      slot=slot,
      last=t,
      # 4. the pointer of a visible frame joins the front of the pointer list
      ptr_list=jnp.where(
        visible[:, None],
        jnp.concatenate([t[:, None], st.ptr_list[:, :-1]], 1),
        st.ptr_list,
      ),
      n_ptr=st.n_ptr + visible.astype(jnp.int32),
      pslot=jnp.full_like(st.pslot, -1),
      history=history,
    )

  @staticmethod
  def _check_ptrs(p: int):
    if p > MAX_PTR_SLOTS:
      raise ValueError(f"dam4sam keeps at most {MAX_PTR_SLOTS} pointers, the bank has {p} slots")

  def ring_slot(self, state, bank, t, meta):
    self._check_ring(bank.mem_frame.shape[1])
    p = bank.ptr.shape[1]
    self._check_ptrs(p)
    # a visible frame's pointer (the n_ptr-th) goes to pointer slot (n_ptr - 1) % P, over the
    # oldest of the last P visible frames' (M:457-470)
    pslot = jnp.where(state.slot >= 0, (state.n_ptr - 1) % p, -1).astype(jnp.int32)
    return state.slot, state.replace(pslot=pslot)

  def ptr_slot(self, state):
    return state.pslot

  @staticmethod
  def pointer_ranks(state, p: int):
    """[B,P] each pointer ring slot's rank in the pointer list (0 = newest) and [B,P] whether
    it holds one of the list's newest min(n_ptr, P) entries."""
    rank = (state.n_ptr[:, None] - 1 - jnp.arange(p)) % p
    return rank, rank < jnp.minimum(state.n_ptr, p)[:, None]

  @classmethod
  def pointer_frames(cls, state, p: int):
    """[B,P] the frame of each pointer ring slot (EMPTY: none), from the state's list."""
    cls._check_ptrs(p)
    rank, ok = cls.pointer_ranks(state, p)
    return jnp.where(ok, jnp.take_along_axis(state.ptr_list, rank, axis=1), EMPTY)

  # --------------------------------------------------------------------------------- read
  def view(self, bank, t, reverse=False):
    """Every list entry, DRM at the conditioning row, RAM by the entries after it. Pointers
    (M sam2_base.py:726-739): the last P visible frames' at 1 + their rank from the newest,
    the prompt frame's at t, all divided by the number of listed tracked pointers (at least
    1). `t` and `reverse` are not used (the state counts in clip frames)."""
    st = bank.policy_state
    b, r = bank.mem_frame.shape
    self._check_ring(r)
    n = st.kind.shape[1]
    used = st.kind != FREE
    after = jnp.sum(used[:, None, :] & (st.order[:, None, :] > st.order[:, :, None]), axis=-1)
    row = jnp.where(st.kind == DRM, r, after).astype(jnp.int32)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, r - n)))
    ok = pad(used) & (bank.mem_frame != EMPTY)
    p = bank.ptr.shape[1]
    self._check_ptrs(p)
    rank, ptr_ok = self.pointer_ranks(st, p)
    return MemoryView(
      mem_ok=ok,
      mem_tpos=pad(row),
      ptr_ok=ptr_ok,
      ptr_rel=(rank + 1).astype(jnp.float32),
      ptr_norm=jnp.maximum(jnp.minimum(st.n_ptr, p), 1).astype(jnp.float32),
    )

  # ------------------------------------------------------------------- interactive predictor
  def host_memory_slots(self, o, f: int, sign: int, have, r: int) -> list:
    """The predictor's ring layout for object `o` (a predictor ObjectState) at frame f, tracked
    in direction `sign` from the object's one prompted frame k: slot j holds the video frame of
    the policy state's list slot j. Frame f is clip frame (f - k) * sign; its first (k + sign)
    restarts the state from the prompt frame's, any other must follow the state's last frame
    of a pass from k in the same direction (the list is built frame by frame)."""
    self._check_ring(r)
    cond = sorted(o.out["cond"])
    if len(cond) != 1:  # the predictor refuses a second prompt frame before storing it
      raise ValueError(
        f"the dam4sam memory policy tracks each object from one prompted frame (this object "
        f"has prompts on frames {cond}); call reset_state and prompt on one frame"
      )
    k = cond[0]
    t = (f - k) * sign
    way = "reverse" if sign < 0 else "forward"
    if t < 1:
      raise ValueError(
        f"the dam4sam memory policy tracks from the prompt frame {k}: frame {f} does not come "
        f"after it in {way} tracking; propagate from frame {k} (start_frame_idx={k}, or None), "
        f"reverse={sign > 0} for the frames on the other side"
      )
    st = o.policy_state
    if t == 1:  # a new pass from the prompt frame: the prompt frame's state
      o.policy_state = st = self.init_state(1, origin=k, step=sign)
    else:
      at = None if st is None else [int(np.asarray(x)[0]) for x in (st.origin, st.step, st.last)]
      if at != [k, sign, t - 1]:
        prev = "no tracked frame" if at is None else f"frame {at[0] + at[1] * at[2]}"
        raise ValueError(
          f"the dam4sam memory policy builds its memory frame by frame from the prompt frame "
          f"{k}: frame {f} ({way}) cannot follow {prev} (corrections on tracked frames are not "
          f"supported; propagate from the prompt frame again instead)"
        )
    slots = [EMPTY] * r
    kind, frame = np.asarray(st.kind)[0], np.asarray(st.frame)[0]
    for j, (kd, fr) in enumerate(zip(kind, frame)):
      v = k + sign * int(fr)  # clip frame -> video frame
      if kd != FREE and have(v):
        slots[j] = v
    return slots

  def host_pointer_slots(self, o, have, p: int) -> list:
    """The predictor's pointer ring layout for object `o` (after host_memory_slots): slot j
    holds the video frame whose pointer the scan's ring would hold there (pointer_frames)."""
    st = o.policy_state
    if st is None:
      return [EMPTY] * p
    k, sign = int(np.asarray(st.origin)[0]), int(np.asarray(st.step)[0])
    frames = np.asarray(self.pointer_frames(st, p))[0]
    video = [k + sign * int(fr) for fr in frames]
    return [v if fr != EMPTY and have(v) else EMPTY for fr, v in zip(frames, video)]
