"""Training monitors: IoU / point error of the tracker's chosen output on memory-tracked frames."""

import jax.numpy as jnp
import numpy as np

from sam2pp_jax.train.forward import B_TRACK
from sam2pp_jax.train.monitor import tracking_quality


def _outputs(masks, ious):
  t, n, m = ious.shape
  return {
    "multistep_pred_multimasks_high_res": jnp.asarray(masks)[:, None],
    "multistep_pred_ious": jnp.asarray(ious)[:, None],
    "candidate_valid": jnp.ones((t, 1, m), bool),
  }


def test_track_iou_uses_highest_predicted_iou_on_tracked_frames_only():
  t, n, m, s = 3, 2, 2, 8
  gt = np.zeros((t, n, s, s), bool)
  gt[:, :, 2:6, 2:6] = True  # 16 px squares
  masks = -np.ones((t, n, m, s, s), np.float32)
  masks[:, :, 1, 2:6, 2:4] = 1.0  # candidate 1: half the square
  masks[:, :, 0] = np.where(gt, 1.0, -1.0)  # candidate 0: exact
  ious = np.zeros((t, n, m), np.float32)
  ious[..., 1] = 0.9  # the tracker would pick candidate 1
  branch = jnp.asarray([0, B_TRACK, B_TRACK])  # frame 0 is a prompted frame
  valid = np.ones((t, n), bool)
  gt[2, 1] = False  # absent target: not counted
  r = tracking_quality(
    _outputs(masks, ious), {"masks": jnp.asarray(gt)}, branch, jnp.asarray(valid), "mask"
  )
  np.testing.assert_allclose(float(r["track_iou"]), 0.5, rtol=1e-6)
  ious[..., 0] = 1.0  # now the exact candidate wins
  r = tracking_quality(
    _outputs(masks, ious), {"masks": jnp.asarray(gt)}, branch, jnp.asarray(valid), "mask"
  )
  np.testing.assert_allclose(float(r["track_iou"]), 1.0, rtol=1e-6)


def test_track_px_is_argmax_distance_on_visible_tracked_points():
  t, n, m, s = 2, 2, 1, 16
  masks = np.zeros((t, n, m, s, s), np.float32)
  masks[1, 0, 0, 5, 7] = 3.0  # pixel (x=7, y=5): centre (7.5, 5.5)
  masks[1, 1, 0, 0, 0] = 3.0
  ious = np.zeros((t, n, m), np.float32)
  points = np.zeros((t, n, 2), np.float32)
  points[1, 0] = (10.5, 9.5)  # 3-4-5 triangle from (7.5, 5.5)
  vis = np.array([[True, True], [True, False]])  # object 1 hidden on frame 1
  r = tracking_quality(
    _outputs(masks, ious),
    {"points": jnp.asarray(points), "visibles": jnp.asarray(vis)},
    jnp.asarray([0, B_TRACK]),
    jnp.ones((t, n), bool),
    "point",
  )
  np.testing.assert_allclose(float(r["track_px"]), 5.0, rtol=1e-6)


def test_object_spread_is_zero_when_every_object_of_a_clip_gets_the_same_output():
  """The collapse the from-scratch runs showed: identical outputs per clip -> 0; different
  clips may differ (that is image content, not object identity)."""
  from sam2pp_jax.train.monitor import object_spread

  rng = np.random.default_rng(0)
  t, b, o, h = 3, 2, 3, 4
  per_clip = rng.standard_normal((t, b, 1, h, h)).astype(np.float32)
  same = np.broadcast_to(per_clip, (t, b, o, h, h)).reshape(t, b * o, h, h)
  tracked = np.ones((t, b * o), bool)
  assert float(object_spread(jnp.asarray(same), jnp.asarray(tracked), o)) < 1e-6
  diff = same + rng.standard_normal(same.shape).astype(np.float32)
  assert float(object_spread(jnp.asarray(diff), jnp.asarray(tracked), o)) > 0.3
  # untracked objects do not count: one tracked object per clip has no spread to measure
  one = np.zeros_like(tracked)
  one[:, ::o] = True
  assert float(object_spread(jnp.asarray(diff), jnp.asarray(one), o)) == 0.0
