"""Fixed-shape memory bank for scan-based tracking.

Holds the conditioning (prompted) frames' memories and a ring of the most recent tracked
frames' memories and object pointers. `slots` gives frame t's memories slot by slot with which
are present; `MemorySlots.flatten` turns them into a static number of tokens plus a validity
mask, and attention over the masked tokens equals the reference's variable-length concatenation
of only the present memories (keys are order-free, RoPE repeats per frame). `present` first
gathers the present slots, in the reference's order, into one of a few static sizes
(`present_buckets`), so that early frames do not pay for empty slots.
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
    """Memory tokens for frame t over every slot: (memory [B,M,Cm], pos [B,M,Cm], mask [B,M]).

    The fixed-cost layout (`slots(...).flatten()`): spatial slots in slot order (cond, then
    ring), the static pointer tokens last; unused slots masked. See `slots` for the arguments.
    """
    memory, pos, mask, _ = self.slots(
      t, num_frames, tpos_table, ptr_pos_encoding, reverse, future_cond_ptrs, view
    ).flatten()
    return memory, pos, mask

  def slots(
    self,
    t,
    num_frames: int,
    tpos_table,
    ptr_pos_encoding: Callable[[jax.Array, float], jax.Array],
    reverse=False,
    future_cond_ptrs: bool = False,
    view: MemoryView | None = None,
  ) -> "MemorySlots":
    """Frame t's memories slot by slot, with which are present and their reference order.

    tpos_table [num_maskmem, Cm] = maskmem_tpos_enc; ptr_pos_encoding(rel_pos [N], t_diff_max)
    -> [N,Cm]. reverse (bool, may be traced): tracking backwards in time, so "past" frames are
    those after t and every distance is measured as (frame - t); pointer offsets keep that sign.
    future_cond_ptrs (static): also use pointers of conditioning frames after t (the reference
    does so in training; only_obj_ptrs_in_the_past_for_eval applies at inference).
    view: a memory policy's choice of ring slots and their temporal rows (None: SAM 2's, the
    slots at distance 1..R with row distance - 1).
    """
    t = jnp.asarray(t, jnp.int32)
    sign = jnp.where(jnp.asarray(reverse), -1, 1).astype(jnp.int32)
    b, k, hw, cm = self.cond_feats.shape
    nm = tpos_table.shape[0]
    # spatial: cond frames use the last temporal slot; tracked frame at distance d uses d-1
    cond_ok = self.cond_frame != EMPTY
    if view is None:
      d_mem = (t - self.mem_frame) * sign  # [B,R]
      mem_ok = (self.mem_frame != EMPTY) & (d_mem >= 1) & (d_mem <= self.mem_frame.shape[1])
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
    # reference order: conditioning frames, then the ring from the farthest to the nearest
    cond_rank = jnp.broadcast_to(jnp.arange(k, dtype=jnp.float32), (b, k))
    order = jnp.concatenate([cond_rank, k + (nm - row).astype(jnp.float32)], axis=1)
    # pointers: cond frames in the past at offset t - t_c; tracked frames at d in 1..max-1
    max_ptrs = min(int(num_frames), self.ptr_frame.shape[0] + 1)
    t_diff_max = max(max_ptrs - 1, 1)
    d_ptr = (t - self.ptr_frame) * sign
    ptr_ok = (self.ptr_frame != EMPTY) & (d_ptr >= 1) & (d_ptr <= max_ptrs - 1)
    d_cond = (t - self.cond_frame) * sign
    cond_ptr_ok = cond_ok if future_cond_ptrs else cond_ok & (d_cond >= 0)
    ptrs = jnp.concatenate([self.cond_ptr, self.ptr], axis=1)  # [B,K+P,C]
    split = ptrs.shape[-1] // cm
    ptr_tok = ptrs.reshape(b, ptrs.shape[1], split, cm)  # consecutive Cm chunks
    if view is not None and view.ptr_ok is not None:  # per-object pointer slots and offsets
      pok = jnp.concatenate([jnp.broadcast_to(cond_ptr_ok, (b, k)), view.ptr_ok], axis=1)
      rel = jnp.concatenate(
        [jnp.broadcast_to(d_cond.astype(jnp.float32), (b, k)), view.ptr_rel.astype(jnp.float32)],
        axis=1,
      )
      norm = t_diff_max
      if view.ptr_norm is not None:  # per-object normaliser: offsets pre-divided, then by 1
        rel = rel / view.ptr_norm.astype(jnp.float32)[:, None]
        norm = 1
      pe = ptr_pos_encoding(jnp.where(pok, rel, 0.0).reshape(-1), norm)
      pe = pe.reshape(b, pok.shape[1], -1)
      ring_rel = view.ptr_rel.astype(jnp.float32)
    else:
      pok = jnp.concatenate([cond_ptr_ok, ptr_ok])
      rel = jnp.concatenate([d_cond, d_ptr]).astype(jnp.float32)
      pe = ptr_pos_encoding(jnp.where(pok, rel, 0.0), t_diff_max)  # [K+P, Cm]
      pok, pe = jnp.broadcast_to(pok, (b,) + pok.shape), jnp.broadcast_to(pe, (b,) + pe.shape)
      ring_rel = jnp.broadcast_to(d_ptr.astype(jnp.float32), (b, d_ptr.shape[0]))
    # reference order: conditioning pointers, then the ring from the nearest to the farthest
    ptr_order = jnp.concatenate([cond_rank, k + jnp.abs(ring_rel)], axis=1)
    return MemorySlots(
      feats=feats,
      pos=pos,
      ok=ok,
      order=order,
      ptr=ptr_tok,
      ptr_pos=jnp.broadcast_to(pe[:, :, None], ptr_tok.shape),
      ptr_ok=pok,
      ptr_order=ptr_order,
      frame_key_scale=None if view is None else view.frame_key_scale,
      ptr_key_scale=None if view is None else view.ptr_key_scale,
    )


def _first_present(ok, order, n: int):
  """Indices [B,n] of the first n present slots by `order` (ties: slot order), and their
  validity [B,n] (False past a row's last present slot)."""
  key = jnp.where(ok, order, jnp.inf)
  idx = jnp.argsort(key, axis=1, stable=True)[:, :n]
  return idx, jnp.take_along_axis(ok, idx, axis=1)


def _take(x, idx):
  """x [B,S,...] -> [B,n,...] at slots idx [B,n]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@flax.struct.dataclass
class MemorySlots:
  """Frame t's memories as whole slots (F = K+R spatial, Q = K+P pointers), before they
  become attention tokens. ok / ptr_ok say which are present; order / ptr_order rank them in
  the reference's concatenation order (lower first; present ones only).

  feats / pos [B,F,HW,Cm]; ok, order [B,F]; ptr / ptr_pos [B,Q,C/Cm,Cm] (a pointer is C/Cm
  tokens); ptr_ok, ptr_order [B,Q]; frame_key_scale [B,F] / ptr_key_scale [B,Q] (SAM2Long's
  key factors) or None.
  """

  feats: jax.Array
  pos: jax.Array
  ok: jax.Array
  order: jax.Array
  ptr: jax.Array
  ptr_pos: jax.Array
  ptr_ok: jax.Array
  ptr_order: jax.Array
  frame_key_scale: jax.Array | None = None
  ptr_key_scale: jax.Array | None = None

  @property
  def capacity(self) -> tuple[int, int]:
    """Static (spatial slots F, pointer slots Q)."""
    return int(self.ok.shape[1]), int(self.ptr_ok.shape[1])

  def num_present(self):
    """(spatial, pointer) slots present in the fullest row: int32 scalars (traced)."""
    n = lambda ok: ok.sum(axis=1).max().astype(jnp.int32)
    return n(self.ok), n(self.ptr_ok)

  def present(self, n_frames: int, n_ptrs: int) -> "MemorySlots":
    """The first n_frames spatial and n_ptrs pointer slots present, in the reference's order
    (static sizes; rows with fewer present slots are padded with masked ones). Attention over
    them equals attention over all slots, masked, up to float summation order: RoPE repeats per
    frame and masked keys get exactly zero weight."""
    fi, fok = _first_present(self.ok, self.order, n_frames)
    pi, pok = _first_present(self.ptr_ok, self.ptr_order, n_ptrs)
    rank = lambda n: jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32), (self.ok.shape[0], n))
    scale = lambda x, i: None if x is None else _take(x, i)
    return MemorySlots(
      feats=_take(self.feats, fi),
      pos=_take(self.pos, fi),
      ok=fok,
      order=rank(n_frames),
      ptr=_take(self.ptr, pi),
      ptr_pos=_take(self.ptr_pos, pi),
      ptr_ok=pok,
      ptr_order=rank(n_ptrs),
      frame_key_scale=scale(self.frame_key_scale, fi),
      ptr_key_scale=scale(self.ptr_key_scale, pi),
    )

  def flatten(self):
    """Attention inputs in slot order: (memory [B,M,Cm], pos [B,M,Cm], mask [B,M] bool,
    key_scale [B,M] or None); spatial tokens first, the pointer tokens (static count) last."""
    b, f, hw, cm = self.feats.shape
    split = self.ptr.shape[2]
    tokens = lambda x, p: jnp.concatenate([x.reshape(b, -1, cm), p.reshape(b, -1, cm)], axis=1)
    mask = jnp.concatenate(
      [jnp.repeat(self.ok, hw, axis=1), jnp.repeat(self.ptr_ok, split, axis=1)], axis=1
    )
    scale = None
    if self.frame_key_scale is not None:
      scale = jnp.concatenate(
        [
          jnp.repeat(self.frame_key_scale, hw, axis=1),
          jnp.repeat(self.ptr_key_scale, split, axis=1),
        ],
        axis=1,
      ).astype(jnp.float32)
    return tokens(self.feats, self.ptr), tokens(self.pos, self.ptr_pos), mask, scale

  @property
  def num_ptr_tokens(self) -> int:
    """Static number of pointer tokens flatten() emits."""
    return int(self.ptr.shape[1] * self.ptr.shape[2])


def present_buckets(num_frames: int, num_ptrs: int) -> tuple[tuple[int, int], ...]:
  """Static (spatial, pointer) slot counts that memory attention is compiled for: powers of
  two below the capacity, then the capacity (F, Q). Few variants bound the compile cost; an
  early frame (1, 2, 3-4 memories) attends over only those instead of all F slots."""
  sizes = [1]
  while sizes[-1] * 2 < num_frames:
    sizes.append(sizes[-1] * 2)
  sizes = [s for s in sizes if s < num_frames]
  return tuple((s, min(s, num_ptrs)) for s in sizes) + ((int(num_frames), int(num_ptrs)),)


def bucket_index(buckets, n_frames, n_ptrs):
  """Index (int32, traced) of the smallest bucket holding n_frames and n_ptrs present slots
  (buckets grow in both counts, so the ones too small are a prefix)."""
  small = [(n_frames > s) | (n_ptrs > p) for s, p in buckets[:-1]]
  return sum((x.astype(jnp.int32) for x in small), jnp.int32(0))
