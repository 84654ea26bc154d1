"""SAM2Long (Ding et al. 2024, github:Mark12Ding/SAM2Long 7193b77): a tree search over K memory
pathways, resolved after the last frame.

Layout: every object holds K = num_pathway bank rows (object-major: row b*K + k is pathway k of
object b); the image features are shared (track_step broadcasts them). The per-frame rules are
sam2long_rules.py's; this module wires them into the one per-frame step:
  * choose: each pathway decodes its candidates with its own memory; (parent, candidate) pairs
    are kept by cumulative score acc[p] + log(iou + 1e-5), top-K on a confident frame (max
    |object logit| > uncertainty), else the diversity walk over rounded signed IoUs. Kept slot
    k becomes pathway k: the step's outputs and the policy state are gathered by parent. The
    prompt frame (offset 0) and the first tracked frame (offset 1) keep the decoder's own
    choice of pathway 0 and restart the scores at 0, as the original's single run does.
  * reorder: the bank rows follow their parent BEFORE the frame's memory is written.
  * ring_slot / ptr_slot: a frame's memory and pointer go to per-row rings that keep the
    eligible frames (iou > iou_thre and object logit > 0) plus always the newest one (a failed
    newest one is overwritten by the next frame, as SAMURAI's ring).
  * view: spatial memories are the newest R of the original's list (eligible frames searched
    newest first until max_obj_ptrs - 1 are found, plus t - 1), temporal rows by rank; object
    pointers come from the same list without its oldest entry (the original's loop stops one
    short), with offsets by rank. Keys (not values) of each memory frame and of each pointer
    are scaled by linspace(0.95, 1.05, n) by rank of its object score (prompt frame: 10).
  * resolve (host, after the last frame): the outputs along pathway 0's lineage (pathway 0 is
    always the best-scoring pair of the last frame).
Defaults are vos_inference()'s and the README's (num_pathway 3, iou_thre 0.1, uncertainty 2),
not the script's argparse ones (3, 0.3, 1); see sam2long_rules.py. The conditioning frame's
score 10 is given to every selected conditioning slot (the original assumes one). Scores and
key factors are float32 (the original's bf16 autocast rounds the factors; see the rules).
Tracking must be whole-video (track_video, or VideoPredictor.propagate_in_video, which runs it):
an interactive correction mid-video has no defined pathway to edit.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.tracking.memory import sam2long_rules as rules
from sam2pp_jax.tracking.memory.policy import MemoryPolicy, chosen_iou, pick, rank_from_newest, take
from sam2pp_jax.tracking.memory_bank import EMPTY, MemoryView

MAX_PTR_SLOTS = 30  # pointer-score slots in the state (init_state cannot see the bank's P)


@flax.struct.dataclass
class SAM2LongState:
  """Per bank row (object-major pathways): accumulated score acc [N], the parent pathway it
  was gathered from on the latest frame [N] (0..K-1), the newest spatial memory's ring slot
  head [N] (-1: none) and whether that frame was eligible head_kept [N], the pointer ring's
  newest slot phead [N] and entry count n_ptr [N], the eligible-frame count n_elig [N] (capped
  at the pointer ring's size) and each pointer slot's object score ptr_score [N,MAX_PTR_SLOTS]."""

  acc: jax.Array
  parent: jax.Array
  head: jax.Array
  head_kept: jax.Array
  phead: jax.Array
  n_ptr: jax.Array
  n_elig: jax.Array
  ptr_score: jax.Array


def _take_rows(out, rows):
  """A StepOut (before memory encoding) with row i taken from row rows[i]."""
  g = lambda x: None if x is None else jnp.take(x, rows, axis=0)
  c = out.candidates
  return out.replace(
    low_res=g(out.low_res),
    high_res=g(out.high_res),
    score=g(out.score),
    obj_ptr=g(out.obj_ptr),
    box=g(out.box),
    multi_high_res=g(out.multi_high_res),
    ious=g(out.ious),
    multi_boxes=g(out.multi_boxes),
    pix=g(out.pix),
    candidates=c.replace(
      low_res=g(c.low_res), high_res=g(c.high_res), obj_ptr=g(c.obj_ptr), boxes=g(c.boxes)
    ),
  )


def _in_order(values, keys):
  """[N,S] values sorted per row by keys [N,S] ascending (stable) and the inverse order."""
  order = jnp.argsort(keys, axis=1, stable=True)
  return jnp.take_along_axis(values, order, axis=1), jnp.argsort(order, axis=1)


@dataclasses.dataclass(frozen=True)
class SAM2Long(MemoryPolicy):
  """SAM2Long with vos_inference()'s defaults. Extensions (off = the original): scale_keys=False
  leaves the keys unscaled; drop_oldest_pointer=False also uses the oldest listed pointer."""

  name: ClassVar[str] = "sam2long"
  needs_candidates: ClassVar[bool] = True

  num_pathway: int = rules.NUM_PATHWAYS
  iou_thre: float = rules.IOU_THRE
  uncertainty: float = rules.UNCERTAINTY
  sort_impl: str = "cuda"  # tie order of the key ranks: PyTorch's CUDA sort (or "stable", CPU)
  scale_keys: bool = True
  drop_oldest_pointer: bool = True

  def __post_init__(self):
    if int(self.num_pathway) < 1:
      raise ValueError(f"sam2long: num_pathway={self.num_pathway} must be >= 1")
    if self.sort_impl not in rules.SORT_IMPLS:
      raise ValueError(
        f"sam2long: sort_impl={self.sort_impl!r}; use one of {', '.join(rules.SORT_IMPLS)}"
      )

  @property
  def rows_per_object(self) -> int:
    return int(self.num_pathway)

  def init_state(self, batch: int) -> SAM2LongState:
    k = int(self.num_pathway)
    if batch % k:
      raise ValueError(f"sam2long: {batch} bank rows is not a multiple of num_pathway={k}")
    return SAM2LongState(
      acc=jnp.zeros((batch,), jnp.float32),
      parent=jnp.asarray(np.arange(batch) % k, jnp.int32),
      head=jnp.full((batch,), -1, jnp.int32),
      head_kept=jnp.ones((batch,), bool),
      phead=jnp.full((batch,), -1, jnp.int32),
      n_ptr=jnp.zeros((batch,), jnp.int32),
      n_elig=jnp.zeros((batch,), jnp.int32),
      ptr_score=jnp.zeros((batch, MAX_PTR_SLOTS), jnp.float32),
    )

  # ------------------------------------------------------------------------------- choose
  def choose(self, state, out, cands, t, multimask):
    k = int(self.num_pathway)
    n = out.score.shape[0]
    b = n // k
    ious = out.ious.reshape(b, k, -1)
    select = partial(rules.select_for_frame, t, uncertainty=float(self.uncertainty), num_pathways=k)
    parent, cand, acc = jax.vmap(select)(state.acc.reshape(b, k), ious, out.score.reshape(b, k))
    first = jnp.asarray(t) <= 1  # prompt / first tracked frame: pathway 0's own choice
    rows = (jnp.arange(b)[:, None] * k + parent).reshape(n)
    og = _take_rows(out, rows)
    cand = cand.reshape(n)
    picked = pick(og, og.candidates, cand)  # `cands` gathered with the rows
    sel = lambda a, p: None if a is None else jnp.where(first, a, p)
    new_out = og.replace(
      low_res=sel(og.low_res, picked.low_res),
      high_res=sel(og.high_res, picked.high_res),
      obj_ptr=sel(og.obj_ptr, picked.obj_ptr),
      box=sel(og.box, picked.box),
    )
    iou = jnp.where(first, chosen_iou(og), take(og.ious, cand))
    moved = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), state)
    new = moved.replace(
      acc=acc.reshape(n).astype(jnp.float32), parent=parent.reshape(n).astype(jnp.int32)
    )
    return new_out, new, {"iou": iou, "score": og.score}

  # ------------------------------------------------------------------------------- writes
  def reorder(self, bank, state, out):
    k = int(self.num_pathway)
    n = state.parent.shape[0]
    return bank.take_rows((jnp.arange(n) // k) * k + state.parent)

  def eligible(self, meta):
    """The original's memory test of a frame (SB:564): iou > iou_thre and object logit > 0."""
    return rules.memory_frame_eligible(meta["iou"], meta["score"], float(self.iou_thre))

  def ring_slot(self, state, bank, t, meta):
    r, p = bank.mem_frame.shape[1], bank.ptr.shape[1]
    if p > MAX_PTR_SLOTS:
      raise ValueError(f"sam2long keeps at most {MAX_PTR_SLOTS} pointer slots, the bank has {p}")
    kept = self.eligible(meta)
    adv = state.head_kept  # the previous newest frame stays; else it is overwritten
    slot = jnp.where(adv, (state.head + 1) % r, state.head).astype(jnp.int32)
    pslot = jnp.where(adv, (state.phead + 1) % p, state.phead).astype(jnp.int32)
    at = pslot[:, None] == jnp.arange(MAX_PTR_SLOTS)
    return slot, state.replace(
      head=slot,
      head_kept=kept,
      phead=pslot,
      n_ptr=jnp.minimum(state.n_ptr + adv.astype(jnp.int32), p),
      n_elig=jnp.minimum(state.n_elig + kept.astype(jnp.int32), p),
      ptr_score=jnp.where(at, meta["score"][:, None].astype(jnp.float32), state.ptr_score),
    )

  def ptr_slot(self, state):
    return state.phead

  # ------------------------------------------------------------------------------- read
  def view(self, bank, t, reverse=False):
    st = bank.policy_state
    t = jnp.asarray(t, jnp.int32)
    sign = jnp.where(jnp.asarray(reverse), -1, 1)
    p = bank.ptr.shape[1]
    # the original's list: newest min(eligible, P) eligible frames, plus t-1 when it failed
    listed = jnp.minimum(st.n_elig, p) + ((st.head >= 0) & ~st.head_kept).astype(jnp.int32)
    order = bank.mem_frame * sign
    in_ring = (bank.mem_frame != EMPTY) & ((t - bank.mem_frame) * sign >= 1)
    mrank = rank_from_newest(order, in_ring)
    mem_ok = in_ring & (mrank < listed[:, None])
    prank = (st.phead[:, None] - jnp.arange(p)) % p  # pointer slots by rank from the newest
    used = listed - 1 if self.drop_oldest_pointer else listed
    ptr_ok = (st.phead[:, None] >= 0) & (prank < st.n_ptr[:, None]) & (prank < used[:, None])
    view = MemoryView(
      mem_ok=mem_ok,
      mem_tpos=rank_from_newest(order, mem_ok),
      ptr_ok=ptr_ok,
      ptr_rel=(prank + 1).astype(jnp.float32),
    )
    if not self.scale_keys:
      return view
    return view.replace(**self._key_scales(bank, t, sign, view, st.ptr_score[:, :p], prank))

  def _key_scales(self, bank, t, sign, view, ptr_score, prank):
    """Key factors (rules.memory_key_scales) in the original's list orders: frames [cond,
    oldest -> newest], pointers [cond, newest -> oldest], scattered back to the bank's slots."""
    n, r = bank.mem_frame.shape
    kc = bank.cond_frame.shape[0]
    cond_ok = jnp.broadcast_to(bank.cond_frame != EMPTY, (n, kc))
    cond_ptr_ok = cond_ok & ((t - bank.cond_frame) * sign >= 0)
    ten = jnp.full((n, kc), rules.COND_FRAME_SCORE, jnp.float32)
    big = jnp.int32(1 << 20)
    mem_key = jnp.where(view.mem_ok, -view.mem_tpos, big)  # oldest (largest rank) first
    mem_s, mem_inv = _in_order(bank.mem_score, mem_key)
    mem_v, _ = _in_order(view.mem_ok, mem_key)
    ptr_key = jnp.where(view.ptr_ok, prank, big)  # newest first
    ptr_s, ptr_inv = _in_order(ptr_score, ptr_key)
    ptr_v, _ = _in_order(view.ptr_ok, ptr_key)
    scales = partial(rules.memory_key_scales, sort_impl=self.sort_impl)
    fs, ps = jax.vmap(scales)(
      jnp.concatenate([ten, mem_s], 1),
      jnp.concatenate([cond_ok, mem_v], 1),
      jnp.concatenate([ten, ptr_s], 1),
      jnp.concatenate([cond_ptr_ok, ptr_v], 1),
    )
    back = lambda x, inv: jnp.take_along_axis(x, inv, axis=1)
    return {
      "frame_key_scale": jnp.concatenate([fs[:, :kc], back(fs[:, kc:], mem_inv)], 1),
      "ptr_key_scale": jnp.concatenate([ps[:, :kc], back(ps[:, kc:], ptr_inv)], 1),
    }

  # ------------------------------------------------------------------------------- output
  def record(self, out) -> dict:
    st = out.policy_state
    return {"sam2long_parent": st.parent, "sam2long_score": st.acc}

  def resolve(self, rows: dict):
    """Host rows [T,B*K,...] -> pathway 0's lineage [T,B,...] (the original returns the masks
    of the last frame's best pathway's ancestry), with per-frame pathway_scores /
    pathway_parents [T,B,K] and the lineage's pathway [T,B]."""
    rows = dict(rows)
    parents = np.asarray(rows.pop("sam2long_parent"))
    scores = np.asarray(rows.pop("sam2long_score"))
    k = int(self.num_pathway)
    t, n = parents.shape
    b = n // k
    par = parents.reshape(t, b, k)
    path = np.zeros((t, b), np.int64)
    cur = np.zeros((b,), np.int64)
    for f in range(t - 1, -1, -1):
      path[f] = cur
      cur = par[f, np.arange(b), cur]
    index = np.arange(b)[None, :] * k + path  # [T,B] rows of the lineage
    out = {key: np.asarray(v)[np.arange(t)[:, None], index] for key, v in rows.items()}
    extras = {
      "pathway_scores": scores.reshape(t, b, k),
      "pathway_parents": par,
      "pathway": path.astype(np.int32),
    }
    return out, extras
