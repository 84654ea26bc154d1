"""DAM4SAM's DRM admission test: each rule on hand-built masks and histories, then `admit`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.tracking.memory.dam4sam_rules import (
  SIZE_WINDOW,
  admit,
  area_ratio_ok,
  distractor_box_ious,
  distractor_present,
  drm_read_frames,
  init_state,
  iou_ok,
  largest_component,
  masked_median,
  nonempty_ok,
  push_size,
  ram_frames,
  spacing_ok,
)

S = 32  # mask side in the distractor tests


def block(y0, y1, x0, x1, side=S):
  """bool [side, side] with rows y0..y1 and columns x0..x1 set (inclusive)."""
  m = np.zeros((side, side), bool)
  m[y0 : y1 + 1, x0 : x1 + 1] = True
  return m


def pixels(coords, side=S):
  m = np.zeros((side, side), bool)
  for y, x in coords:
    m[y, x] = True
  return m


@functools.partial(jax.jit, static_argnames=("window",))
def _pushed(sizes, valid, window):
  def body(state, x):
    t, n, ok = x
    return push_size(state, t, n, where=ok), None

  t = jnp.arange(1, sizes.shape[0] + 1)
  state, _ = jax.lax.scan(body, init_state((), window), (t, sizes, valid))
  return state


def history(sizes, window=SIZE_WINDOW, length=320):
  """A single object's history after pushing `sizes` in order (padded to one compiled length)."""
  sizes = np.asarray(sizes, np.int32)
  pad = length - sizes.shape[0]
  assert pad >= 0
  valid = np.arange(length) < sizes.shape[0]
  return _pushed(jnp.asarray(np.pad(sizes, (0, pad))), jnp.asarray(valid), window)


# ---- rule 1: predicted IoU ----


def test_iou_ok_boundary():
  f32 = np.float32
  below = np.nextafter(f32(0.8), f32(0))
  got = iou_ok(jnp.asarray([f32(0.8), below, f32(0.81), f32(0.5), f32(1.0)]))
  # float32(0.8) = 0.800000012 > 0.8 as a real number (NumPy 1.26, which DAM4SAM pins).
  np.testing.assert_array_equal(got, [True, False, True, False, True])
  # A threshold whose float32 rounds down: float32(0.7) = 0.69999999 is not > 0.7.
  above = np.nextafter(f32(0.7), f32(1))
  np.testing.assert_array_equal(iou_ok(jnp.asarray([f32(0.7), above]), 0.7), [False, True])


# ---- rule 2: non-empty mask ----


def test_nonempty_ok():
  np.testing.assert_array_equal(nonempty_ok(jnp.asarray([0, 1, 50])), [False, True, True])


# ---- rule 3: area ratio against the median ----


@pytest.mark.parametrize("n,ok", [(79, False), (80, True), (100, True), (120, True), (121, False)])
def test_area_ratio_boundaries(n, ok):
  state = history([100] * 9 + [n])  # the current frame is in its own median: still 100
  assert bool(area_ratio_ok(n, state)) is ok


def test_area_ratio_needs_two_entries_and_a_nonempty_frame():
  assert not bool(area_ratio_ok(100, history([100])))  # first tracked frame: ratio -1
  # One empty earlier frame is enough: the median is over the current frame alone -> ratio 1.
  assert bool(area_ratio_ok(100, history([0, 100])))
  assert not bool(area_ratio_ok(0, history([100, 0])))  # empty current frame


def test_area_ratio_uses_last_ten_nonempty_entries():
  # Ten newest non-empty: 9 x 200 and the current 100 -> median 200, ratio 0.5; the older
  # 100s no longer count, and the empty entries in between are skipped, not counted.
  sizes = [100] * 20 + [200, 0] * 9 + [100]
  assert not bool(area_ratio_ok(100, history(sizes)))
  # Even count: the median is the mean of the two middle entries. With [90, 110, 300] before:
  # n = 80 -> (90 + 110) / 2 = 100, ratio 0.8 (the lower middle alone would give 0.89, the
  # upper 0.73); n = 79 -> ratio 0.79.
  assert bool(area_ratio_ok(80, history([90, 110, 300, 80])))
  assert not bool(area_ratio_ok(79, history([90, 110, 300, 79])))


def test_size_window_expires_after_300_entries():
  # Entries 1-10 are 1000, then empty frames (they fill the window but not the median).
  # 10 + 299 + current = 310 entries: the window holds 11..310, only the current is >= 1.
  assert bool(area_ratio_ok(100, history([1000] * 10 + [0] * 299 + [100])))
  # One frame fewer: entry 10 (1000) is still inside -> median (100 + 1000) / 2.
  assert not bool(area_ratio_ok(100, history([1000] * 10 + [0] * 298 + [100])))


