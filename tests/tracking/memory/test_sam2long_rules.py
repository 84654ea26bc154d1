"""SAM2Long's pathway selection and memory-key scaling: hand-derived decisions, a plain-Python
reference of the original's loop on random frames, and the CUDA bitonic tie order."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.tracking.memory.sam2long_rules import (
  COND_FRAME_SCORE,
  IOU_THRE,
  UNCERTAINTY,
  candidate_scores,
  first_tracked_frame,
  initial_scores,
  key_scales,
  memory_frame_eligible,
  memory_key_scales,
  round2_key,
  select_for_frame,
  select_pathways,
)

F32 = np.float32
_select_jit = jax.jit(select_pathways, static_argnames=("uncertainty", "num_pathways"))
_key_scales_jit = jax.jit(key_scales, static_argnames=("sort_impl",))


def _select(acc, ious, obj, uncertainty=2.0):
  acc = jnp.asarray(acc, jnp.float32)
  ious = jnp.asarray(ious, jnp.float32)
  obj = jnp.asarray(obj, jnp.float32)
  parent, cand, score = _select_jit(
    acc, ious, obj, uncertainty=uncertainty, num_pathways=acc.shape[0]
  )
  return parent.tolist(), cand.tolist(), np.asarray(score)


def _log(x):
  return math.log(float(F32(x)) + 1e-5)


# ---------------------------------------------------------------------------------------------
# Scores and hand-derived decisions


def test_candidate_scores_add_log_of_iou_plus_1e_minus_5():
  acc = [0.0, -1.5]
  ious = [[1.0, 0.5, 0.0], [0.25, 0.75, 1e-3]]
  got = np.asarray(candidate_scores(jnp.asarray(acc), jnp.asarray(ious, jnp.float32)))
  want = [[a + _log(i) for i in row] for a, row in zip(acc, ious)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert got[0, 2] == pytest.approx(math.log(1e-5), rel=1e-6)  # IoU 0 stays finite, unclipped


def test_confident_frame_keeps_the_top_scores_even_with_equal_rounded_ious():
  acc = [0.0, -0.1, -0.2]
  ious = [[0.9, 0.9, 0.3], [0.95, 0.5, 0.2], [0.7, 0.6, 0.1]]
  # scores: (0,0) -0.105  (0,1) -0.105  (1,0) -0.151  (1,1) -0.793  (2,0) -0.557 ...
  # max |obj| = 5 > 2: top 3 by score; (0,0) and (0,1) tie exactly and keep list order.
  parent, cand, score = _select(acc, ious, [5.0, 1.0, -3.0])
  assert (parent, cand) == ([0, 0, 1], [0, 1, 0])
  np.testing.assert_allclose(score, [_log(0.9), _log(0.9), -0.1 + _log(0.95)], rtol=1e-6)


def test_confidence_threshold_is_strict():
  acc, ious = [0.0, -0.1], [[0.9, 0.9, 0.3], [0.95, 0.5, 0.2]]
  # |obj| max == 2 is not > 2: the uncertain walk skips the duplicate 0.90 of (0, 1).
  assert _select(acc, ious, [2.0, -1.0])[:2] == ([0, 1], [0, 0])
  assert _select(acc, ious, [2.0001, -1.0])[:2] == ([0, 0], [0, 1])


def test_uncertain_frame_skips_duplicate_rounded_signed_ious():
  acc = [0.0, -0.05, -0.5]
  ious = [[0.902, 0.899, 0.40], [0.896, 0.80, 0.30], [0.95, 0.85, 0.20]]
  # sorted: (0,0) -0.103 [0.90]  (0,1) -0.107 [0.90]  (1,0) -0.160 [0.90]  (1,1) -0.273 [0.80]
  #         (2,0) -0.551 [0.95]  ...  -> keep (0,0), skip, skip, keep (1,1), keep (2,0).
  parent, cand, score = _select(acc, ious, [1.5, 0.5, 1.9])
  assert (parent, cand) == ([0, 1, 2], [0, 1, 0])
  np.testing.assert_allclose(score, [_log(0.902), -0.05 + _log(0.8), -0.5 + _log(0.95)], rtol=1e-6)
  # The same frame, confident: plain top 3.
  assert _select(acc, ious, [2.5, 0.5, 1.9])[:2] == ([0, 0, 1], [0, 1, 0])


def test_fill_up_adds_each_unrepresented_pathways_best_pair():
  acc = [-1.0, 0.0, -2.0]
  ious = [[0.90, 0.50, 0.899], [0.901, 0.898, 0.897], [0.902, 0.5004, 0.896]]
  # sorted: (1,0)(1,1)(1,2) [0.90]  (0,0)(0,2) [0.90]  (0,1) [0.50]  (2,0)(2,2) [0.90]  (2,1) [0.50]
  # unique values: (1,0) and (0,1) only; pathway 2 is unrepresented -> its best, (2,0).
  parent, cand, score = _select(acc, ious, [0.3, 0.2, 0.1])
  assert (parent, cand) == ([1, 0, 2], [0, 1, 0])
  np.testing.assert_allclose(score, [_log(0.901), -1 + _log(0.5), -2 + _log(0.902)], rtol=1e-6)


def test_fill_up_goes_in_pathway_id_order_not_score_order():
  acc = [-3.0, -1.0, 0.0, -2.0]
  ious = [[0.9, 0.901, 0.902], [0.899, 0.9, 0.903], [0.9, 0.9, 0.9], [0.904, 0.897, 0.9]]
  # every value rounds to 0.90: the walk keeps only the best pair (2,0); then pathways 0, 1, 3
  # add their best pairs in id order although pathway 0 scores worst.
  parent, cand, score = _select(acc, ious, [0.1, 0.1, 0.1, 0.1])
  assert (parent, cand) == ([2, 0, 1, 3], [0, 2, 2, 0])
  assert score[1] < score[3] < score[2]


def test_negative_object_score_flips_the_sign_and_makes_values_distinct():
  acc, ious = [0.0, -0.01], [[0.9, 0.3, 0.2], [0.9, 0.2, 0.1]]
  # sorted: (0,0) [0.90 * sign0]  (1,0) [0.90 * sign1]  (0,1) ...
  assert _select(acc, ious, [1.0, 1.0])[:2] == ([0, 0], [0, 1])  # 0.90 twice: skip (1,0)
  assert _select(acc, ious, [-1.0, 1.0])[:2] == ([0, 1], [0, 0])  # -0.90 vs 0.90
  assert _select(acc, ious, [0.0, 1.0])[:2] == ([0, 1], [0, 0])  # logit 0 is not > 0: flips
  # Values rounding to 0.00 collide across signs (round(-0.004, 2) == -0.0 == 0.0).
  small = [[0.004, 0.001, 0.0001], [0.003, 0.002, 0.0002]]
  assert _select(acc, small, [-1.0, 1.0])[:2] == ([0, 1], [0, 0])  # the fill-up, not a value


def test_rounding_ties_and_float32_values_round_like_python():
  # 0.125 is exact: Python rounds half to even -> 0.12, a duplicate of 0.12; (0,2) is kept.
  assert round(0.125, 2) == 0.12
  assert _select([0.0, -10.0], [[0.125, 0.12, 0.01], [0.9, 0.8, 0.7]], [1.0, 1.0])[:2] == (
    [0, 0],
    [0, 2],
  )
  # float32(0.025) = 0.02500000037 -> 0.03 (a duplicate of 0.03); round(x * 100) in float32
  # would see the exact 2.5 and give 0.02.
  assert round(float(F32(0.025)), 2) == 0.03 and float(np.round(F32(0.025) * F32(100))) == 2.0
  assert _select([0.0, -10.0], [[0.03, 0.025, 0.001], [0.9, 0.8, 0.7]], [1.0, 1.0])[:2] == (
    [0, 0],
    [0, 2],
  )
  # float32(0.015) = 0.01499999966 -> 0.01, distinct from 0.02.
  assert round(float(F32(0.015)), 2) == 0.01
  assert _select([0.0, -10.0], [[0.02, 0.015, 0.001], [0.9, 0.8, 0.7]], [1.0, 1.0])[:2] == (
    [0, 0],
    [0, 1],
  )


def test_round2_key_matches_python_round_around_every_boundary():
  base = np.arange(-240, 241, dtype=np.float64) / 200.0  # every x.xx5 boundary in [-1.2, 1.2]
  xs = [F32(b) for b in base]
  for _ in range(3):  # and 3 float32 steps either side
    xs += [np.nextafter(x, F32(9)) for x in xs[-len(base) :]]
  xs += [np.nextafter(F32(b), F32(-9)) for b in base]
  xs += [F32(v) for v in (0.0, -0.0, 1e-40, -1e-40, 0.004999, 0.005, 2097151.875, 3e6, -3e6)]
  xs = np.asarray(xs, np.float32)
  want = [round(float(x), 2) for x in xs]
  key = np.asarray(round2_key(jnp.asarray(xs)))
  for i in range(len(xs)):  # equal keys <=> equal Python roundings (checked on neighbours)
    for j in (i + 1, i + len(base), i + 2 * len(base)):
      if j < len(xs):
        assert (key[i] == key[j]) == (want[i] == want[j]), (xs[i], xs[j])
  small = np.abs(xs) < 2**21
  assert np.array_equal(key[small], [int(round(w * 100)) for w, s in zip(want, small) if s])


def test_thresholds_compare_as_real_numbers():
  # float32(0.1) = 0.10000000149 > 0.1, as Python sees it; a float32 compare would say no.
  ious = jnp.asarray([F32(0.1), F32(0.0999999), F32(0.5), F32(0.5)])
  obj = jnp.asarray([1.0, 1.0, 0.0, 3.0])
  assert IOU_THRE == 0.1
  assert memory_frame_eligible(ious, obj).tolist() == [True, False, False, True]
  assert memory_frame_eligible(ious, obj, 0.5).tolist() == [False, False, False, False]


def test_identical_pathways_on_the_second_tracked_frame():
  acc = initial_scores(3)
  assert acc.dtype == jnp.float32 and acc.tolist() == [0.0, 0.0, 0.0]
  ious = [[0.6, 0.9, 0.3]] * 3  # P identical runs of the same memory
  # Confident: the three copies of (p, 1) tie and keep list order -> pathways stay identical.
  assert _select(acc, ious, [4.0] * 3)[:2] == ([0, 1, 2], [1, 1, 1])
  # Uncertain: pathway 0's three distinct candidates.
  assert _select(acc, ious, [1.0] * 3)[:2] == ([0, 0, 0], [1, 0, 2])


def test_first_tracked_frame_takes_the_first_best_iou_and_zero_scores():
  ious = jnp.asarray([[0.7, 0.9, 0.9]] * 3, jnp.float32)
  parent, cand, score = first_tracked_frame(ious, num_pathways=3)
  assert parent.tolist() == [0, 0, 0] and cand.tolist() == [1, 1, 1]
  assert score.tolist() == [0.0, 0.0, 0.0]
  step = jax.jit(functools.partial(select_for_frame, uncertainty=UNCERTAINTY, num_pathways=3))
  acc = jnp.asarray([0.0, -1.0, -2.0])
  obj = jnp.asarray([5.0, 5.0, 5.0])
  got1 = step(jnp.asarray(1), acc, ious, obj)
  got2 = step(jnp.asarray(2), acc, ious, obj)
  assert [g.tolist() for g in got1[:2]] == [[0, 0, 0], [1, 1, 1]]
  assert got1[2].tolist() == [0.0, 0.0, 0.0]
  assert [g.tolist() for g in got2[:2]] == [[0, 0, 0], [1, 2, 0]]  # 0.9, 0.9, then 0.7


def test_select_pathways_jits_and_checks_shapes():
  acc = jnp.asarray([0.0, -0.05, -0.5])
  ious = jnp.asarray([[0.902, 0.899, 0.40], [0.896, 0.80, 0.30], [0.95, 0.85, 0.20]])
  obj = jnp.asarray([1.5, 0.5, 1.9])
  fn = jax.jit(functools.partial(select_pathways, uncertainty=2.0, num_pathways=3))
  parent, cand, score = fn(acc, ious, obj)
  assert parent.dtype == jnp.int32 and cand.dtype == jnp.int32 and score.dtype == jnp.float32
  assert (parent.tolist(), cand.tolist()) == ([0, 1, 2], [0, 1, 0])
  with pytest.raises(ValueError):
    select_pathways(acc, ious, obj, num_pathways=2)


# ---------------------------------------------------------------------------------------------
# Plain-Python reference of the per-frame choice (VP:1043-1078), on random frames


def _reference(acc, ious, obj, uncertainty):
  pairs = []
  for p, row in enumerate(ious):
    for j, iou in enumerate(row):
      pairs.append((p, j, acc[p] + math.log(iou + 1e-5), iou if obj[p] > 0 else -iou))
  ranked = sorted(pairs, key=lambda t: t[2], reverse=True)
  want = len(acc)
  if max(abs(o) for o in obj) > uncertainty:
    kept = ranked[:want]
  else:
    kept, seen = [], set()
    for t in ranked:
      if len(kept) == want:
        break
      value = round(t[3], 2)
      if value not in seen:
        seen.add(value)
        kept.append(t)
    owners = {t[0] for t in kept}
    for p in range(len(acc)):
      if len(kept) == want:
        break
      if p not in owners:
        kept.append(next(t for t in ranked if t[0] == p))
  return [t[0] for t in kept], [t[1] for t in kept], [t[2] for t in kept]


def _random_frame(rng, p, m):
  grid = [0.9, 0.901, 0.899, 0.895, 0.5, 0.125, 0.12, 0.13, 0.025, 0.03, 0.004, 0.0]
  kind = rng.integers(4)
  if kind == 0:
    ious = rng.uniform(0, 1, (p, m))
  elif kind == 1:
    ious = rng.choice(grid, (p, m))
  elif kind == 2:  # two rounded values at most: fill-ups
    ious = rng.choice([0.9, 0.901, 0.896, 0.5, 0.504], (p, m))
  else:  # float32 neighbours of 2-decimal boundaries
    ious = rng.integers(0, 200, (p, m)) / 200.0 + rng.integers(-2, 3, (p, m)) * 6e-8
  ious = ious.astype(np.float32)
  acc = np.zeros(p, np.float32) if rng.random() < 0.3 else rng.uniform(-3, 0, p).astype(F32)
  if rng.random() < 0.2:
    ious[:] = ious[0]  # identical pathways
  scale = 3.0 if rng.random() < 0.4 else 0.8
  obj = (rng.normal(size=p) * scale).astype(np.float32)
  if kind == 2:
    obj = np.abs(obj) * F32(0.5)  # one sign, mostly uncertain
  obj[rng.random(p) < 0.1] = 0.0
  return acc, ious, obj


def _far_from_ties(acc, ious):
  scores = sorted({a + math.log(float(i) + 1e-5) for a, row in zip(acc, ious) for i in row})
  return all(b - a > 1e-4 for a, b in zip(scores, scores[1:]))


def test_select_pathways_matches_the_plain_python_reference_on_random_frames():
  rng = np.random.default_rng(0)
  groups = {}
  while sum(len(g) for g in groups.values()) < 200:
    p, m = int(rng.integers(1, 5)), 3  # VP:1050: always 3 candidates
    acc, ious, obj = _random_frame(rng, p, m)
    if _far_from_ties([float(a) for a in acc], ious):
      groups.setdefault((p, m), []).append((acc, ious, obj, F32(rng.choice([1.0, 2.0]))))
  branches = {"confident": 0, "uncertain": 0, "filled": 0}
  for (p, _m), cases in groups.items():
    fn = jax.jit(
      jax.vmap(lambda a, i, o, u, p=p: select_pathways(a, i, o, uncertainty=u, num_pathways=p))
    )
    parent, cand, score = fn(*(jnp.asarray(np.stack(x)) for x in zip(*cases)))
    for k, (acc, ious, obj, u) in enumerate(cases):
      ref = _reference(
        [float(a) for a in acc], [[float(v) for v in r] for r in ious], [float(o) for o in obj], u
      )
      assert parent[k].tolist() == ref[0] and cand[k].tolist() == ref[1], (acc, ious, obj, u)
      np.testing.assert_allclose(np.asarray(score[k]), ref[2], rtol=1e-5, atol=1e-5)
      if max(abs(float(o)) for o in obj) > u:
        branches["confident"] += 1
      else:
        branches["uncertain"] += 1
        distinct = {
          round(float(v) if o > 0 else -float(v), 2) for r, o in zip(ious, obj) for v in r
        }
        branches["filled"] += len(distinct) < p
  assert min(branches.values()) >= 10, branches


# ---------------------------------------------------------------------------------------------
# Key scaling (MA:76-102)

LIN3 = [F32(0.95), F32(1.0), F32(1.05)]
LIN4 = [F32(0.95), F32(0.9833332896232605), F32(1.0166666507720947), F32(1.05)]
# torch.linspace(0.95, 1.05, 7) on torch 2.13 (CPU, float32)
LIN7 = [
  0.949999988079071,
  0.9666666388511658,
  0.9833332896232605,
  1.0,
  1.0166666507720947,
  1.0333333015441895,
  1.0499999523162842,
]


def _scales(scores, valid=None, dtype=jnp.float32, **kw):
  """key_scales of a short list, padded with invalid entries to 8 (one compile for all)."""
  n = len(scores)
  valid = [True] * n if valid is None else list(valid)
  s = jnp.asarray(list(scores) + [0.0] * (8 - n), dtype)
  v = jnp.asarray(valid + [False] * (8 - n), bool)
  out = np.asarray(_key_scales_jit(s, v, **kw).astype(jnp.float32))
  assert np.all(out[n:] == 1.0)
  return out[:n]


def test_key_scales_by_rank_lowest_score_gets_095():
  # ranks: -1 -> 0, 3 -> 1, 5 -> 2, 10 -> 3
  got = _scales([COND_FRAME_SCORE, 3.0, -1.0, 5.0])
  np.testing.assert_array_equal(got, np.asarray([LIN4[3], LIN4[1], LIN4[0], LIN4[2]], F32))
  got = _scales([-5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0])
  np.testing.assert_array_equal(got, np.asarray(LIN7, F32))  # torch's float32 values exactly


def test_key_scales_skip_invalid_entries_and_a_lone_entry_gets_095():
  got = _scales([10.0, 7.0, -100.0, 2.0], [True, True, False, True])
  np.testing.assert_array_equal(got, np.asarray([LIN3[2], LIN3[1], 1.0, LIN3[0]], F32))
  np.testing.assert_array_equal(_scales([4.0, 9.0], [False, True]), np.asarray([1.0, 0.95], F32))
  np.testing.assert_array_equal(_scales([4.0, 9.0], [False, False]), np.ones(2, F32))


def test_key_scales_ties_follow_the_cuda_bitonic_network():
  # Two equal valid keys: every ascending compare-exchange of slots (0, 1) swaps equal keys, and
  # the 32-slot network meets that pair at stride 1 once per stage (sizes 2, 4, 8, 16, final
  # 32), all ascending for thread 0: 5 swaps, so argsort = [1, 0].
  np.testing.assert_array_equal(_scales([3.0, 3.0]), np.asarray([1.05, 0.95], F32))
  np.testing.assert_array_equal(_scales([3.0, 3.0], sort_impl="stable"), np.asarray(LIN3[::2]))
  np.testing.assert_array_equal(
    _scales([3.0, 7.0, 3.0], [True, False, True]), np.asarray([1.05, 1.0, 0.95], F32)
  )


def test_key_scales_come_in_the_scores_dtype():
  shape = jax.eval_shape(key_scales, jax.ShapeDtypeStruct((8,), jnp.bfloat16))
  assert shape.dtype == jnp.bfloat16
  # MA:91 casts the linspace to the weights' dtype: bf16 0.95 / 1.05 are 0.94921875 / 1.046875.
  assert _scales([10.0, 1.0, 4.0], dtype=jnp.bfloat16).tolist() == [1.046875, 0.94921875, 1.0]


def test_memory_key_scales_skip_everything_when_only_the_conditioning_frame_is_in_memory():
  fn = jax.jit(memory_key_scales)
  frames, ptrs = fn(
    jnp.asarray([10.0, 0.0]),
    jnp.asarray([True, False]),
    jnp.asarray([10.0, 2.0, 1.0]),
    jnp.asarray([True, True, True]),
  )
  assert frames.tolist() == [1.0, 1.0] and ptrs.tolist() == [1.0, 1.0, 1.0]
  # Second tracked frame: [cond, frame 1] and the conditioning pointer alone -> 0.95.
  frames, ptrs = fn(
    jnp.asarray([10.0, 12.0]),
    jnp.asarray([True, True]),
    jnp.asarray([10.0, 0.0, 0.0]),
    jnp.asarray([True, False, False]),
  )
  np.testing.assert_array_equal(np.asarray(frames), np.asarray([0.95, 1.05], F32))
  np.testing.assert_array_equal(np.asarray(ptrs), np.asarray([0.95, 1.0, 1.0], F32))


def _bitonic_argsort(keys):
  """Plain-Python transcription of PyTorch's 32-slot CUDA bitonicSortKVInPlace (ascending)."""
  slots = 32
  k = list(keys) + [0.0] * (slots - len(keys))
  v = list(range(slots))
  ok = [True] * len(keys) + [False] * (slots - len(keys))

  def compare_exchange(stride, flag_of):
    for t in range(slots // 2):
      a = 2 * t - (t & (stride - 1))
      b = a + stride
      less = (math.isnan(k[b]) and not math.isnan(k[a])) or k[a] < k[b]
      if ((less and ok[a]) or not ok[b]) == flag_of(t):
        k[a], k[b], v[a], v[b], ok[a], ok[b] = k[b], k[a], v[b], v[a], ok[b], ok[a]

  size = 2
  while size < slots:
    stride = size // 2
    while stride:
      compare_exchange(stride, lambda t, size=size: (t & (size // 2)) != 0)
      stride //= 2
    size *= 2
  stride = slots // 2
  while stride:
    compare_exchange(stride, lambda t: False)
    stride //= 2
  return v[: len(keys)]


@pytest.mark.parametrize("sort_impl", ["cuda", "stable"])
def test_key_scales_rank_like_the_reference_sort_on_tie_heavy_random_sets(sort_impl):
  rng = np.random.default_rng(1)
  for n_slots in (7, 16):  # memory frames, pointers
    scores = rng.integers(0, 4, (60, n_slots)).astype(np.float32)
    valid = rng.random((60, n_slots)) < rng.uniform(0.1, 1.0, (60, 1))
    fn = jax.jit(jax.vmap(functools.partial(key_scales, sort_impl=sort_impl)))
    got = np.asarray(fn(jnp.asarray(scores), jnp.asarray(valid)))
    for row, ok, out in zip(scores, valid, got):
      idx = [i for i in range(n_slots) if ok[i]]
      keys = [float(row[i]) for i in idx]
      if sort_impl == "cuda":
        by_rank = [idx[c] for c in _bitonic_argsort(keys)]
      else:
        by_rank = [idx[c] for c in sorted(range(len(keys)), key=lambda c: keys[c])]
      assert np.all(out[~ok] == 1.0)
      if len(idx) == 1:
        assert out[idx[0]] == F32(0.95)
      ranked = out[by_rank]
      assert np.all(np.diff(ranked) > 0), (row, ok, out, by_rank)
      if idx:
        assert ranked[0] == F32(0.95) and (len(idx) == 1 or ranked[-1] == F32(1.05))
