"""SAMURAI (Yang et al. 2024, github:yangchris11/samurai 76ba195): motion-aware memory.

Per object, a constant-velocity Kalman filter over the chosen mask's box (kalman.py) and a
count of stable frames. On a multimask frame, with `stable` the count at the frame's start:
  * stable == 0: the argmax-IoU candidate; the filter restarts from its box; stable = 1.
  * 0 < stable < stable_frames_threshold: predict; the argmax-IoU candidate; if its IoU
    > stable_ious_threshold, update with its box and stable += 1, else stable = 0.
  * stable >= threshold: predict; each candidate scores kf_score_weight * IoU(predicted box,
    its box) + (1 - w) * its predicted IoU; the best is kept; if its predicted IoU is
    < stable_ious_threshold, stable = 0, else update (stable unchanged). Its box IoU with
    the prediction is the frame's motion score (recorded only in this regime).
Single-mask frames keep candidate 0 and leave the filter alone. Masks and pointers are gated
at `min_obj_score_logits` (-1) instead of 0 (the memory encoder still uses 0).
Memory read: the tracked frames whose predicted IoU > memory_bank_iou_threshold, object score
> memory_bank_obj_score_threshold and motion score (when recorded) > memory_bank_kf_score_
threshold, newest first, plus always the previous frame; the newest R of them, temporal
encoding by rank. In the original a search backwards over frames t-1 .. 2 builds this list
each frame (so frame 1 is only ever read as the previous frame: a quirk kept here); here the
ring holds it incrementally: a frame that fails the test is overwritten by the next one.
Pointers are not filtered. Measurements are the inclusive pixel extents of each candidate's
model-resolution mask (> 0); `box_head_measurements` (an extension, off by default) uses the
box task's box head instead.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.tracking.memory import kalman
from sam2pp_jax.tracking.memory.policy import (
  MemoryPolicy,
  pick,
  rank_from_newest,
  take,
)
from sam2pp_jax.tracking.memory_bank import EMPTY, NO_SCORE, MemoryView


@flax.struct.dataclass
class SamuraiState:
  """Per object: Kalman mean [B,8] / covariance [B,8,8] (xyah + velocities), stable-frame
  count [B], the ring slot of the newest memory [B] (-1: none) and whether it passed the
  memory test [B] (a failed newest memory is overwritten by the next frame's)."""

  mean: jax.Array
  cov: jax.Array
  stable: jax.Array
  head: jax.Array
  head_kept: jax.Array


@dataclasses.dataclass(frozen=True)
class Samurai(MemoryPolicy):
  """SAMURAI with the defaults of its B+/S/T configs (configs/samurai/*.yaml)."""

  name: ClassVar[str] = "samurai"
  needs_candidates: ClassVar[bool] = True

  stable_frames_threshold: int = 15
  stable_ious_threshold: float = 0.3
  min_obj_score_logits: float = -1.0
  kf_score_weight: float = 0.25  # 0.15 in the L config and the code's default
  memory_bank_iou_threshold: float = 0.5
  memory_bank_obj_score_threshold: float = 0.0
  memory_bank_kf_score_threshold: float = 0.0
  box_head_measurements: bool = False  # extension: the box task's box head, not mask extents

  @property
  def presence_threshold(self) -> float:
    return float(self.min_obj_score_logits)

  def init_state(self, batch: int) -> SamuraiState:
    return SamuraiState(
      mean=jnp.zeros((batch, 8), jnp.float32),
      cov=jnp.broadcast_to(jnp.eye(8, dtype=jnp.float32), (batch, 8, 8)),
      stable=jnp.zeros((batch,), jnp.int32),
      head=jnp.full((batch,), -1, jnp.int32),
      head_kept=jnp.ones((batch,), bool),
    )

  def _boxes(self, cands, image_size: int):
    """Measured box of every candidate [B,M,4] in model pixels (xyxy; empty mask -> 0)."""
    if self.box_head_measurements and cands.boxes is not None:
      return cands.boxes * float(image_size)
    return kalman.mask_boxes(cands.high_res)

  def choose(self, state, out, cands, t, multimask):
    multi = jnp.asarray(multimask, bool)
    ious = jnp.where(cands.valid, out.ious, -jnp.inf)  # [B,M]
    boxes = self._boxes(cands, cands.high_res.shape[-1])
    pm, pc = kalman.predict(state.mean, state.cov)
    kf_iou = kalman.box_iou(kalman.xyah_to_xyxy(pm[:, :4]), boxes)  # [B,M]
    w = float(self.kf_score_weight)
    fresh = state.stable == 0
    settled = state.stable >= int(self.stable_frames_threshold)
    by_iou = jnp.argmax(ious, axis=-1)
    by_motion = jnp.argmax(jnp.where(cands.valid, w * kf_iou + (1.0 - w) * ious, -jnp.inf), -1)
    index = jnp.where(settled, by_motion, by_iou)
    index = jnp.where(multi, index, 0).astype(jnp.int32)
    iou = take(out.ious, index)
    z = kalman.xyxy_to_xyah(take(boxes, index))
    m0, c0 = kalman.initiate(z)
    mu, cu = kalman.update(pm, pc, z)
    thr = float(self.stable_ious_threshold)
    # per regime: (use the update, else keep the prediction; new stable count)
    ok_mid = iou > thr
    ok_settled = ~(iou < thr)
    good = jnp.where(settled, ok_settled, ok_mid)
    mean = jnp.where(fresh[:, None], m0, jnp.where(good[:, None], mu, pm))
    cov = jnp.where(fresh[:, None, None], c0, jnp.where(good[:, None, None], cu, pc))
    stable = jnp.where(
      fresh,
      1,
      jnp.where(settled, jnp.where(good, state.stable, 0), jnp.where(good, state.stable + 1, 0)),
    )
    new = state.replace(
      mean=jnp.where(multi, mean, state.mean),
      cov=jnp.where(multi, cov, state.cov),
      stable=jnp.where(multi, stable, state.stable).astype(jnp.int32),
    )
    motion = jnp.where(multi & settled, take(kf_iou, index), NO_SCORE)
    return pick(out, cands, index), new, {"iou": iou, "score": out.score, "motion": motion}

  def _kept(self, meta, t, xp=jnp):
    """SAMURAI's memory test of a frame (frame 1 is never found by the original's search).
    meta: iou / score / motion (NaN: not recorded, the original's `kf_score is None`), jax
    arrays in the scan or a stored predictor output's host values with xp=numpy."""
    motion = xp.asarray(meta["motion"])
    return (
      (xp.asarray(meta["iou"]) > self.memory_bank_iou_threshold)
      & (xp.asarray(meta["score"]) > self.memory_bank_obj_score_threshold)
      & (xp.isnan(motion) | (motion > self.memory_bank_kf_score_threshold))
      & (xp.asarray(t) >= 2)
    )

  def ring_slot(self, state, bank, t, meta):
    r = bank.mem_frame.shape[1]
    slot = jnp.where(state.head_kept, (state.head + 1) % r, state.head).astype(jnp.int32)
    return slot, state.replace(head=slot, head_kept=self._kept(meta, t))

  def host_memory_frames(self, f, sign, t_total, stored: dict, have, max_ptrs: int, r: int):
    """The interactive predictor's read (host side, the original's search): frames of the
    object's stored tracked outputs `stored` (frame -> output with iou, score, motion) before
    f in the tracking direction that pass the memory test, searched newest first until
    max_ptrs - 1 are found, plus always the previous frame; the newest r of them that exist
    (`have`), newest first. Frame indices are the video's (the original's frame_idx)."""
    kept = []
    for d in range(1, t_total):
      i = f - d * sign
      if i < 0 or i >= t_total:
        break
      out = stored.get(i)
      if out is not None and bool(self._kept(out, i, xp=np)):
        kept.insert(0, i)
      if len(kept) >= max_ptrs - 1:
        break
    prev = f - sign
    if prev not in kept:
      kept.append(prev)
    return [i for i in kept[-r:][::-1] if have(i)]

  def view(self, bank, t, reverse=False):
    sign = jnp.where(jnp.asarray(reverse), -1, 1)
    order = bank.mem_frame * sign  # processing order (reverse tracking: later frames first)
    ok = (bank.mem_frame != EMPTY) & ((jnp.asarray(t) - bank.mem_frame) * sign >= 1)
    return MemoryView(mem_ok=ok, mem_tpos=rank_from_newest(order, ok))
