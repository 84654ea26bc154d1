"""Memory policies: the static part of `track_step` that research on memory variants changes.

A policy is a frozen, hashable dataclass (a jit static argument) with hooks called by the one
per-frame step; its per-object state is a pytree carried in the MemoryBank (`policy_state`), so
scans, chunked tracking and donation need nothing new. Hooks:

  init_state(batch)                      -> the state of a fresh bank (None: stateless)
  view(bank, t, reverse)                 -> MemoryView of the ring slots frame t reads (None:
                                            SAM 2's, the slots at distance 1..R)
  choose(state, out, cands, t, multimask) -> (out, state, meta): the candidate each object
                                            keeps (cands: every candidate, gated at the policy's
                                            presence threshold) and the slot metadata to store
  ring_slot(state, bank, t, meta)        -> (slot [B] or None, state): where the ring write
                                            goes per object (-1: nowhere; None: t % R, SAM 2)
  reorder(bank, state, out)              -> bank: rows regathered before the ring write (SAM2Long
                                            pathways follow their parent; identity here)
  ptr_slot(state)                        -> [B] pointer ring slot per object after ring_slot
                                            (None: t % P, SAM 2)
Whole-video trackers with several rows per object (`rows_per_object`, SAM2Long's pathways):
  record(out)                            -> extra per-frame device rows (e.g. parents)
  resolve(rows)                          -> (rows [T,B,...], extras): host rows [T,B*K,...] after
                                            the last frame -> one row per object

`SAM2` is today's tracker (every hook the default: the decoder's own choice, SAM 2's ring and
view) and the default everywhere; parity is checked with it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Candidates:
  """Every decoder candidate of B objects, with the presence gate at the policy's threshold.

  low_res [B,M,S/4,S/4], high_res [B,M,S,S] logits; obj_ptr [B,M,C]; boxes [B,M,4] (box task)
  or None; valid [M] (single-mask steps: candidate 0 only).
  """

  low_res: jax.Array
  high_res: jax.Array
  obj_ptr: jax.Array
  boxes: jax.Array | None
  valid: jax.Array


def take(x, index):
  """x [B,M,...] at per-object candidate index [B] -> [B,...]."""
  i = index.reshape((-1,) + (1,) * (x.ndim - 1)).astype(jnp.int32)
  return jnp.take_along_axis(x, i, axis=1)[:, 0]


def pick(out, cands: Candidates, index):
  """`out` (a StepOut) with candidate `index` [B] of `cands` as its chosen output."""
  return out.replace(
    low_res=take(cands.low_res, index),
    high_res=take(cands.high_res, index),
    obj_ptr=take(cands.obj_ptr, index),
    box=None if cands.boxes is None else take(cands.boxes, index),
  )


def chosen_iou(out):
  """The predicted IoU of the decoder's own choice (its best valid candidate), [B]."""
  return jnp.max(jnp.where(out.candidate_valid, out.ious, -jnp.inf), axis=-1)


@dataclasses.dataclass(frozen=True)
class MemoryPolicy:
  """SAM 2's memory (see the module docstring); subclasses override hooks and add options."""

  name: ClassVar[str] = "sam2"
  needs_candidates: ClassVar[bool] = False  # track_step builds `Candidates` for choose()
  # a prompt (conditioning) frame's memory is encoded from its mask logits > 0, not from their
  # sigmoid (track_video's prompt frame and VideoPredictor's consolidation; DAM4SAM, as d4sm)
  binarize_prompt_memory: ClassVar[bool] = False
  # VideoPredictor may add prompts on frames the object was already tracked on (corrections)
  corrections: ClassVar[bool] = True
  # VideoPredictor takes prompts on one frame only (every object's), refusing a second frame
  one_prompt_frame: ClassVar[bool] = False

  @property
  def presence_threshold(self) -> float:
    """Object-score logit above which a candidate's mask and pointer count as present."""
    return 0.0

  def check_model(self, config) -> None:
    """Refuse (ValueError naming the fix) a model config this policy cannot run on; called by
    every tracking path before any frame is read."""

  def init_state(self, batch: int):
    return None

  def view(self, bank, t, reverse=False):
    return None

  def choose(self, state, out, cands, t, multimask):
    return out, state, {"iou": chosen_iou(out), "score": out.score}

  def ring_slot(self, state, bank, t, meta):
    return None, state

  def reorder(self, bank, state, out):
    return bank

  def ptr_slot(self, state):
    return None

  @property
  def rows_per_object(self) -> int:
    """Bank rows per tracked object (object-major); > 1 needs whole-video tracking."""
    return 1

  def record(self, out) -> dict:
    return {}

  def resolve(self, rows: dict):
    return rows, {}

  def options(self) -> dict:
    """The policy's options and their values (its dataclass fields)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class SAM2(MemoryPolicy):
  """SAM 2 / SAM 2++ as released: the decoder's argmax-IoU candidate, every tracked frame into
  the ring at t % R, frame t reads the frames at distance 1..R."""

  name: ClassVar[str] = "sam2"


RELEASED = SAM2()  # the default policy of every tracking path


def rank_from_newest(frames, ok):
  """[B,R] frame indices with a mask -> each slot's rank among the masked ones (0 = newest)."""
  newer = ok[:, None, :] & (frames[:, None, :] > frames[:, :, None])  # [B,R(self),R(other)]
  return jnp.sum(newer, axis=-1).astype(jnp.int32)