def test_masked_median_matches_numpy():
  vals = np.asarray([[7, 1, 3, 10, 99], [5, 1, 3, 0, 0], [4, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
  valid = np.asarray(
    [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool
  )  # even, odd, single, none
  got = np.asarray(masked_median(jnp.asarray(vals), jnp.asarray(valid)))
  for row in range(3):
    assert got[row] == np.median(vals[row][valid[row]])
  assert got[0] == 5.0 and got[1] == 3.0 and got[2] == 4.0
  assert np.isnan(got[3])


# ---- rule 4: spacing since the last admission ----


def test_spacing_ok():
  t = jnp.asarray([1, 3, 15, 16, 20])
  last = jnp.asarray([-1, -1, 10, 10, 15])
  np.testing.assert_array_equal(spacing_ok(t, last), [True, True, False, True, False])


# ---- rule 5: distractor among the alternatives ----

CHOSEN = block(4, 9, 4, 9)  # 6 x 6


def present(chosen, alts, variant="dam4sam"):
  return bool(distractor_present(jnp.asarray(chosen), jnp.asarray(np.stack(alts)), variant=variant))


@pytest.mark.parametrize("variant", ["dam4sam", "d4sm"])
def test_distractor_far_blob_vs_touching_blob(variant):
  far = CHOSEN | block(20, 25, 20, 25)
  touching = CHOSEN | block(4, 9, 10, 10)  # one more column: box IoU 25/30 or 36/42
  inside = block(5, 8, 5, 8)
  assert present(CHOSEN, [far, inside], variant)
  assert not present(CHOSEN, [touching, inside], variant)
  assert present(CHOSEN, [touching, far], variant)  # at least one alternative is enough


@pytest.mark.parametrize("variant", ["dam4sam", "d4sm"])
def test_distractor_only_largest_component_counts(variant):
  big_near = block(4, 9, 10, 10)  # 6 px touching the chosen mask
  small_far = block(28, 28, 28, 28)  # 1 px far away
  assert not present(CHOSEN, [CHOSEN | big_near | small_far, CHOSEN], variant)
  big_far = block(24, 27, 24, 27)  # 16 px far away
  small_near = block(4, 4, 10, 10)
  assert present(CHOSEN, [CHOSEN | big_far | small_near, CHOSEN], variant)


def test_distractor_components_are_8_connected():
  # A diagonal chain from the chosen mask's corner: one 8-connected component of 11 px reaching
  # (20, 20); with 4-connectivity the largest piece would be a single pixel.
  chain = pixels([(10 + i, 10 + i) for i in range(11)])
  # d4sm boxes: the whole chain gives 36 / 289; its first pixel alone would give 36 / 49 > 0.7.
  assert present(CHOSEN, [chain, CHOSEN], "d4sm")
  assert bool(largest_component(jnp.asarray(chain)).sum() == 11)


def test_distractor_empty_alternatives_are_dropped():
  inside = block(5, 8, 5, 8)
  assert not present(CHOSEN, [inside, CHOSEN])
  ious = np.asarray(
    distractor_box_ious(jnp.asarray(CHOSEN), jnp.asarray(np.stack([inside, CHOSEN])))
  )
  assert np.isnan(ious).all()
  far = CHOSEN | block(20, 25, 20, 25)
  ious = np.asarray(distractor_box_ious(jnp.asarray(CHOSEN), jnp.asarray(np.stack([inside, far]))))
  assert np.isnan(ious[0]) and ious[1] < 0.7


def test_box_conventions_differ():
  # chosen 5 x 5 at rows/cols 4..8; the alternative adds a pixel at column 10.
  chosen = block(4, 8, 4, 8)
  alt = chosen | pixels([(6, 10)])
  # dam4sam: boxes lose their last row/column: 4x4 vs 6x4 = 0.667 <= 0.7.
  # d4sm: inclusive boxes: 5x5 vs 7x5 = 0.714 > 0.7.
  assert present(chosen, [alt, chosen], "dam4sam")
  assert not present(chosen, [alt, chosen], "d4sm")
  got = distractor_box_ious(jnp.asarray(chosen), jnp.asarray(alt[None]), "dam4sam")
  np.testing.assert_allclose(got, [16 / 24], rtol=1e-6)


def test_box_iou_exactly_at_threshold_and_flat_union():
  chosen = block(0, 9, 0, 6)  # 10 x 7
  alt = chosen | pixels([(0, 9)])  # union box 10 x 10: IoU exactly 0.7 (d4sm boxes)
  assert present(chosen, [alt, chosen], "d4sm")
  # A one-row union is "identical" for vot's overlap (IoU 1), however far the alternative is.
  row = block(5, 5, 0, 1)
  far_in_row = row | pixels([(5, 30)])
  assert not present(row, [far_in_row, row], "d4sm")
  assert not present(row, [far_in_row, row], "dam4sam")


def test_largest_component_batched_and_vmapped():
  masks = np.stack([block(0, 1, 0, 1) | block(5, 9, 5, 9), np.zeros((S, S), bool)])
  want = np.stack([block(5, 9, 5, 9), np.zeros((S, S), bool)])
  np.testing.assert_array_equal(largest_component(jnp.asarray(masks)), want)
  np.testing.assert_array_equal(jax.vmap(largest_component)(jnp.asarray(masks)), want)


# ---- the whole test ----

SMALL = 16
OBJ = block(2, 7, 2, 7, SMALL)  # 36 px
FAR = OBJ | block(12, 14, 12, 14, SMALL)
EMPTY = np.zeros((SMALL, SMALL), bool)


def frame(chosen, alt):
  return jnp.asarray(chosen)[None], jnp.asarray(np.stack([alt, EMPTY]))[None]


@pytest.mark.parametrize("variant", ["dam4sam", "d4sm"])
def test_admit_sequence_under_jit(variant):
  step = jax.jit(functools.partial(admit, variant=variant))
  state = init_state(1)
  iou = jnp.asarray([0.9], jnp.float32)
  decisions = []
  for t in range(1, 10):
    chosen, alts = frame(EMPTY if t == 4 else OBJ, FAR)
    ok, state = step(state, t, chosen, alts, iou)
    decisions.append(bool(ok[0]))
  # t=1: one size entry only; t=2: admitted; t=3..7: within 5 frames (t=4 also empty);
  # t=8: 8 - 2 > 5; t=9: too soon again.
  assert decisions == [False, True, False, False, False, False, False, True, False]
  assert int(state.last_added[0]) == 8
  # dam4sam records the empty frame (9 entries); d4sm only visible frames (8).
  assert int(state.count[0]) == (9 if variant == "dam4sam" else 8)


def test_admit_batch_of_two_in_scan():
  # Object 0 passes everything; object 1 has the same masks but predicted IoU 0.8 - 1 ulp.
  low = np.nextafter(np.float32(0.8), np.float32(0))
  chosen = jnp.asarray(np.stack([OBJ, OBJ]))
  alts = jnp.asarray(np.stack([np.stack([FAR, EMPTY])] * 2))
  iou = jnp.asarray([0.95, low], jnp.float32)

  def body(state, t):
    ok, state = admit(state, t, chosen, alts, iou)
    return state, ok

  state, oks = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(1, 4)))(init_state(2))
  np.testing.assert_array_equal(oks, [[False, False], [True, False], [False, False]])
  np.testing.assert_array_equal(state.last_added, [2, -1])


def test_admit_refuses_without_distractor_or_with_ratio_jump():
  step = jax.jit(admit)
  iou = jnp.asarray([0.9], jnp.float32)
  state = init_state(1)
  for t in (1, 2):
    chosen, alts = frame(OBJ, OBJ)  # no alternative reaches outside the chosen mask
    ok, state = step(state, t, chosen, alts, iou)
    assert not bool(ok[0])
  chosen, alts = frame(block(0, 9, 0, 9, SMALL), FAR)  # 100 px vs a median of 36 px
  ok, state = step(state, 3, chosen, alts, iou)
  assert not bool(ok[0]) and int(state.last_added[0]) == -1


# ---- DAM4SAM's memory read ----


def test_ram_frames_stride_and_drm():
  t_len = 45
  visible = np.ones(t_len, bool)
  drm = np.zeros(t_len, bool)
  got = ram_frames(20, jnp.asarray(visible), jnp.asarray(drm))
  np.testing.assert_array_equal(got, [19, 15, 10, 5, -1, -1])  # frame 0 is never RAM

  drm[[7, 12, 15]] = True  # three DRM frames read -> 3 RAM slots; 15 is skipped on the stride
  np.testing.assert_array_equal(drm_read_frames(20, jnp.asarray(drm)), [15, 12, 7])
  np.testing.assert_array_equal(
    ram_frames(20, jnp.asarray(visible), jnp.asarray(drm)), [19, 10, 5, -1, -1, -1]
  )


def test_ram_frames_previous_frame_and_walk_back():
  visible = np.ones(45, bool)
  drm = np.zeros(45, bool)
  drm[19] = True  # admitted on the previous frame: not read as DRM yet, read as RAM slot 0
  np.testing.assert_array_equal(drm_read_frames(20, jnp.asarray(drm)), [-1, -1, -1])
  np.testing.assert_array_equal(
    ram_frames(20, jnp.asarray(visible), jnp.asarray(drm)), [19, 15, 10, 5, -1, -1]
  )
  drm[:] = False
  drm[[33, 38]] = True
  visible[39] = False  # slot 0 walks back past the invisible 39 and the admitted 38
  visible[35] = False  # the stride walk skips the invisible 35
  got = ram_frames(40, jnp.asarray(visible), jnp.asarray(drm))
  np.testing.assert_array_equal(got, [37, 30, 25, 20, -1, -1])  # 2 DRM read -> 4 slots
