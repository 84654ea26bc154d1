"""The tiny preset runs for real on every task: shapes, finiteness, task-static branches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model.random_params import random_params as numpy_params
from sam2pp_jax.model.sam2pp import build_model


@pytest.fixture(scope="module")
def tiny():
  model = build_model("tiny")
  return model, numpy_params(model, 0)


@pytest.mark.parametrize("task", ["mask", "box", "point"])
def test_frame_roundtrip(tiny, task):
  model, params = tiny
  s = model.image_size
  x = jax.random.normal(jax.random.key(1), (2, s, s, 3))

  @jax.jit
  def step(p, x):
    ap = lambda *a, **k: model.apply({"params": p}, *a, **k)
    f = ap(x, task=task, method="encode_image")
    mask = (jnp.arange(s)[None, :, None] < s // 2) * jnp.ones((2, 1, s))
    if task == "box":
      pts = jnp.array([[[4.0, 4.0], [40.0, 30.0]]] * 2)
      lab = jnp.array([[2, 3]] * 2, jnp.int32)
      o = ap(
        ap(f["vision"], method="no_memory_features"),
        f["s0"],
        f["s1"],
        pts,
        lab,
        task=task,
        multimask_output=True,
        method="sam_heads",
      )
    else:
      o = ap(
        f["vision"],
        f["s0"],
        f["s1"],
        mask,
        jnp.array([[[8.0, 8.0]]] * 2),
        jnp.ones((2, 1), jnp.int32),
        task=task,
        method="prompt_as_output",
      )
    mem, pos = ap(
      f["vision"], o["high_res_masks"], o["object_score_logits"], task=task, method="encode_memory"
    )
    return f, o, mem, pos

  f, o, mem, pos = step(params, x)
  assert o["high_res_masks"].shape == (2, s, s)
  assert o["obj_ptr"].shape == (2, model.config.hidden_dim)
  assert mem.shape == (2, s // 16, s // 16, model.config.mem_dim)
  assert (o["boxes"] is not None) == (task == "box")
  for leaf in jax.tree.leaves((o["high_res_masks"], o["obj_ptr"], mem, pos)):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_only_active_task_is_traced(tiny):
  """A box-task step must not touch the mask/point heads: their params can be absent."""
  model, params = tiny
  s = model.image_size
  pruned = {k: v for k, v in params.items() if not k.endswith(("_mask", "_point"))}
  dec = dict(pruned["sam_unified_decoder"])
  for k in list(dec):
    if k.startswith(
      (
        "conv_s0_mask",
        "conv_s1_mask",
        "output_upscaling_mask",
        "output_hypernetworks_mlps_mask",
        "conv_s0_point",
        "conv_s1_point",
        "output_upscaling_point",
        "output_hypernetworks_mlps_point",
      )
    ):
      del dec[k]
  pruned["sam_unified_decoder"] = dec
  x = jnp.zeros((1, s, s, 3))

  @jax.jit  # one program: op by op, the tiny encoder + heads cost ~15 s of per-op compiles
  def box_step(p, x):
    f = model.apply({"params": p}, x, task="box", method="encode_image")
    return model.apply(
      {"params": p},
      f["vision"],
      f["s0"],
      f["s1"],
      task="box",
      multimask_output=True,
      method="sam_heads",
    )

  assert box_step(pruned, x)["boxes"].shape == (1, 4)
