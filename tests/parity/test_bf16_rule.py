"""The stored-bf16-memory parity rule (`parity.end_to_end.bf16_rule`) on synthetic arrays.

Rule: at most 0.5 % of the elements differ at all; a differing element is off by one bf16 ulp of
the larger magnitude, or by at most 1e-4 * max(1, max|ref|); at most 0.01 % are off by two ulps,
none by more. Every case sits just inside or just outside one limit.
"""

import ml_dtypes
import numpy as np
import pytest

from sam2pp_jax.parity import end_to_end as e2e

N = 100_000  # 0.5 % = 500 elements, 0.01 % = 10 elements
ULP = 2.0**-7  # one bf16 ulp for values in [1, 2)


def bf16(x):
  """Round to bfloat16 and widen back to float32 (how stored memory reaches the checker)."""
  return np.asarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16), np.float32)


@pytest.fixture
def ref():
  """bf16 values in [1, 2), so one ulp is 2**-7 everywhere; max|ref| < 2."""
  x = np.random.default_rng(0).uniform(1.0, 1.9, N)
  return bf16(x)


def _off(ref, idx, ulps):
  got = ref.copy()
  got[idx] = ref[idx] + ulps * ULP
  assert np.array_equal(got, bf16(got))  # still bf16 values
  return got


def test_rule_constants():
  assert e2e.BF16_FLIP_FRACTION == 5e-3
  assert e2e.BF16_TWO_ULP_FRACTION == 1e-4
  assert e2e.BF16_ABS_TOL == 1e-4


def test_bf16_ulp_exact():
  x = np.array([1.0, 1.9921875, 2.0, 0.75, -3.0, 256.0, 255.0])
  np.testing.assert_array_equal(
    e2e._bf16_ulp(x), [2.0**-7, 2.0**-7, 2.0**-6, 2.0**-8, 2.0**-6, 2.0, 1.0]
  )


def test_identical(ref):
  r = e2e.bf16_rule(ref, ref)
  assert r["ok"] and r["n_flip"] == 0 and r["max_ulps"] == 0.0


def test_flip_rate_limit(ref):
  idx = np.arange(500)  # 0.5 %: just inside
  r = e2e.bf16_rule(_off(ref, idx, 1), ref)
  assert r["ok"], r
  assert (r["n_flip"], r["n_two_ulp"], r["n_beyond"], r["max_ulps"]) == (500, 0, 0, 1.0)
  r = e2e.bf16_rule(_off(ref, np.arange(501), -1), ref)  # 501 one-ulp flips: just outside
  assert not r["ok"] and r["n_flip"] == 501 and r["n_beyond"] == 0


def test_two_ulp_limit(ref):
  got = _off(ref, np.arange(10, 400), 1)
  got = _off(got, np.arange(10), 2)  # 10 two-ulp elements = 0.01 %: inside
  r = e2e.bf16_rule(got, ref)
  assert r["ok"], r
  assert (r["n_flip"], r["n_two_ulp"], r["max_ulps"]) == (400, 10, 2.0)
  got[10] = ref[10] - 2 * ULP  # an 11th: just outside
  r = e2e.bf16_rule(got, ref)
  assert not r["ok"] and r["n_two_ulp"] == 11 and r["n_beyond"] == 0


def test_three_ulps_fails(ref):
  r = e2e.bf16_rule(_off(ref, np.array([123]), 3), ref)  # one element, 0.001 %
  assert not r["ok"] and r["n_beyond"] == 1 and r["max_ulps"] == 3.0
  assert r["n_flip"] == 1 and r["n_two_ulp"] == 0


def test_ulp_of_the_larger_magnitude():
  """Across a binade boundary the ulp of the larger value counts: 1 - 2**-8 vs 1 + 2**-7 is
  3 ulps of the smaller but 1.5 of the larger, so it is a two-ulp element, not a failure."""
  ref = np.full(N, 1.5, np.float32)
  got = ref.copy()
  ref[0], got[0] = 1.0 - 2.0**-8, 1.0 + 2.0**-7
  ref[1], got[1] = 2.0 - 2.0**-7, 2.0  # 1 ulp below 2, half an ulp above
  r = e2e.bf16_rule(got, ref)
  assert r["ok"], r
  assert (r["n_flip"], r["n_two_ulp"], r["n_beyond"], r["max_ulps"]) == (2, 1, 0, 1.5)


def test_near_zero_absolute_tolerance(ref):
  """Near zero a float32 difference spans many bf16 ulps; up to 1e-4 * max(1, max|ref|) is one
  flip, not a failure; just beyond is."""
  ref = ref.copy()
  ref[:3] = bf16([0.0, 2e-6, -5e-6])
  tol = 1e-4 * max(1.0, float(np.abs(ref).max()))  # max|ref| < 2
  got = ref.copy()
  got[:3] = bf16([0.9 * tol, 2e-6 - 0.9 * tol, -5e-6 + 0.5 * tol])
  assert np.all(np.abs(got[:3] - ref[:3]) <= tol)
  r = e2e.bf16_rule(got, ref)
  assert r["ok"], r
  assert r["n_flip"] == 3 and r["n_abs_only"] == 3 and r["max_ulps_all"] > 100
  assert r["max_ulps"] <= 1.0  # the ulp limits judge the rest only
  got[1] = bf16(2e-6 + 1.2 * tol)  # beyond the absolute tolerance
  assert abs(float(got[1]) - float(ref[1])) > tol
  r = e2e.bf16_rule(got, ref)
  assert not r["ok"] and r["n_beyond"] == 1


def test_absolute_tolerance_scales_with_max_ref():
  """max|ref| = 100: tolerance 1e-2 absolute; a 5e-3 difference at 0.01 passes, 2e-2 fails."""
  ref = bf16(np.linspace(1.0, 100.0, N))
  ref[0] = bf16(0.01)
  got = ref.copy()
  got[0] = bf16(0.015)
  r = e2e.bf16_rule(got, ref)
  assert r["ok"] and r["abs_tol"] == pytest.approx(1e-2) and r["n_abs_only"] == 1
  got[0] = bf16(0.03)
  assert not e2e.bf16_rule(got, ref)["ok"]


def test_non_finite_fails(ref):
  got = ref.copy()
  got[7] = np.nan
  r = e2e.bf16_rule(got, ref)
  assert not r["ok"] and r["n_beyond"] == 1


def test_compare_bf16_row(ref):
  got = _off(_off(ref, np.arange(2, 50), 1), np.arange(2), 2)
  row = e2e.compare_bf16("outputs/maskmem_features_bf16", got, ref)
  assert row.status == "ok"
  for part in ("flips=50 (0.050%", "two_ulp=2 (0.0020%", "beyond_2ulp=0", "max_ulps=2"):
    assert part in row.note, row.note
  assert row.max_abs == 2 * ULP
  row = e2e.compare_bf16("x", _off(ref, np.array([3]), 3), ref)
  assert row.status == "FAIL" and "beyond_2ulp=1" in row.note and "max_ulps=3" in row.note
  assert e2e.compare_bf16("x", ref[:10], ref).status == "FAIL"


def test_dispatch_uses_rule(ref):
  """compare_array routes every maskmem_features_bf16 output (spot checks too) to the rule."""

  class Fx:
    arrays = {}

  row = e2e.compare_array(
    Fx(), "[scan] outputs/maskmem_features_bf16", _off(ref, np.arange(500), 1), ref
  )
  assert row.status == "ok" and "flips=500" in row.note
