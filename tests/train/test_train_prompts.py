"""Training prompt simulation and plan (no model compile): hand-checkable properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.tracking import prompts
from sam2pp_jax.train import forward, prompt_sim


def test_mask_to_box_is_the_pixel_extent_and_zero_when_empty():
  """One convention for training prompts, training targets and data: pixel i covers [i, i+1),
  so a box is [x0, y0, x_max + 1, y_max + 1]; numpy in -> numpy out, jax in -> jax out."""
  m = np.zeros((3, 10, 12), bool)
  m[0, 2:5, 3:9] = True
  m[1, 9, 11] = True
  b = np.asarray(prompts.mask_to_box(jnp.asarray(m)))
  np.testing.assert_array_equal(b[0], [3, 2, 9, 5])  # the slice bounds mask[2:5, 3:9]
  np.testing.assert_array_equal(b[1], [11, 9, 12, 10])
  np.testing.assert_array_equal(b[2], [0, 0, 0, 0])
  host = prompts.mask_to_box(m)
  assert isinstance(host, np.ndarray) and host.dtype == np.float32
  np.testing.assert_array_equal(host, b)
  jitted = jax.jit(prompts.mask_to_box)(jnp.asarray(m[None]))  # any leading axes
  np.testing.assert_array_equal(np.asarray(jitted)[0], b)


def test_box_points_noise_is_bounded_and_clamped():
  boxes = jnp.array([[10.0, 10.0, 50.0, 30.0], [0.0, 0.0, 63.0, 63.0]])
  clean, labels = prompt_sim.box_points(jax.random.key(0), boxes, 64, noise=0.0)
  np.testing.assert_array_equal(np.asarray(clean).reshape(2, 4), np.asarray(boxes))
  np.testing.assert_array_equal(np.asarray(labels), [[2, 3], [2, 3]])
  for s in range(20):
    pts, _ = prompt_sim.box_points(jax.random.key(s), boxes, 64, noise=0.1, noise_bound=20.0)
    p = np.asarray(pts).reshape(2, 4)
    # box 0: |dx| <= 0.1 * 40 = 4, |dy| <= 0.1 * 20 = 2
    assert np.all(np.abs(p[0] - [10, 10, 50, 30]) <= [4, 2, 4, 2])
    assert p.min() >= 0 and p.max() <= 63


def test_click_from_errors_lands_in_the_error_region_with_its_label():
  gt = np.zeros((4, 16, 16), bool)
  gt[:, 4:12, 4:12] = True
  pred = np.zeros_like(gt)
  pred[1] = gt[1]
  pred[1, 0:2, 0:2] = True  # object 1: only false positives
  pred[2, 4:12, 4:8] = True  # object 2: only false negatives (right half missing)
  pred[3] = gt[3]  # object 3: perfect -> negative click on background
  for s in range(10):
    xy, lab = prompt_sim.click_from_errors(jax.random.key(s), jnp.asarray(gt), jnp.asarray(pred))
    xy, lab = np.asarray(xy)[:, 0].astype(int), np.asarray(lab)[:, 0]
    assert lab[0] == 1 and gt[0, xy[0, 1], xy[0, 0]]  # empty pred: inside the GT
    assert lab[1] == 0 and pred[1, xy[1, 1], xy[1, 0]] and not gt[1, xy[1, 1], xy[1, 0]]
    assert lab[2] == 1 and gt[2, xy[2, 1], xy[2, 0]] and not pred[2, xy[2, 1], xy[2, 0]]
    assert lab[3] == 0 and not gt[3, xy[3, 1], xy[3, 0]]


def _reference_heat(x, y, hw, radius, sigma):
  """The reference's point prompt, pixel by pixel in float64: a peak-1 Gaussian on the disc of
  `radius` around (int(x), int(y)), values below float64 eps dropped, rounded to float32."""
  cx, cy = int(x), int(y)
  yy, xx = np.mgrid[: hw[0], : hw[1]]
  d2 = (xx - cx) ** 2 + (yy - cy) ** 2
  g = np.exp(-d2 / (2.0 * sigma * sigma))
  return np.where((d2 <= radius * radius) & (g >= np.finfo(np.float64).eps), g, 0.0).astype(
    np.float32
  )


@pytest.mark.parametrize("radius, sigma", [(5, 2.0), (3, 0.6), (9, 1.5)])
def test_gaussian_heatmaps_training_and_inference_are_the_reference_prompt(radius, sigma):
  pts = np.array(
    [[10.7, 20.2], [0.5, 63.9], [33.0, 31.99], [-2.5, 5.0], [64.0, 2.0], [-12.0, 3.0]], np.float32
  )
  got = np.asarray(prompts.gaussian_heatmaps(jnp.asarray(pts), 64, radius, sigma))
  rect = np.asarray(prompts.gaussian_heatmaps(jnp.asarray(pts), (48, 80), radius, sigma))
  for i, (x, y) in enumerate(pts):
    want = _reference_heat(x, y, (64, 64), radius, sigma)
    np.testing.assert_array_equal(got[i], want)
    host = prompts.gaussian_point_mask(x, y, (64, 64), radius, sigma)
    np.testing.assert_array_equal(host, want)
    np.testing.assert_array_equal(rect[i], _reference_heat(x, y, (48, 80), radius, sigma))
  assert got[5].max() == 0 and got[0].max() == 1  # off the grid: empty; peak 1


@pytest.mark.parametrize("task", ["mask", "box", "point"])
def test_plan_orders_conditioning_frames_first(task):
  cfg = forward.default_prompt_config()
  t = 6
  seen_two, seen_pt = False, False
  for s in range(40):
    plan = forward.sample_plan(jax.random.key(s), task, cfg, t, jnp.ones((2, t), bool))
    order = np.asarray(plan["order"])
    assert sorted(order.tolist()) == list(range(t)) and order[0] == 0
    two = bool(plan["two_cond"])
    seen_two |= two
    seen_pt |= bool(plan["use_pt"])
    wc = np.asarray(plan["write_cond"])
    assert wc[0] and (wc[1] if two else True)
    rest = order[2:] if two else order[1:]
    assert list(rest) == sorted(rest)  # the rest in time order
    br = np.asarray(plan["branch"])
    assert np.all(br[2 if two else 1 :] == forward.B_TRACK)
    if task == "point":
      assert not two and not bool(plan["use_pt"]) and br[0] == forward.PROMPT_OUT
    if not bool(plan["use_pt"]):
      assert not np.asarray(plan["correct"]).any()
  if task != "point":
    assert seen_two and seen_pt  # both decisions are actually drawn


def test_box_plan_drops_an_invisible_second_conditioning_frame():
  cfg = forward.default_prompt_config()
  vis = jnp.ones((1, 5), bool).at[0, 1:].set(False)  # only frame 0 visible
  for s in range(30):
    plan = forward.sample_plan(jax.random.key(s), "box", cfg, 5, vis)
    assert not bool(plan["two_cond"])
