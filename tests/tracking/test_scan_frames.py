"""The scan tracker wastes no frames (issue 18): padding frames of the last chunk are skipped,
frames are encoded per frame or per chunk by backend, and the bank's conditioning capacity is
the one prompt frame; none of it changes the outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.tracking import propagate

H, W = 48, 64


@pytest.fixture(scope="module")
def tiny():
  model = build_model("tiny")
  return model, random_params(model, 0)


def _video(model, n, seed=5):
  s = int(model.config.image_size)
  frames = np.random.default_rng(seed).standard_normal((n, s, s, 3)).astype(np.float32)
  mask = np.zeros((2, H, W), bool)
  mask[0, 10:30, 20:40] = True
  mask[1, 5:15, 5:60] = True
  return frames, {"mask": mask}


def test_encode_mode_per_backend():
  assert propagate.encode_mode("auto", "cpu") == "frame"
  assert propagate.encode_mode("auto", "gpu") == "batch"
  assert propagate.encode_mode("auto", "tpu") == "batch"
  assert propagate.encode_mode("batch", "cpu") == "batch"
  assert propagate.encode_mode("frame", "gpu") == "frame"
  with pytest.raises(ValueError, match="encode="):
    propagate.encode_mode("chunk")


def test_skip_padding_runs_only_valid_frames():
  """The wrapped step runs once per valid frame (counted on the host); skipped frames keep
  the carry and give zero rows."""
  calls = []

  def step(carry, x):
    jax.debug.callback(lambda t: calls.append(int(t)), x["t"])
    return carry + x["t"], {"y": x["t"] * 10 + 1}

  f = jax.jit(lambda xs: jax.lax.scan(propagate._skip_padding(step), jnp.int32(0), xs))
  xs = {"t": jnp.arange(1, 5, dtype=jnp.int32), "ok": jnp.asarray([True, True, False, False])}
  carry, rows = jax.block_until_ready(f(xs))
  assert sorted(calls) == [1, 2]
  assert int(carry) == 3
  assert rows["y"].tolist() == [11, 21, 0, 0]


@pytest.mark.slow  # ~25-35 s on 2 CPU cores; CI's slow stage runs it
def test_padding_frames_cost_no_encoder_call(tiny, monkeypatch):
  """encode="frame": the encoder runs inside the step, so a chunk of 4 with 1 real frame
  encodes 1 frame (batch 1), and its bank equals a 1-frame chunk's."""
  model, params = tiny
  frames, prompt = _video(model, 2)
  p = propagate.prepare_prompt("mask", prompt, (H, W), int(model.config.image_size))
  p = jax.tree.map(jnp.asarray, p)
  kw = dict(task="mask", cond_capacity=1, encoded=False, memory=propagate.RELEASED)
  first = dict(route="prompt_as_output", multimask=True, **kw)
  bank0 = propagate._first_frame(model, params, jnp.asarray(frames[:1]), p, **first)[0]
  encoded = []
  real = propagate.frame_features

  def counting(model_, params_, images, **k):
    jax.debug.callback(lambda n: encoded.append(int(n)), jnp.int32(images.shape[0]))
    return real(model_, params_, images, **k)

  monkeypatch.setattr(propagate, "frame_features", counting)
  propagate._chunk_step.clear_cache()
  try:
    run = lambda x, ts, ok: propagate._chunk_step(
      model,
      params,
      jax.tree.map(jnp.copy, bank0),  # donated
      jnp.asarray(x),
      jnp.asarray(ts, jnp.int32),
      jnp.asarray(ok),
      task="mask",
      num_frames=2,
      encoded=False,
      memory=propagate.RELEASED,
      encode="frame",
    )
    pad = np.concatenate([frames[1:2]] * 4)
    bank4, rows4 = jax.block_until_ready(run(pad, [1, 2, 3, 4], [True, False, False, False]))
    assert encoded == [1]  # one batch-1 encoding, none for the 3 padding frames
    bank1, rows1 = run(frames[1:2], [1], [True])
  finally:
    propagate._chunk_step.clear_cache()
  for a, b in zip(jax.tree.leaves(bank4), jax.tree.leaves(bank1)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in rows4:
    np.testing.assert_array_equal(np.asarray(rows4[k][:1]), np.asarray(rows1[k]))
    assert not np.any(np.asarray(rows4[k][1:]))  # skipped: zero rows


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_outputs_do_not_depend_on_encode_capacity_or_buckets(tiny):
  """7 frames in chunks of 4 (the last padded): per-frame / per-chunk encoding, cond_capacity
  1 / 2 and present-only / all-slots attention give the same outputs."""
  model, params = tiny
  frames, prompt = _video(model, 7)
  run = lambda **kw: propagate.track_video(
    model, params, frames, (H, W), "mask", prompt, chunk=4, **kw
  )
  ref = run(encode="batch", cond_capacity=2, present_only=False)  # the former computation
  for kw in (
    dict(encode="frame"),
    dict(encode="batch"),
    dict(encode="frame", cond_capacity=2),
  ):
    got = run(**kw)
    for k in ("low_res_mask_logits", "video_res_mask_logits", "object_score_logits", "obj_ptr"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} {kw}")
    np.testing.assert_array_equal(got["visible"], ref["visible"])
  assert run(return_bank=True)["bank"].cond_frame.shape == (1,)
