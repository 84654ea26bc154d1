"""SAMURAI's box Kalman filter: textbook float64 equations, hand-worked numbers, box helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.tracking.memory.kalman import (
  box_iou,
  initiate,
  mask_boxes,
  predict,
  project,
  update,
  xyah_to_xyxy,
  xyxy_to_xyah,
)

# ---- an independent float64 textbook filter (constants written out, not imported) ----

F = np.eye(8) + np.eye(8, k=4)  # constant velocity, dt = 1
H = np.eye(4, 8)


def ref_initiate(z):
  h = z[3]
  std = [h / 10, h / 10, 1e-2, h / 10, h / 16, h / 16, 1e-5, h / 16]  # 2/20 and 10/160 of h
  return np.concatenate([z, np.zeros(4)]), np.diag(np.square(std))


def ref_predict(x, p):
  h = x[3]  # the noise follows the height before the step
  q = np.diag(np.square([h / 20, h / 20, 1e-2, h / 20, h / 160, h / 160, 1e-5, h / 160]))
  return F @ x, F @ p @ F.T + q


def ref_update(x, p, z):
  h = x[3]
  r = np.diag(np.square([h / 20, h / 20, 1e-1, h / 20]))
  s = H @ p @ H.T + r
  k = p @ H.T @ np.linalg.inv(s)
  x_new = x + k @ (z - H @ x)
  p_joseph_free = (np.eye(8) - k @ H) @ p
  p_sks = p - k @ s @ k.T  # the original's form; equal for the optimal gain
  np.testing.assert_allclose(p_sks, p_joseph_free, rtol=1e-9, atol=1e-12)
  return x_new, p_joseph_free


def _rand_xyah(rng, n=None):
  shape = () if n is None else (n,)
  return np.stack(
    [
      rng.uniform(0, 1000, shape),
      rng.uniform(0, 1000, shape),
      rng.uniform(0.3, 3.0, shape),
      rng.uniform(20, 400, shape),
    ],
    axis=-1,
  )


def _close_mean(got, ref, rtol=1e-4):
  """Relative check, with float32 slack scaled by each coordinate's own size (|xc| for xc and vxc,
  ...): a velocity near 0 is the small difference of pixel-sized numbers."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  atol = 1e-6 * np.abs(np.concatenate([ref[:4], ref[:4]]))
  np.testing.assert_array_less(np.abs(got - ref), atol + rtol * np.abs(ref) + 1e-30)


