"""SAM2Long's per-frame decisions (pathway selection, key scaling) as fixed-shape, jit-able JAX.

SAM2Long (github.com/Mark12Ding/SAM2Long, read at commit 7193b77) keeps P memory pathways. On
every frame each pathway predicts M = 3 candidate masks with predicted IoUs and one object-score
logit; P of the P * M (pathway, candidate) pairs survive and become the next frame's pathways.
The functions here make that choice with fixed shapes and no Python control flow on traced
values, so a tracker can run them inside `jax.jit` / `lax.scan`. The model itself is elsewhere.

References below: VP = sam2/sam2_video_predictor.py, SB = sam2/modeling/sam2_base.py,
MA = sam2/modeling/memory_attention.py, VOS = tools/vos_inference.py, TR = tools/README.md.

Rules, as verified in the original
----------------------------------
* Cumulative score (VP:1046-1051): pair (p, j) scores acc[p] + log(iou[p, j] + 1e-5), natural
  log, no clipping, no renormalisation. `acc` is the parent's stored score (VP:1046, 1100).
* Confident frame (VP:1048, 1056-1058): if max_p |obj[p]| > uncertainty (strict), keep the first
  P pairs of the list sorted by score, descending. The list is built pathway-major, candidate-
  minor (VP:1045-1053) and sorted with Python's stable `sorted(..., reverse=True)` (VP:1055), so
  equal scores keep that order (lower p, then lower j first).
* Uncertain frame (VP:1059-1067): walk the sorted list; keep a pair only if round(v, 2) has not
  been seen yet, where v = iou if obj[p] > 0 else -iou (VP:1052; strict > 0, so obj == 0 flips the
  sign, and the object score is the pathway's, shared by its M candidates); stop at P pairs.
  round() is applied to the float32 IoU converted to a Python float (VP:1052 `.float()` then
  `.item()`, VP:1062). -0.0 == 0.0, so +-iou that both round to 0.00 collide.
* Fill-up (VP:1068-1078): if fewer than P unique values exist, each pathway id i = 0, 1, ... (in
  id order, not score order) that owns none of the kept pairs adds its own best pair (its first
  in the sorted list, even if its rounded value was seen), until P pairs are kept. This always
  reaches P. The output order is the walk's order followed by the fill-ups in pathway-id order.
* Output order matters: kept slot k becomes pathway k of the next frame (VP:1086-1104, 1103), and
  the returned video uses pathway 0's ancestry after the last frame (VP:741-747). Slot 0 is
  always the best-scoring pair (it is kept first in both branches).
* First tracked frame (frame_idx == start + 1, VP:959-1019): a single pathway runs (SB:886-891
  with mem_pick_index == 0): its mask is the candidate of highest predicted IoU (SB:382,
  torch.argmax, first maximum on ties), its stored IoU is that maximum (SB:888), and every
  pathway's accumulated score restarts at 0 (VP:1007): that frame's IoU never enters the score.
  All P pathways then point at that one memory (VP:1018), so on frame start + 2 the P pathways
  are identical; with the stable sort a confident frame then keeps (0, j*), (1, j*), (2, j*) and
  the pathways stay identical until the first uncertain frame. The conditioning (prompt) frame
  runs no selection at all.
* Memory eligibility (SB:556-569): walking back from frame_idx - 1 to start + 1, a past frame is
  used only if its stored IoU > iou_thre and its object score > 0 (SB:564, both strict); at most
  max_obj_ptrs_in_encoder - 1 (= 15) such frames are collected (SB:566), and frame_idx - 1 is
  appended if it failed the test (SB:568-569). The last 6 of that list are the memory frames,
  given temporal positions by their rank in the list, not by their frame distance (SB:572-580).
* Key scaling (MA:76-102): every memory-attention layer multiplies the cross-attention keys
  (memory + pos; the values stay unscaled, MA:107) of each memory frame and of each object
  pointer by a factor from linspace(0.95, 1.05, n) indexed by the rank of that entry's object
  score, lowest -> 0.95 (MA:97-98: scatter along torch.argsort). Frames and pointers are ranked
  separately. The conditioning frame and its pointer enter with the score 10 (SB:582, 622).
  Frame order is [cond, memory frames oldest -> newest] (SB:583-589); pointer order is
  [cond, newest -> oldest] (SB:623-631). When there is one frame (only the conditioning frame,
  i.e. on frame start + 1) nothing is scaled, pointers included (MA:85-86); a lone pointer next to
  >= 2 frames gets linspace(..., 1) = [0.95] (on frame start + 2, see the pointer quirk below).

Quirks
------
* The candidate loop hard-codes 3 candidates (VP:1050); the functions here take any M.
* The accumulated score is read from frame_idx - 1 (VP:1046): only forward tracking works.
* Tie-breaking of the key ranks: torch.argsort defaults to an unstable sort; on CUDA, rows of
  <= 32 entries go through a 32-slot bitonic network (PyTorch aten/src/ATen/native/cuda/Sort.cu
  sortKeyValueInplace -> SmallBitonicSort, SortUtils.cuh bitonicSort), whose comparators swap
  equal keys: two equal scores come out in reverse order, e.g. [s, s] ranks as [1, 0]. We
  transcribe that network (sort_impl="cuda", the default, unverified on a GPU here);
  sort_impl="stable" gives the index order that PyTorch's CPU sort produced (checked on 2.13).
* The linspace is made on the CPU in float32 and cast to the scores' dtype (MA:91-92
  `.to(weight_frame)`). Under the original's bf16 autocast (VOS:138, 278) the object logits are
  bf16, so the factors are bf16-rounded (0.94921875 ... 1.046875), and bf16 logits tie often.
  `key_scales` returns factors in the scores' dtype: pass bf16 scores to get that behaviour.
  The float32 factors reproduce torch's CPU linspace bit for bit (it rounds start + step * i once,
  like an FMA, from each end; checked against torch 2.13 for n <= 32).
* Pointers (SB:623-625): the loop stops when t_diff >= len(valid_indices), so only
  len(valid_indices) - 1 past pointers are used; with one valid past frame there is none, and
  the conditioning pointer alone gets 0.95. Pointer temporal offsets are ranks, not distances.
* One conditioning frame is assumed: the score 10 is added once however many conditioning
  frames are selected (SB:582, 622), the frame / score lists are zipped assuming so (SB:583),
  and MA:79-82 hard-code 4096 tokens per frame (64 x 64) and 4 tokens per pointer.
* SB:556 tests `mem_pick_index == 0` on a dict after the first tracked frame (always False).
* Scores are float64 in the original (np.log of Python floats, VP:1051) and float32 here (or the
  inputs' dtype when wider); near-equal scores of different pathways may order differently.
* NaN inputs are unsupported (Python's sorted/max give order-dependent results on NaN).

Defaults: the script's argparse and the documented commands disagree. TR:14-16 (and TR:37-39,
72-74) run with --num_pathway 3 --iou_thre 0.1 --uncertainty 2, the same as the function
defaults vos_inference(...) VOS:146-148 and vos_separate_inference_per_object(...) VOS:286-288
and SB:518; but argparse defaults are num_pathway 3 (VOS:483), iou_thre 0.3 (VOS:489),
uncertainty 1 (VOS:495), and main() passes the argparse values (VOS:563-565). We default to the
documented values and keep the argparse ones as constants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_PATHWAYS = 3  # TR:14, VOS:146 and argparse VOS:483 all agree
IOU_THRE = 0.1  # TR:15, VOS:147/287, SB:518 (argparse VOS:489 says 0.3)
UNCERTAINTY = 2.0  # TR:16, VOS:148/288 (argparse VOS:495 says 1)
ARGPARSE_IOU_THRE = 0.3  # VOS:489: what `python tools/vos_inference.py` runs without flags
ARGPARSE_UNCERTAINTY = 1.0  # VOS:495
NUM_CANDIDATES = 3  # VP:1050 (hard-coded `range(3)`)
IOU_LOG_EPS = 1e-5  # VP:1051
ROUND_DECIMALS = 2  # VP:1062 (the key below is specific to 2)
COND_FRAME_SCORE = 10.0  # SB:582, SB:622 (bf16 ones * 10, exact)
KEY_SCALE_LOW = 0.95  # MA:83
KEY_SCALE_HIGH = 1.05  # MA:84
SORT_IMPLS = ("cuda", "stable")
_CUDA_SORT_SLOTS = 32  # SmallBitonicSort's fixed network size


def _greater(x: jax.Array, threshold) -> jax.Array:
  """x > threshold as real numbers (Python compares a float32 value with a float64 threshold)."""
  if isinstance(threshold, (int, float, np.integer, np.floating)):
    t = float(threshold)
    t32 = np.float32(t)
    # t32 is the float32 nearest t: if it lies above t, every float32 >= t32 exceeds t.
    return x >= t32 if float(t32) > t else x > t32
  return x > threshold


def candidate_scores(acc_scores: jax.Array, ious: jax.Array) -> jax.Array:
  """[P] accumulated scores, [P, M] predicted IoUs -> [P, M] acc + log(iou + 1e-5) (VP:1051)."""
  dtype = jnp.promote_types(jnp.result_type(acc_scores), jnp.float32)
  acc = jnp.asarray(acc_scores, dtype)
  return acc[:, None] + jnp.log(jnp.asarray(ious, dtype) + IOU_LOG_EPS)


def round2_key(values: jax.Array) -> jax.Array:
  """int32 key with key(a) == key(b) iff Python's round(float(a), 2) == round(float(b), 2).

  Exact for every float32 (incl. half-way ties like 0.125 -> 0.12 and values such as
  float32(0.025) = 0.02500000037 -> 0.03, which round(x * 100) in float32 gets wrong): x * 100 is
  rebuilt exactly as the integer mantissa * 25 times a power of two and rounded half-to-even in
  int32. |x| >= 2**21 have a quarter-unit spacing, round to themselves, and key on their bits.
  NaN gets a key too, but Python never finds a NaN in a set: callers must mask it.
  """
  x = jnp.asarray(values).astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  mag = bits & 0x7FFFFFFF
  negative = bits < 0
  field = mag >> 23
  normal = field > 0
  mant = jnp.where(normal, (mag & 0x7FFFFF) | 0x800000, mag & 0x7FFFFF)
  exp2 = jnp.where(normal, field - 150, -149)  # |x| = mant * 2**exp2
  n = mant * 25  # |x| * 100 = n * 2**(exp2 + 2), n < 2**29
  shift = -(exp2 + 2)
  big = shift <= 0
  t = jnp.clip(shift, 1, 30)  # n < 2**29, so any larger shift rounds to 0 as t = 30 does
  q = n >> t
  rem = n & ((1 << t) - 1)
  half = 1 << (t - 1)
  k = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(jnp.int32)
  # Small keys stay below 2**21 * 100 < 2**28; big ones are float bits >= 148 << 23 > 2**30.
  return jnp.where(big, jnp.where(negative, -mag, mag), jnp.where(negative, -k, k))


def _check_shapes(acc_scores, ious, obj_logits, num_pathways: int) -> tuple[int, int]:
  if len(ious.shape) != 2:
    raise ValueError(f"ious must be [P, M], got shape {ious.shape}")
  p, m = ious.shape
  if tuple(acc_scores.shape) != (p,) or tuple(obj_logits.shape) != (p,):
    raise ValueError(
      f"acc_scores {acc_scores.shape} and obj_logits {obj_logits.shape} must be [{p}] for ious "
      f"{ious.shape}"
    )
  if int(num_pathways) != p:
    # VP:1021/1057/1066/1071: the original runs and keeps the same number of pathways.
    raise ValueError(f"num_pathways={num_pathways} must equal the number of pathways {p}")
  return p, m


def select_pathways(
  acc_scores: jax.Array,
  ious: jax.Array,
  obj_logits: jax.Array,
  *,
  uncertainty: float = UNCERTAINTY,
  num_pathways: int = NUM_PATHWAYS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[P] acc scores, [P, M] IoUs, [P] object logits -> the P kept pairs, in the original's order.

  Returns (parent [P] int32, candidate [P] int32, new_scores [P]): slot k is the next frame's
  pathway k, made of candidate[k] of pathway parent[k] (VP:1054-1104, see the module docstring).
  """
  acc_scores, ious, obj_logits = map(jnp.asarray, (acc_scores, ious, obj_logits))
  p, m = _check_shapes(acc_scores, ious, obj_logits, num_pathways)
  num = p * m
  scores = candidate_scores(acc_scores, ious).reshape(num)  # pathway-major, as VP:1045-1053
  order = jnp.argsort(-scores, stable=True)  # descending; ties keep list order (VP:1055)
  parent_of = jnp.asarray(np.repeat(np.arange(p), m), jnp.int32)

  obj = obj_logits.astype(jnp.float32)
  iou32 = ious.astype(jnp.float32)
  signed = jnp.where((obj > 0)[:, None], iou32, -iou32).reshape(num)  # VP:1052
  key = round2_key(signed)[order]
  real = ~jnp.isnan(signed)[order]
  same = (key[:, None] == key[None, :]) & real[:, None] & real[None, :]
  earlier = jnp.asarray(np.tri(num, k=-1, dtype=bool))  # [r, r2]: r2 < r
  first = ~jnp.any(same & earlier, axis=1)  # first occurrence of its rounded value
  kept = first & (jnp.cumsum(first) <= p)  # the walk keeps the first P first occurrences
  n_kept = jnp.sum(kept)
  walk = jnp.argsort(jnp.where(kept, 0, 1), stable=True)  # kept sorted positions, in order

  ids = jnp.arange(p, dtype=jnp.int32)
  owner = parent_of[order][None, :] == ids[:, None]  # [P, num]
  represented = jnp.any(owner & kept[None, :], axis=1)
  best = jnp.argmax(owner, axis=1)  # each pathway's first sorted position
  fill = jnp.argsort(represented.astype(jnp.int32), stable=True)  # unrepresented ids first
  slots = jnp.arange(p)
  uncertain_pos = jnp.where(slots < n_kept, walk[slots], best[fill[jnp.maximum(slots - n_kept, 0)]])

  confident = _greater(jnp.max(jnp.abs(obj)), uncertainty)  # VP:1056
  flat = order[jnp.where(confident, slots, uncertain_pos)]
  return parent_of[flat], (flat % m).astype(jnp.int32), scores[flat]


