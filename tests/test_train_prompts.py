"""Training prompt simulation and plan (no model compile): hand-checkable properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.tracking import prompts
from sam2pp_jax.train import forward, prompt_sim


def test_mask_to_box_inclusive_and_empty():
  m = np.zeros((3, 10, 12), bool)
  m[0, 2:5, 3:9] = True
  m[1, 9, 11] = True
  b = np.asarray(prompt_sim.mask_to_box(jnp.asarray(m)))
  np.testing.assert_array_equal(b[0], [3, 2, 8, 4])
  np.testing.assert_array_equal(b[1], [11, 9, 11, 9])
  np.testing.assert_array_equal(b[2], [0, 0, 0, 0])


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
  pred[1, 0:2, 0:2] = True            # object 1: only false positives
  pred[2, 4:12, 4:8] = True           # object 2: only false negatives (right half missing)
  pred[3] = gt[3]                     # object 3: perfect -> negative click on background
  for s in range(10):
    xy, lab = prompt_sim.click_from_errors(jax.random.key(s), jnp.asarray(gt), jnp.asarray(pred))
    xy, lab = np.asarray(xy)[:, 0].astype(int), np.asarray(lab)[:, 0]
    assert lab[0] == 1 and gt[0, xy[0, 1], xy[0, 0]]              # empty pred: inside the GT
    assert lab[1] == 0 and pred[1, xy[1, 1], xy[1, 0]] and not gt[1, xy[1, 1], xy[1, 0]]
    assert lab[2] == 1 and gt[2, xy[2, 1], xy[2, 0]] and not pred[2, xy[2, 1], xy[2, 0]]
    assert lab[3] == 0 and not gt[3, xy[3, 1], xy[3, 0]]


def test_gaussian_heatmaps_equal_the_inference_prompt():
  pts = np.array([[10.7, 20.2], [0.5, 63.9], [33.0, 31.99]], np.float32)
  got = np.asarray(prompt_sim.gaussian_heatmaps(jnp.asarray(pts), 64, 5, 2.0))
  for i, (x, y) in enumerate(pts):
    np.testing.assert_array_equal(got[i], prompts.gaussian_point_mask(x, y, (64, 64), 5, 2.0))


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
    assert list(rest) == sorted(rest)                       # the rest in time order
    br = np.asarray(plan["branch"])
    assert np.all(br[2 if two else 1:] == forward.B_TRACK)
    if task == "point":
      assert not two and not bool(plan["use_pt"]) and br[0] == forward.PROMPT_OUT
    if not bool(plan["use_pt"]):
      assert not np.asarray(plan["correct"]).any()
  if task != "point":
    assert seen_two and seen_pt      # both decisions are actually drawn


def test_box_plan_drops_an_invisible_second_conditioning_frame():
  cfg = forward.default_prompt_config()
  vis = jnp.ones((1, 5), bool).at[0, 1:].set(False)     # only frame 0 visible
  for s in range(30):
    plan = forward.sample_plan(jax.random.key(s), "box", cfg, 5, vis)
    assert not bool(plan["two_cond"])
