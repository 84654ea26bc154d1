"""Point readouts: the reference's grid-bound argmax and the sub-pixel training soft-argmax."""

import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model.resize import resize_bilinear
from sam2pp_jax.tracking import propagate
from sam2pp_jax.tracking.point_readout import (
  argmax_point,
  check_readout,
  read_points,
  soft_argmax_point,
)

S, VH, VW = 64, 72, 96  # model input, video (non-square: x and y scale differently)
L = S // 4


def _peak(x_model, y_model, sharp=4.0):
  """Low-res logits of a peak at model pixel (x, y): low-res node i sits at model 4i + 1.5."""
  g = (np.arange(L) + 0.5) * (S / L) - 0.5
  d2 = (g[None, :] - x_model) ** 2 + (g[:, None] - y_model) ** 2
  return jnp.asarray(-sharp * d2 / (S / L) ** 2, jnp.float32)


def test_argmax_takes_the_first_maximum_in_row_major_order():
  m = np.zeros((2, 5, 7), np.float32)
  m[0, 3, 4] = 2.0
  m[1, 1, 6] = m[1, 2, 0] = 5.0  # tie: row 1 comes first
  assert argmax_point(jnp.asarray(m)).tolist() == [[4, 3], [6, 1]]


def test_soft_argmax_matches_a_numpy_softmax_mean():
  rng = np.random.default_rng(0)
  low = rng.normal(size=(3, L, L)).astype(np.float32) * 3
  got = np.asarray(soft_argmax_point(jnp.asarray(low), S, (VH, VW)))
  hi = np.asarray(resize_bilinear(jnp.asarray(low)[..., None], (S, S))[..., 0], np.float64)
  p = np.exp(hi - hi.max(axis=(1, 2), keepdims=True))
  p /= p.sum(axis=(1, 2), keepdims=True)
  want_x = (p * np.arange(S)[None, None, :]).sum((1, 2)) * VW / S
  want_y = (p * np.arange(S)[None, :, None]).sum((1, 2)) * VH / S
  np.testing.assert_allclose(got, np.stack([want_x, want_y], -1), rtol=1e-5, atol=1e-4)


def test_soft_argmax_is_sub_pixel_where_argmax_snaps_to_the_low_res_grid():
  """Peaks at random sub-cell positions: argmax errs by up to half a grid step (6x4.5 video
  px here), soft-argmax by a fraction of a pixel."""
  rng = np.random.default_rng(1)
  pts = rng.uniform(12, 52, size=(32, 2))  # model px, away from borders
  low = jnp.stack([_peak(x, y) for x, y in pts])
  video = resize_bilinear(low[..., None], (VH, VW))[..., 0]
  truth = pts * np.array([VW / S, VH / S])
  err_soft = np.linalg.norm(
    np.asarray(read_points("soft_argmax", low, video, S, (VH, VW))) - truth, axis=-1
  )
  err_arg = np.linalg.norm(
    np.asarray(read_points("argmax", low, video, S, (VH, VW)), np.float64) - truth, axis=-1
  )
  assert err_soft.max() < 0.5, err_soft.max()
  assert err_arg.mean() > 1.5, err_arg.mean()  # the grid step of the reference readout


def test_unknown_readout_is_refused_with_the_choices():
  with pytest.raises(ValueError, match="argmax, soft_argmax, window_soft_argmax"):
    check_readout("centroid")
  with pytest.raises(ValueError, match="point_readout='centroid'"):
    propagate.track_video(
      None,
      None,
      np.zeros((2, S, S, 3), np.float32),
      (VH, VW),
      "point",
      {"points_xy": np.zeros((1, 1, 2)), "point_labels": np.ones((1, 1))},
      point_readout="centroid",
    )
  from sam2pp_jax.tracking.predictor import VideoPredictor

  with pytest.raises(ValueError, match="point_readout='centroid'"):
    VideoPredictor(None, None, "point", point_readout="centroid")


def test_window_soft_argmax_keeps_the_argmax_peak_and_ignores_a_distractor():
  """A second, lower bump (a look-alike): the global soft-argmax lands between the two, the
  windowed one stays on the main peak with sub-pixel error, like soft-argmax without it."""
  rng = np.random.default_rng(2)
  pts = rng.uniform(14, 26, size=(16, 2))  # main peaks, upper left
  far = rng.uniform(44, 52, size=(16, 2))  # distractors, lower right
  low = jnp.stack([jnp.maximum(_peak(x, y), _peak(u, v) - 3.0) for (x, y), (u, v) in zip(pts, far)])
  video = resize_bilinear(low[..., None], (VH, VW))[..., 0]
  truth = pts * np.array([VW / S, VH / S])
  err = lambda r: np.linalg.norm(
    np.asarray(read_points(r, low, video, S, (VH, VW)), np.float64) - truth, axis=-1
  )
  assert err("window_soft_argmax").max() < 0.75, err("window_soft_argmax").max()
  assert err("soft_argmax").mean() > 2.0  # pulled towards the distractor