def first_tracked_frame(
  ious: jax.Array, *, num_pathways: int = NUM_PATHWAYS
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[P, M] IoUs (rows identical: one model run) -> select_pathways' outputs for frame start+1.

  Pathway 0's highest-IoU candidate (first on ties, SB:382) seeds every pathway, and the scores
  restart at 0 (VP:1007, 1018), so this frame's IoU is never accumulated.
  """
  ious = jnp.asarray(ious)
  if len(ious.shape) != 2 or ious.shape[0] != int(num_pathways):
    raise ValueError(f"ious must be [{num_pathways}, M], got shape {ious.shape}")
  best = jnp.argmax(ious[0]).astype(jnp.int32)
  dtype = jnp.promote_types(jnp.result_type(ious), jnp.float32)
  return (
    jnp.zeros((num_pathways,), jnp.int32),
    jnp.full((num_pathways,), best, jnp.int32),
    jnp.zeros((num_pathways,), dtype),
  )


def select_for_frame(
  frame_offset: jax.Array | int,
  acc_scores: jax.Array,
  ious: jax.Array,
  obj_logits: jax.Array,
  *,
  uncertainty: float = UNCERTAINTY,
  num_pathways: int = NUM_PATHWAYS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The decision for frame start + frame_offset (>= 1): first_tracked_frame at offset 1, else
  select_pathways; a traced offset is fine (both branches are computed, VP:959 vs VP:1020)."""
  first = first_tracked_frame(ious, num_pathways=num_pathways)
  later = select_pathways(
    acc_scores, ious, obj_logits, uncertainty=uncertainty, num_pathways=num_pathways
  )
  is_first = jnp.asarray(frame_offset) <= 1
  return tuple(jnp.where(is_first, a, b.astype(a.dtype)) for a, b in zip(first, later))


def initial_scores(num_pathways: int = NUM_PATHWAYS) -> jax.Array:
  """[P] float32 zeros: the accumulated scores stored on frame start + 1 (VP:1007)."""
  return jnp.zeros((num_pathways,), jnp.float32)


def memory_frame_eligible(
  ious: jax.Array, obj_logits: jax.Array, iou_thre: float = IOU_THRE
) -> jax.Array:
  """Whether a past frame of a pathway may be a memory frame / pointer: iou > iou_thre and
  object logit > 0, both strict (SB:564); frame_idx - 1 is used regardless (SB:568-569)."""
  ious = jnp.asarray(ious)
  return _greater(ious.astype(jnp.float32), iou_thre) & (jnp.asarray(obj_logits) > 0)


def _linspace_table(n_max: int) -> np.ndarray:
  """[n_max + 1, n_max] float32; row n holds torch.linspace(0.95, 1.05, n) padded with 1.0.

  torch's CPU kernel computes start + step * i below n // 2 and end - step * (n - 1 - i) above,
  each rounded once; float64 holds those products and sums exactly, so one cast reproduces it.
  One step gives [start].
  """
  lo, hi = np.float32(KEY_SCALE_LOW), np.float32(KEY_SCALE_HIGH)
  table = np.ones((n_max + 1, n_max), np.float32)
  if n_max >= 1:
    table[1, 0] = lo  # torch fills a 1-step linspace with its start
  for n in range(2, n_max + 1):
    step = np.float64((hi - lo) / np.float32(n - 1))
    for i in range(n):
      if i < n // 2:
        table[n, i] = np.float32(np.float64(lo) + step * i)
      else:
        table[n, i] = np.float32(np.float64(hi) - step * (n - 1 - i))
  return table


def _cuda_small_argsort(keys: jax.Array, valid: jax.Array) -> jax.Array:
  """Ascending argsort of the valid prefix through PyTorch's 32-slot CUDA bitonic network.

  Transcribes SortUtils.cuh bitonicSort / bitonicSwap with LTOp<K, true> (NaN sorts last):
  invalid slots sink to the end, and each ascending comparator swaps equal keys.
  """
  s = _CUDA_SORT_SLOTS
  pad = s - keys.shape[0]
  k = jnp.concatenate([keys, jnp.zeros((pad,), keys.dtype)])
  ok = jnp.concatenate([valid, jnp.zeros((pad,), bool)])
  v = jnp.arange(s, dtype=jnp.int32)
  tid = np.arange(s // 2)

  def stage(k, v, ok, stride, descending_half):
    pos = 2 * tid - (tid & (stride - 1))
    other = pos + stride
    ka, kb, oka, okb = k[pos], k[other], ok[pos], ok[other]
    less = (jnp.isnan(kb) & ~jnp.isnan(ka)) | (ka < kb)
    swap = ((less & oka) | ~okb) == jnp.asarray(descending_half)
    perm = np.arange(s)
    perm_a = jnp.where(swap, other, pos)
    perm_b = jnp.where(swap, pos, other)
    perm = jnp.asarray(perm).at[pos].set(perm_a).at[other].set(perm_b)
    return k[perm], v[perm], ok[perm]

  size = 2
  while size < s:
    stride = size // 2
    while stride > 0:
      k, v, ok = stage(k, v, ok, stride, (tid & (size // 2)) != 0)
      stride //= 2
    size *= 2
  stride = s // 2
  while stride > 0:
    k, v, ok = stage(k, v, ok, stride, np.zeros(s // 2, bool))
    stride //= 2
  return v


def key_scales(
  obj_scores: jax.Array, valid: jax.Array | None = None, *, sort_impl: str = "cuda"
) -> jax.Array:
  """[N] object scores of a masked set of memory entries -> [N] key factors (1 where invalid).

  The valid entries, taken in array order (which must be the original's list order for ties to
  break alike), get torch.linspace(0.95, 1.05, n)[rank of their score] (MA:91-98); a lone entry
  gets 0.95. Factors come in the scores' dtype, as MA:91 casts them (`.to(weight_frame)`).
  """
  if sort_impl not in SORT_IMPLS:
    raise ValueError(f"sort_impl={sort_impl!r} is unknown; use one of {', '.join(SORT_IMPLS)}")
  scores = jnp.asarray(obj_scores)
  if len(scores.shape) != 1:
    raise ValueError(f"obj_scores must be [N], got shape {scores.shape}")
  size = scores.shape[0]
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  valid = jnp.ones((size,), bool) if valid is None else jnp.asarray(valid, bool)
  if size == 0:
    return scores
  order = jnp.argsort(~valid, stable=True)  # valid entries first, in array order
  keys, ok = scores[order], valid[order]
  n = jnp.sum(ok)
  if sort_impl == "cuda":
    if size > _CUDA_SORT_SLOTS:
      raise ValueError(f"the CUDA small sort covers at most {_CUDA_SORT_SLOTS} entries, got {size}")
    ranked = _cuda_small_argsort(keys, ok)  # [32] compacted indices by rank
  else:
    ranked = jnp.argsort(jnp.where(ok, keys, jnp.nan), stable=True)  # NaN last, like torch CPU
  slots = ranked.shape[0]
  table = np.ones((size + 1, slots), np.float32)
  table[:, :size] = _linspace_table(size)
  factor_by_rank = jnp.asarray(table)[n]  # [slots], 1.0 beyond n
  by_compact = jnp.zeros((slots,), jnp.float32).at[ranked].set(factor_by_rank)[:size]
  out = jnp.zeros((size,), jnp.float32).at[order].set(by_compact)
  return out.astype(scores.dtype)


def memory_key_scales(
  frame_scores: jax.Array,
  frame_valid: jax.Array,
  ptr_scores: jax.Array,
  ptr_valid: jax.Array,
  *,
  sort_impl: str = "cuda",
) -> tuple[jax.Array, jax.Array]:
  """Key factors of the memory frames and of the object pointers, ranked separately; all 1 when
  only one frame (the conditioning one) is in memory, pointers included (MA:85-86)."""
  frames = key_scales(frame_scores, frame_valid, sort_impl=sort_impl)
  ptrs = key_scales(ptr_scores, ptr_valid, sort_impl=sort_impl)
  single = jnp.sum(jnp.asarray(frame_valid, bool)) <= 1
  return (
    jnp.where(single, jnp.ones_like(frames), frames),
    jnp.where(single, jnp.ones_like(ptrs), ptrs),
  )
