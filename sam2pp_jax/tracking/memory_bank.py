"""Fixed-shape memory bank for scan-based tracking.

Holds the conditioning (prompted) frames' memories and a ring of the most recent tracked
frames' memories and object pointers. `select` returns a static number of memory tokens plus a
validity mask; attention over the masked tokens equals the reference's variable-length
concatenation of only the present memories (keys are order-free, RoPE repeats per frame).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

EMPTY = -1  # frame index of an unused slot
NO_SCORE = float("nan")  # slot metadata a policy did not record (e.g. SAMURAI's motion score)


def bf16_round(x):
  """Round float32 values to bfloat16 (as the reference stores memories), kept in float32."""
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def _set_slot(buf, slot, value):
  """buf [B,K,...] with value [B,...] written at (static or traced) slot along axis 1."""
  return jax.lax.dynamic_update_index_in_dim(buf, value.astype(buf.dtype), slot, axis=1)


@flax.struct.dataclass
class MemoryView:
  """Which ring slots a memory policy lets frame t attend to, per object.

  mem_ok [B,R] bool: the spatial ring slots attended; mem_tpos [B,R] int32: each one's row of
  the temporal encoding table (SAM 2: distance - 1; SAMURAI / DAM4SAM: rank from the newest).
  Optional (None: SAM 2's): ptr_ok [B,P] / ptr_rel [B,P] float, the pointer ring slots
  attended per object and their temporal offsets (SAM2Long: ranks in its gated list);
  ptr_norm [B] float (with ptr_ok): each object's pointer normaliser, replacing SAM 2's
  min(T, max_obj_ptrs) - 1 for its conditioning and ring pointers alike (DAM4SAM: its list
  length); frame_key_scale [B,K+R] (cond slots, then ring slots) and ptr_key_scale [B,K+P] (cond
  pointers, then ring pointers), factors of the cross-attention keys (SAM2Long).
  """

  mem_ok: jax.Array
  mem_tpos: jax.Array
  ptr_ok: jax.Array | None = None
  ptr_rel: jax.Array | None = None
  ptr_norm: jax.Array | None = None
  frame_key_scale: jax.Array | None = None
  ptr_key_scale: jax.Array | None = None


@flax.struct.dataclass
class MemoryBank:
  """Spatial memories [B,slot,HW,Cm] and pointers [B,slot,C] with per-slot frame indices.

  cond_*: conditioning frames (static capacity). mem_*: ring of the num_maskmem-1 latest
  tracked frames (per object: a memory policy may skip or overwrite a frame for one object
  only), with per-slot metadata a policy reads (predicted IoU, object score, motion score).
  ptr_*: ring of the max_obj_ptrs_in_encoder-1 latest tracked pointers. policy_state: the
  memory policy's per-object state (None for SAM 2's), carried with the bank through scans.
  """

  cond_feats: jax.Array  # [B,K,HW,Cm] bf16-rounded float32
  cond_pos: jax.Array  # [B,K,HW,Cm]
  cond_ptr: jax.Array  # [B,K,C]
  cond_frame: jax.Array  # [K] int32 (EMPTY when unused)
  mem_feats: jax.Array  # [B,R,HW,Cm]
  mem_pos: jax.Array  # [B,R,HW,Cm]
  mem_frame: jax.Array  # [B,R] int32
  ptr: jax.Array  # [B,P,C]
  ptr_frame: jax.Array  # [P] int32
  mem_iou: jax.Array  # [B,R] the frame's chosen predicted IoU
  mem_score: jax.Array  # [B,R] its object score logit
  mem_motion: jax.Array  # [B,R] its motion score (NO_SCORE when not recorded)
  policy_state: object = None

  # ---------------------------------------------------------------------------------------
  @classmethod
  def empty(
    cls,
    batch: int,
    hw: int,
    mem_dim: int,
    hidden_dim: int,
    *,
    num_maskmem: int,
    max_obj_ptrs: int,
    cond_capacity: int = 2,
  ) -> "MemoryBank":
    """All slots unused; capacities depend only on the config, never on the video length."""
    r, p, k = num_maskmem - 1, max_obj_ptrs - 1, cond_capacity
    if r < 1 or p < 1 or k < 1:
      raise ValueError("need num_maskmem >= 2, max_obj_ptrs >= 2 and cond_capacity >= 1")
    z = lambda *s: jnp.zeros(s, jnp.float32)
    e = lambda *s: jnp.full(s, EMPTY, jnp.int32)
    return cls(
      cond_feats=z(batch, k, hw, mem_dim),
      cond_pos=z(batch, k, hw, mem_dim),
      cond_ptr=z(batch, k, hidden_dim),
      cond_frame=e(k),
      mem_feats=z(batch, r, hw, mem_dim),
      mem_pos=z(batch, r, hw, mem_dim),
      mem_frame=e(batch, r),
      ptr=z(batch, p, hidden_dim),
      ptr_frame=e(p),
      mem_iou=z(batch, r),
      mem_score=z(batch, r),
      mem_motion=jnp.full((batch, r), NO_SCORE, jnp.float32),
    )

  @classmethod
  def from_slots(cls, slots: dict, pos) -> "MemoryBank":
    """A bank from per-slot, per-object host memories (the interactive predictor's layout).

    slots: cond_feats / mem_feats: tuples (slot) of tuples (object) of [HW,Cm] memories;
    cond_ptr / ptr: the same of [C] pointers; cond_frame / mem_frame / ptr_frame: [K] frame
    indices (EMPTY where unused). pos [HW,Cm] is every memory's position encoding.
    """
    stack = lambda xs: jnp.stack([jnp.stack(objs) for objs in xs], axis=1).astype(jnp.float32)
    cond, mem = stack(slots["cond_feats"]), stack(slots["mem_feats"])
    frame = lambda k: jnp.asarray(slots[k], jnp.int32)
    b, r = mem.shape[:2]
    return cls(
      cond_feats=cond,
      cond_pos=jnp.broadcast_to(pos, cond.shape),
      cond_ptr=stack(slots["cond_ptr"]),
      cond_frame=frame("cond_frame"),
      mem_feats=mem,
      mem_pos=jnp.broadcast_to(pos, mem.shape),
      mem_frame=jnp.broadcast_to(frame("mem_frame"), (b, r)),
      ptr=stack(slots["ptr"]),
      ptr_frame=frame("ptr_frame"),
      mem_iou=jnp.zeros((b, r), jnp.float32),
      mem_score=jnp.zeros((b, r), jnp.float32),
      mem_motion=jnp.full((b, r), NO_SCORE, jnp.float32),
    )

  @property
  def num_ptr_tokens(self) -> int:
    """Static number of pointer tokens select() emits (each pointer -> C/Cm tokens)."""
    split = self.ptr.shape[-1] // self.mem_feats.shape[-1]
    return (self.cond_ptr.shape[1] + self.ptr.shape[1]) * split

  # ---------------------------------------------------------------------------------------
  def write_cond(self, slot: int, t, feats, pos, obj_ptr) -> "MemoryBank":
    """Store a conditioning frame t: feats/pos [B,h,w,Cm] (feats rounded to bf16), ptr [B,C]."""
    b = feats.shape[0]
    f = bf16_round(feats.reshape(b, -1, feats.shape[-1]))
    p = jnp.broadcast_to(pos, feats.shape).reshape(f.shape)
    return self.replace(
      cond_feats=_set_slot(self.cond_feats, slot, f),
      cond_pos=_set_slot(self.cond_pos, slot, p),
      cond_ptr=_set_slot(self.cond_ptr, slot, obj_ptr),
      cond_frame=self.cond_frame.at[slot].set(jnp.asarray(t, jnp.int32)),
    )

  def write(self, t, feats, pos, obj_ptr, *, slot=None, meta=None, ptr_slot=None) -> "MemoryBank":
    """Store tracked (non-conditioning) frame t into the rings.

    slot None (SAM 2): every object's spatial memory goes to ring slot t % R, the oldest.
    slot [B] int32 (a memory policy): object b's goes to slot[b]; -1 leaves its ring as it
    is. meta: optional dict of [B] per-slot metadata (iou, score, motion) stored with it. The
    pointer ring takes frame t at t % P, or (ptr_slot [B], a policy that keeps per-object
    pointer frames in its state, SAM2Long) object b's pointer at ptr_slot[b] (-1: nowhere;
    ptr_frame is then left alone).
    """
    b = feats.shape[0]
    f = bf16_round(feats.reshape(b, -1, feats.shape[-1]))
    p = jnp.broadcast_to(pos, feats.shape).reshape(f.shape)
    t = jnp.asarray(t, jnp.int32)
    r, q = self.mem_frame.shape[1], self.ptr_frame.shape[0]
    sp = t % q
    meta = dict(meta or {})
    unknown = sorted(set(meta) - {"iou", "score", "motion"})
    if unknown:
      raise ValueError(f"unknown slot metadata {unknown}; use iou, score, motion")
    if slot is None:
      sm = t % r
      mem = dict(
        mem_feats=_set_slot(self.mem_feats, sm, f),
        mem_pos=_set_slot(self.mem_pos, sm, p),
        mem_frame=self.mem_frame.at[:, sm].set(t),
      )
      at = jnp.broadcast_to(jnp.arange(r) == sm, (b, r))
    else:
      at = jnp.asarray(slot, jnp.int32)[:, None] == jnp.arange(r)  # [B,R] (-1: nowhere)
      put = lambda buf, v: jnp.where(at[:, :, None, None], v[:, None].astype(buf.dtype), buf)
      mem = dict(
        mem_feats=put(self.mem_feats, f),
        mem_pos=put(self.mem_pos, p),
        mem_frame=jnp.where(at, t, self.mem_frame),
      )
    for key, field in (("iou", "mem_iou"), ("score", "mem_score"), ("motion", "mem_motion")):
      default = NO_SCORE if key == "motion" else 0.0
      v = jnp.broadcast_to(jnp.asarray(meta.get(key, default), jnp.float32), (b,))
      mem[field] = jnp.where(at, v[:, None], getattr(self, field))
    if ptr_slot is not None:
      pat = jnp.asarray(ptr_slot, jnp.int32)[:, None] == jnp.arange(q)  # [B,P]
      ptr = jnp.where(pat[:, :, None], obj_ptr[:, None].astype(self.ptr.dtype), self.ptr)
      return self.replace(ptr=ptr, **mem)
    return self.replace(
      ptr=_set_slot(self.ptr, sp, obj_ptr), ptr_frame=self.ptr_frame.at[sp].set(t), **mem
    )

  def take_rows(self, rows) -> "MemoryBank":
    """The bank with row i replaced by row rows[i] (SAM2Long: pathways follow their parent);
    frame indices shared by all rows and the policy state are left alone."""
    shared = ("cond_frame", "ptr_frame", "policy_state")
    return self.replace(
      **{
        f.name: jnp.take(getattr(self, f.name), rows, axis=0)
        for f in dataclasses.fields(self)
        if f.name not in shared
      }
    )

  def token_key_scale(self, view: MemoryView | None):
    """[B,M] per-token key factors in select()'s token order, or None (the view has none)."""
    if view is None or view.frame_key_scale is None:
      return None
    hw = self.cond_feats.shape[2]
    split = self.ptr.shape[-1] // self.mem_feats.shape[-1]
    return jnp.concatenate(
      [
        jnp.repeat(view.frame_key_scale, hw, axis=1),
        jnp.repeat(view.ptr_key_scale, split, axis=1),
      ],
      axis=1,
    ).astype(jnp.float32)

  # ---------------------------------------------------------------------------------------
  def select(
    self,
    t,
    num_frames: int,
    tpos_table,
    ptr_pos_encoding: Callable[[jax.Array, float], jax.Array],
    reverse=False,
    future_cond_ptrs: bool = False,
    view: MemoryView | None = None,
  ):
    """Memory tokens for frame t: (memory [B,M,Cm], pos [B,M,Cm], mask [B,M] bool).

    tpos_table [num_maskmem, Cm] = maskmem_tpos_enc; ptr_pos_encoding(rel_pos [N], t_diff_max)
    -> [N,Cm]. Spatial slots come first (whole frames), the static pointer tokens last.
    reverse (bool, may be traced): tracking backwards in time, so "past" frames are those
    after t and every distance is measured as (frame - t); pointer offsets keep that sign.
    future_cond_ptrs (static): also use pointers of conditioning frames after t (the reference
    does so in training; only_obj_ptrs_in_the_past_for_eval applies at inference).
    view: a memory policy's choice of ring slots and their temporal rows (None: SAM 2's, the
    slots at distance 1..R with row distance - 1).
    """
    t = jnp.asarray(t, jnp.int32)
    sign = jnp.where(jnp.asarray(reverse), -1, 1).astype(jnp.int32)
    b, k, hw, cm = self.cond_feats.shape
    r = self.mem_frame.shape[1]
    nm = tpos_table.shape[0]
    # spatial: cond frames use the last temporal slot; tracked frame at distance d uses d-1
    cond_ok = self.cond_frame != EMPTY
    if view is None:
      d_mem = (t - self.mem_frame) * sign  # [B,R]
      mem_ok = (self.mem_frame != EMPTY) & (d_mem >= 1) & (d_mem <= r)
      row = d_mem - 1
    else:
      mem_ok, row = view.mem_ok, view.mem_tpos
    cond_tpos = jnp.broadcast_to(tpos_table[nm - 1], (k, cm))
    mem_tpos = tpos_table[jnp.clip(row, 0, nm - 1)]  # [B,R,Cm]
    feats = jnp.concatenate([self.cond_feats, self.mem_feats], axis=1)
    pos = jnp.concatenate(
      [self.cond_pos + cond_tpos[None, :, None], self.mem_pos + mem_tpos[:, :, None]], axis=1
    )
    ok = jnp.concatenate([jnp.broadcast_to(cond_ok, (b, k)), mem_ok], axis=1)  # [B,K+R]
    spatial = feats.reshape(b, -1, cm)
    spatial_pos = pos.reshape(b, -1, cm)
    spatial_ok = jnp.repeat(ok, hw, axis=1)
    # pointers: cond frames in the past at offset t - t_c; tracked frames at d in 1..max-1
    max_ptrs = min(int(num_frames), self.ptr_frame.shape[0] + 1)
    t_diff_max = max(max_ptrs - 1, 1)
    d_ptr = (t - self.ptr_frame) * sign
    ptr_ok = (self.ptr_frame != EMPTY) & (d_ptr >= 1) & (d_ptr <= max_ptrs - 1)
    d_cond = (t - self.cond_frame) * sign
    cond_ptr_ok = cond_ok if future_cond_ptrs else cond_ok & (d_cond >= 0)
    rel = jnp.concatenate([d_cond, d_ptr]).astype(jnp.float32)
    rel = jnp.where(jnp.concatenate([cond_ptr_ok, ptr_ok]), rel, 0.0)
    ptr_pe = ptr_pos_encoding(rel, t_diff_max)  # [K+P, Cm]
    ptrs = jnp.concatenate([self.cond_ptr, self.ptr], axis=1)  # [B,K+P,C]
    split = ptrs.shape[-1] // cm
    ptr_tok = ptrs.reshape(b, -1, cm)  # consecutive Cm chunks
    ptr_tok_pos = jnp.repeat(ptr_pe, split, axis=0)
    ptr_tok_ok = jnp.repeat(jnp.concatenate([cond_ptr_ok, ptr_ok]), split)
    memory = jnp.concatenate([spatial, ptr_tok], axis=1)
    if view is not None and view.ptr_ok is not None:  # per-object pointer slots and offsets
      ok2 = jnp.concatenate([jnp.broadcast_to(cond_ptr_ok, (b, k)), view.ptr_ok], axis=1)
      rel2 = jnp.concatenate(
        [jnp.broadcast_to(d_cond.astype(jnp.float32), (b, k)), view.ptr_rel.astype(jnp.float32)],
        axis=1,
      )
      norm = t_diff_max
      if view.ptr_norm is not None:  # per-object normaliser: offsets pre-divided, then by 1
        rel2 = rel2 / view.ptr_norm.astype(jnp.float32)[:, None]
        norm = 1
      pe2 = ptr_pos_encoding(jnp.where(ok2, rel2, 0.0).reshape(-1), norm)
      pe2 = pe2.reshape(b, ok2.shape[1], -1)
      memory_pos = jnp.concatenate([spatial_pos, jnp.repeat(pe2, split, axis=1)], axis=1)
      mask = jnp.concatenate([spatial_ok, jnp.repeat(ok2, split, axis=1)], axis=1)
      return memory, memory_pos, mask
    memory_pos = jnp.concatenate(
      [spatial_pos, jnp.broadcast_to(ptr_tok_pos, (b,) + ptr_tok_pos.shape)], axis=1
    )
    mask = jnp.concatenate([spatial_ok, jnp.broadcast_to(ptr_tok_ok, (b,) + ptr_tok_ok.shape)], 1)
    return memory, memory_pos, mask
