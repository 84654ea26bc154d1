"""Bilinear resize matrices vs torch.nn.functional.interpolate (skips without torch)."""

import numpy as np
import pytest

from sam2pp_jax.model.resize import bilinear_matrix, resize_bilinear


def test_rows_sum_to_one_and_identity():
  for n_in, n_out, aa in [
    (64, 256, False),
    (256, 64, True),
    (240, 64, True),
    (64, 240, False),
    (256, 240, False),
    (7, 3, True),
  ]:
    m = bilinear_matrix(n_in, n_out, aa)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(bilinear_matrix(5, 5), np.eye(5, dtype=np.float32))


@pytest.mark.parametrize(
  "src,dst,aa",
  [
    ((64, 64), (256, 256), False),
    ((256, 256), (64, 64), True),
    ((240, 320), (256, 256), True),
    ((64, 64), (240, 320), False),
    ((256, 256), (240, 320), False),
    ((31, 17), (9, 40), True),
  ],
)
def test_matches_torch(src, dst, aa):
  torch = pytest.importorskip("torch", reason="torch (optional test extra) is not installed")
  x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
    size=dst,
    mode="bilinear",
    align_corners=False,
    antialias=aa,
  )
  ref = ref.permute(0, 2, 3, 1).numpy()
  got = np.asarray(resize_bilinear(x, dst, antialias=aa))
  np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