def _close_cov(got, ref, rtol=1e-3):
  """Relative check, with slack 1e-6 * sqrt(P_ii P_jj) (the entry's Cauchy-Schwarz scale): the
  variances span 1e-10 (va) to 1e3 (positions)."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  d = np.sqrt(np.abs(np.diag(ref)))
  atol = 1e-6 * d[:, None] * d[None, :]
  np.testing.assert_array_less(np.abs(got - ref), atol + rtol * np.abs(ref) + 1e-30)


# ---- hand-computed numbers ----


def test_initiate_by_hand():
  mean, cov = initiate(jnp.asarray([10.0, 20.0, 0.5, 40.0]))
  np.testing.assert_allclose(mean, [10, 20, 0.5, 40, 0, 0, 0, 0])
  # position std 2 * 40 / 20 = 4 -> 16; velocity std 10 * 40 / 160 = 2.5 -> 6.25
  np.testing.assert_allclose(np.diag(cov), [16, 16, 1e-4, 16, 6.25, 6.25, 1e-10, 6.25], rtol=1e-6)
  assert np.count_nonzero(np.asarray(cov) - np.diag(np.diag(cov))) == 0


def test_predict_then_update_by_hand():
  mean, cov = predict(*initiate(jnp.asarray([10.0, 20.0, 0.5, 40.0])))
  np.testing.assert_allclose(mean, [10, 20, 0.5, 40, 0, 0, 0, 0])  # zero velocity: no motion
  cov = np.asarray(cov)
  # x: 16 + 6.25 (velocity) + (40/20)^2 = 26.25; x-vx 6.25; vx: 6.25 + (40/160)^2 = 6.3125
  assert cov[0, 0] == pytest.approx(26.25, rel=1e-6)
  assert cov[0, 4] == cov[4, 0] == pytest.approx(6.25, rel=1e-6)
  assert cov[4, 4] == pytest.approx(6.3125, rel=1e-6)
  assert cov[2, 2] == pytest.approx(1e-4 + 1e-10 + 1e-4, rel=1e-5)
  assert cov[6, 6] == pytest.approx(2e-10, rel=1e-5)

  # measure x 5.5 px to the right: S_xx = 26.25 + (40/20)^2 = 30.25
  new_mean, new_cov = update(mean, jnp.asarray(cov), jnp.asarray([15.5, 20.0, 0.5, 40.0]))
  assert new_mean[0] == pytest.approx(10 + 5.5 * 26.25 / 30.25, rel=1e-6)
  assert new_mean[4] == pytest.approx(5.5 * 6.25 / 30.25, rel=1e-6)
  np.testing.assert_allclose(np.asarray(new_mean)[[1, 2, 3, 5, 6, 7]], [20, 0.5, 40, 0, 0, 0])
  assert new_cov[0, 0] == pytest.approx(26.25 * 4 / 30.25, rel=1e-5)


def test_predict_noise_uses_the_height_before_the_step():
  mean = jnp.asarray([0.0, 0.0, 1.0, 40.0, 0.0, 0.0, 0.0, 8.0])  # h moves 40 -> 48
  new_mean, cov = predict(mean, jnp.zeros((8, 8)))
  assert new_mean[3] == 48.0
  # Q from h = 40: (40/20)^2 = 4, (40/160)^2 = 0.0625 (not 5.76 / 0.09 from h = 48)
  np.testing.assert_allclose(
    np.diag(cov), [4, 4, 1e-4, 4, 0.0625, 0.0625, 1e-10, 0.0625], rtol=1e-6
  )


def test_project_adds_height_scaled_measurement_noise():
  mean = jnp.asarray([1.0, 2.0, 0.7, 40.0, 5.0, 6.0, 0.1, 3.0])
  z, s = project(mean, jnp.zeros((8, 8)))
  np.testing.assert_allclose(z, [1.0, 2.0, 0.7, 40.0])
  np.testing.assert_allclose(s, np.diag([4.0, 4.0, 0.01, 4.0]), rtol=1e-6)


# ---- against the textbook equations ----


def test_filter_matches_textbook_equations_on_random_tracks():
  rng = np.random.default_rng(0)
  for _ in range(4):
    z0 = _rand_xyah(rng)
    x_ref, p_ref = ref_initiate(z0)
    mean, cov = initiate(jnp.asarray(z0, jnp.float32))
    _close_mean(mean, x_ref)
    _close_cov(cov, p_ref)
    for _ in range(5):
      x_ref, p_ref = ref_predict(x_ref, p_ref)
      mean, cov = predict(mean, cov)
      _close_mean(mean, x_ref)
      _close_cov(cov, p_ref)
      z = z0 + rng.normal(size=4) * np.array([5.0, 5.0, 0.02, 3.0])
      x_ref, p_ref = ref_update(x_ref, p_ref, z)
      mean, cov = update(mean, cov, jnp.asarray(z, jnp.float32))
      _close_mean(mean, x_ref)
      _close_cov(cov, p_ref)


def test_velocity_converges_on_a_constant_velocity_track():
  rng = np.random.default_rng(1)
  v_true = np.array([3.0, -2.0, 0.0, 0.5])
  z0 = np.array([100.0, 300.0, 0.6, 80.0])
  mean, cov = initiate(jnp.asarray(z0, jnp.float32))
  errs = []
  for t in range(1, 61):
    mean, cov = predict(mean, cov)
    z = z0 + t * v_true + rng.normal(size=4) * np.array([0.5, 0.5, 0.001, 0.3])
    mean, cov = update(mean, cov, jnp.asarray(z, jnp.float32))
    errs.append(np.abs(np.asarray(mean)[4:] - v_true).max())
  assert errs[0] > 0.5  # starts far from the truth (velocity initialised to 0)
  assert errs[-1] < 0.15
  assert max(errs[-10:]) < max(errs[:10]) / 5


# ---- batching and jit ----


def test_batch_equals_single_calls_and_jits():
  rng = np.random.default_rng(2)
  z0 = jnp.asarray(_rand_xyah(rng, 3), jnp.float32)
  z1 = jnp.asarray(np.asarray(z0) + rng.normal(size=(3, 4)) * [4.0, 4.0, 0.01, 2.0], jnp.float32)

  def step(z0, z1):
    mean, cov = predict(*initiate(z0))
    return update(mean, cov, z1)

  bm, bc = step(z0, z1)
  jm, jc = jax.jit(step)(z0, z1)
  assert bm.shape == (3, 8) and bc.shape == (3, 8, 8)
  assert bm.dtype == jnp.float32 and bc.dtype == jnp.float32
  for i in range(3):
    sm, sc = step(z0[i], z1[i])
    np.testing.assert_allclose(bm[i], sm, rtol=1e-6)
    np.testing.assert_allclose(bc[i], sc, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(jm, bm, rtol=1e-5)
  np.testing.assert_allclose(jc, bc, rtol=1e-4, atol=1e-10)


# ---- box helpers ----


def test_xyxy_xyah_by_hand_and_round_trip():
  np.testing.assert_allclose(xyxy_to_xyah(jnp.asarray([0.0, 0.0, 10.0, 20.0])), [5, 10, 0.5, 20])
  np.testing.assert_allclose(xyah_to_xyxy(jnp.asarray([5.0, 10.0, 0.5, 20.0])), [0, 0, 10, 20])
  # zero height -> h = 1 and a = w / 1; an empty box becomes (0, 0, 0, 1)
  np.testing.assert_allclose(xyxy_to_xyah(jnp.asarray([2.0, 3.0, 6.0, 3.0])), [4, 3, 4, 1])
  np.testing.assert_allclose(xyxy_to_xyah(jnp.zeros(4)), [0, 0, 0, 1])
  rng = np.random.default_rng(3)
  xy = rng.uniform(0, 500, (5, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, 200, (5, 2))], axis=-1).astype(np.float32)
  back = xyah_to_xyxy(xyxy_to_xyah(jnp.asarray(boxes)))
  np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)


def test_box_iou_by_hand():
  pred = jnp.asarray([0.0, 0.0, 10.0, 10.0])
  cands = jnp.asarray(
    [
      [5, 5, 15, 15],  # 25 / (100 + 100 - 25)
      [0, 0, 0, 0],  # an empty mask's box
      [20, 20, 30, 30],  # disjoint
      [0, 0, 10, 10],  # identical
      [2, 2, 2, 8],  # zero width (a one-column mask): no intersection
      [2, 1, 6, 5],  # inside: inter (6-2)*(5-1) = 16, union 100 + 16 - 16 = 100
    ],
    jnp.float32,
  )
  np.testing.assert_allclose(box_iou(pred, cands), [1 / 7, 0, 0, 1, 0, 0.16], rtol=1e-6)
  # non-square: inter (4-2)*(2-1) = 2, union 8 + 16 - 2 = 22
  got = box_iou(jnp.asarray([0.0, 0.0, 4.0, 2.0]), jnp.asarray([[2.0, 1.0, 6.0, 5.0]]))
  np.testing.assert_allclose(got, [1 / 11], rtol=1e-6)
  # zero union (both boxes are the same point) -> 0, not nan
  got = box_iou(jnp.asarray([3.0, 3.0, 3.0, 3.0]), jnp.asarray([[3.0, 3.0, 3.0, 3.0]]))
  assert np.asarray(got).tolist() == [0.0]


def test_box_iou_broadcasts_over_objects():
  pred = jnp.asarray([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 2.0]])
  cands = jnp.asarray([[[5, 5, 15, 15], [0, 0, 0, 0]], [[2, 1, 6, 5], [0, 0, 4, 2]]], jnp.float32)
  got = jax.jit(box_iou)(pred, cands)
  assert got.shape == (2, 2)
  np.testing.assert_allclose(got, [[1 / 7, 0], [1 / 11, 1]], rtol=1e-6)


def test_mask_boxes_by_hand():
  m = np.full((3, 5, 6), -1.0, np.float32)  # logits: only > 0 counts
  m[0, 1:4, 2:5] = 2.0  # rows 1..3, cols 2..4
  m[0, 4, 0] = 0.0  # exactly 0 is background
  m[1, 2, 5] = 0.3  # one pixel at (x=5, y=2)
  got = jax.jit(mask_boxes)(jnp.asarray(m))  # m[2] stays empty
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, [[2, 1, 4, 3], [5, 2, 5, 2], [0, 0, 0, 0]])


def test_mask_boxes_matches_argwhere_extent():
  rng = np.random.default_rng(4)
  masks = rng.normal(size=(4, 2, 9, 7)) - 1.8  # sparse foreground, some possibly empty
  masks[0, 1] = -1.0
  got = np.asarray(mask_boxes(jnp.asarray(masks, jnp.float32)))
  assert got.shape == (4, 2, 4)
  for i in range(4):
    for j in range(2):
      idx = np.argwhere(masks[i, j] > 0)  # (y, x) rows
      want = [0, 0, 0, 0] if len(idx) == 0 else [*idx.min(0)[::-1], *idx.max(0)[::-1]]
      np.testing.assert_array_equal(got[i, j], want)
