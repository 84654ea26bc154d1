"""Memory policies inside the whole-video scan: objects are a batch axis with per-object
policy state (tracking two objects together equals tracking each alone), and the default is
SAM 2 unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.tracking.memory import Samurai
from sam2pp_jax.tracking.propagate import track_video

T = 9


@pytest.fixture(scope="module")
def setup():
  model = build_model("tiny")
  params = random_params(model, 0)
  s = int(model.config.image_size)
  rng = np.random.default_rng(0)
  frames = rng.standard_normal((T, s, s, 3)).astype(np.float32)
  masks = np.zeros((2, 48, 48), bool)
  masks[0, 5:20, 8:30] = True
  masks[1, 25:44, 20:40] = True
  return model, params, frames, masks


def _track(setup, masks, memory):
  model, params, frames, _ = setup
  return track_video(
    model,
    params,
    frames,
    (48, 48),
    "mask",
    {"mask": masks},
    memory=memory,
    chunk=4,
    return_bank=True,
  )


@pytest.mark.slow  # ~25-35 s on 2 CPU cores; CI's slow stage runs it
def test_objects_are_independent_under_samurai(setup):
  """Per-object Kalman state and rings: two objects tracked together == each alone."""
  policy = Samurai(stable_frames_threshold=2, memory_bank_iou_threshold=0.0)
  both = _track(setup, setup[3], policy)
  st = both["bank"].policy_state
  assert np.all(np.asarray(st.stable) >= 1)  # the filter ran
  for o in range(2):
    alone = _track(setup, setup[3][o : o + 1], policy)
    np.testing.assert_allclose(
      both["low_res_mask_logits"][:, o], alone["low_res_mask_logits"][:, 0], atol=2e-4
    )
    np.testing.assert_array_equal(
      np.asarray(both["bank"].mem_frame[o]), np.asarray(alone["bank"].mem_frame[0])
    )
    np.testing.assert_allclose(
      np.asarray(st.mean[o]), np.asarray(alone["bank"].policy_state.mean[0]), rtol=1e-4, atol=1e-3
    )


def test_named_default_is_sam2(setup):
  a = _track(setup, setup[3], "sam2")
  b = track_video(setup[0], setup[1], setup[2], (48, 48), "mask", {"mask": setup[3]}, chunk=4)
  np.testing.assert_array_equal(a["low_res_mask_logits"], b["low_res_mask_logits"])
  assert a["bank"].policy_state is None
