"""Training ≡ inference: the training forward (corrections off, a fixed plan) runs the same
per-frame `track_step` as `track_video`, so its per-frame logits, scores and pointers equal the
tracker's on the same clip and weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_with_objects_present

from sam2pp_jax.tracking.propagate import track_video
from sam2pp_jax.train import forward

T, O = 5, 2


@pytest.fixture(scope="module")
def tiny():
  model, params = tiny_with_objects_present()
  s = int(model.config.image_size)
  rng = np.random.default_rng(5)
  frames = rng.standard_normal((T, s, s, 3)).astype(np.float32)
  yy, xx = np.mgrid[:s, :s]
  masks = np.zeros((T, O, s, s), bool)
  boxes = np.zeros((T, O, 4), np.float32)
  points = np.zeros((T, O, 2), np.float32)
  for t in range(T):
    for o in range(O):
      cx, cy, r = 16 + 24 * o + 2 * t, 20 + 3 * t, 7 + o
      masks[t, o] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
      boxes[t, o] = [cx - r, cy - r, cx + r + 1, cy + r + 1]
      points[t, o] = [cx + 0.25, cy + 0.5]
  batch = {
    "frames": frames[None],
    "masks": masks[None],
    "boxes": boxes[None],
    "points": points[None],
    "visible": np.ones((1, T, O), bool),
    "obj_valid": np.ones((1, O), bool),
  }
  return model, params, batch


def _fixed_plan_config(task="mask"):
  """Corrections off, one conditioning frame: the plan is fixed. Mask / point: the prompt is
  the output; box: an exact box through the heads (a zero-noise "noisy box"), the path the
  tracker takes (a clean-box frame uses the GT mask as output in training, as the reference)."""
  cfg = forward.default_prompt_config()
  cfg.prob_to_use_pt_input = 1.0 if task == "box" else 0.0
  cfg.prob_to_use_box_input = 1.0
  cfg.box_noise = 0.0
  cfg.num_frames_to_correct = 1
  cfg.num_init_cond_frames = 1
  cfg.num_correction_pt_per_frame = 0
  cfg.apply_dropout = False  # inference runs without dropout
  return cfg


# box and point: ~20 s each on 2 CPU cores, CI's slow stage runs them; the box task's own init
# frame is also checked by test_clean_box_conditioning_frame_uses_the_gt_mask_as_output
@pytest.mark.parametrize(
  "task",
  [
    "mask",
    pytest.param("box", marks=pytest.mark.slow),
    pytest.param("point", marks=pytest.mark.slow),
  ],
)
def test_training_forward_equals_track_video(tiny, task):
  model, params, batch = tiny
  s = int(model.config.image_size)
  cfg = _fixed_plan_config(task)
  run = jax.jit(lambda p, b, k: forward.clip_forward(model, p, b, k, task=task, cfg=cfg))
  r = run(params, batch, jax.random.key(0))
  plan = {k: np.asarray(v) for k, v in r["plan"].items() if k != "frame_keys"}
  np.testing.assert_array_equal(plan["order"], np.arange(T))  # the fixed plan
  assert plan["write_cond"].tolist() == [True] + [False] * (T - 1)
  prompt = {
    "mask": {"mask": batch["masks"][0, 0]},
    "box": {"box_xyxy": batch["boxes"][0, 0]},
    "point": {"points_xy": batch["points"][0, 0][:, None, :]},
  }[task]
  ref = track_video(
    model, params, batch["frames"][0], (s, s), task, prompt, chunk=2, video_res=False
  )
  got = jax.tree.map(np.asarray, r["frame_outputs"])
  # frames 1.. are tracked from memory: every difference in the step would show there
  assert np.all(ref["object_score_logits"] > 0)
  for name, key in (
    ("low_res", "low_res_mask_logits"),
    ("score", "object_score_logits"),
    ("obj_ptr", "obj_ptr"),
  ):
    a, b = got[name], ref[key]
    assert a.shape == b.shape, (name, a.shape, b.shape)
    tol = 1e-4 * max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol, f"{task} {name}: max abs diff {err:.3g} > {tol:.3g}"
  # the loss inputs are the same step's candidates: the chosen mask is one of them
  hi = np.asarray(r["outputs"]["multistep_pred_multimasks_high_res"])[1:, 0]  # [T-1,N,M,S,S]
  assert np.isfinite(hi).all()


def test_training_box_prompt_is_sams_inclusive_box():
  """The mask task's box prompt is SAM 2's: corners at the first and last pixel index."""
  m = np.zeros((3, 10, 12), bool)
  m[0, 2:5, 3:9] = True  # rows 2..4, cols 3..8
  m[1, 7, 11] = True  # one pixel
  box = np.asarray(forward._inclusive_box(jnp.asarray(m)))
  np.testing.assert_array_equal(box, [[3, 2, 8, 4], [11, 7, 11, 7], [0, 0, 0, 0]])


def test_clean_box_conditioning_frame_uses_the_gt_mask_as_output(tiny):
  """Box task, clean box (reference `_use_box_as_output`): the frame's output is the GT mask
  as +-10 logits (so its memory is the GT's), its box is the prompt box, its object score +-10,
  and its pointer comes from the heads run on the box alone."""
  model, params, batch = tiny
  s = int(model.config.image_size)
  cfg = _fixed_plan_config("mask")  # no point inputs: the box task's init frame is a clean box
  r = jax.jit(lambda p, b, k: forward.clip_forward(model, p, b, k, task="box", cfg=cfg))(
    params, batch, jax.random.key(0)
  )
  assert int(np.asarray(r["plan"]["branch"])[0]) == forward.BOX_CLEAN
  hi = np.asarray(r["outputs"]["multistep_pred_multimasks_high_res"])[0, 0, :, 0]  # [N,S,S]
  gt = batch["masks"][0, 0]
  np.testing.assert_array_equal(hi, np.where(gt, 10.0, -10.0))
  box = np.asarray(r["outputs"]["multistep_pred_multiboxes_xyxy_norm"])[0, 0, :, 0]
  np.testing.assert_allclose(box * s, batch["boxes"][0, 0], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(r["frame_outputs"]["score"])[0], [10.0, 10.0])

  @jax.jit  # one program: op by op, the encoder + heads cost ~25 s of per-op compiles on CPU
  def box_alone_heads(params, frames, boxes):
    return model.apply(
      {"params": params},
      *_frame0_features(model, params, frames),
      boxes.reshape(O, 2, 2),
      jnp.tile(jnp.asarray([[2, 3]], jnp.int32), (O, 1)),
      None,
      task="box",
      multimask_output=False,
      method="sam_heads",
    )

  heads = box_alone_heads(params, batch["frames"][0, :1], batch["boxes"][0, 0])
  np.testing.assert_allclose(
    np.asarray(r["frame_outputs"]["obj_ptr"])[0], np.asarray(heads["obj_ptr"]), atol=1e-5
  )


def _frame0_features(model, params, frames):
  from sam2pp_jax.tracking.step import frame_features

  f = frame_features(model, params, jnp.asarray(frames), task="box")
  rep = lambda a: jnp.repeat(a, O, axis=0)
  return rep(f["vision"]), rep(f["s0"]), rep(f["s1"])


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_training_applies_memory_attention_dropout(tiny):
  """The reference trains in model.train() mode: memory attention's dropout (0.1 here) changes
  the tracked frames' logits with the step's key, and apply_dropout=False removes it."""
  model, params, batch = tiny
  assert float(model.config.memory_attention.dropout) > 0
  cfg = _fixed_plan_config("mask")
  run = lambda cfg, k: jax.jit(
    lambda p, b, k: forward.clip_forward(model, p, b, k, task="mask", cfg=cfg)
  )(params, batch, jax.random.key(k))["frame_outputs"]["low_res"]
  off_a, off_b = np.asarray(run(cfg, 0)), np.asarray(run(cfg, 1))
  np.testing.assert_array_equal(off_a, off_b)  # the fixed plan: no other randomness
  cfg.apply_dropout = True
  on_a, on_b = np.asarray(run(cfg, 0)), np.asarray(run(cfg, 1))
  np.testing.assert_array_equal(on_a[0], off_a[0])  # frame 0: the prompt itself
  assert np.abs(on_a[1:] - off_a[1:]).max() > 1e-3
  assert np.abs(on_a[1:] - on_b[1:]).max() > 1e-3
