"""Every preset builds and its whole forward traces/compiles abstractly (jax.eval_shape)."""

import jax
import jax.numpy as jnp
import pytest

from sam2pp_jax.model.presets import PRESETS, TASKS, get_model_config, validate_model_config
from sam2pp_jax.model.prompt_encoder import PromptEncoder
from sam2pp_jax.model.sam2pp import build_model, param_shapes


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(  # the large preset takes ~20 s to trace: slow
  "preset", [pytest.param(p, marks=pytest.mark.slow) if p == "l" else p for p in PRESETS]
)
def test_preset_traces_every_task(preset):
  model = build_model(preset)
  shapes = param_shapes(model)
  s = model.image_size
  img = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  for task in TASKS:
    f = jax.eval_shape(
      jax.jit(
        lambda p, x, task=task: model.apply({"params": p}, x, task=task, method="encode_image")
      ),
      shapes,
      img,
    )
    assert f["vision"].shape == (1, s // 16, s // 16, model.config.hidden_dim)
    out = jax.eval_shape(
      jax.jit(
        lambda p, f, task=task: model.apply(
          {"params": p},
          f["vision"],
          f["s0"],
          f["s1"],
          task=task,
          multimask_output=True,
          method="sam_heads",
        )
      ),
      shapes,
      f,
    )
    assert out["low_res_masks"].shape == (1, s // 4, s // 4)
    assert (out["boxes"] is not None) == (task == "box")


def test_bplus_size_matches_release():
  # 101,216,130 values in the released checkpoint (../shared/parity/manifest_bplus.json)
  assert _count(param_shapes(build_model("b+"))) == 101_216_130


def test_bad_config_is_rejected_with_field_name():
  c = get_model_config("tiny")
  c.image_size = 70
  with pytest.raises(ValueError, match="image_size"):
    validate_model_config(c)
  with pytest.raises(ValueError, match="unknown model preset"):
    get_model_config("xl")


def test_one_channel_mask_prompt_layernorm_is_rejected():
  # mask_in_chans // 4 == 1 would put a LayerNorm over one channel: a constant, so every
  # mask prompt would give the same dense embedding
  c = get_model_config("tiny")
  c.decoder.mask_in_chans = 4
  with pytest.raises(ValueError, match="mask_in_chans"):
    validate_model_config(c)


@pytest.mark.parametrize("preset", ["tiny", "parity_small"])
def test_mask_prompt_reaches_the_dense_embedding(preset):
  """Two different mask prompts give different dense embeddings (at the model's random init:
  the prompt encoder built and initialised as SAM2Plus builds it)."""
  c = build_model(preset).config
  s, d = int(c.image_size), int(c.hidden_dim)
  encoder = PromptEncoder(
    embed_dim=d,
    image_embedding_size=(s // 16, s // 16),
    input_image_size=(s, s),
    mask_in_chans=c.decoder.mask_in_chans,
  )
  n = s // 4
  yy, xx = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")
  a = jnp.where((yy < n // 2) & (xx < n // 2), 10.0, -10.0)[None, ..., None]
  b = jnp.where((yy >= n // 2) & (xx >= n // 2), 10.0, -10.0)[None, ..., None]
  prompt = (jnp.zeros((1, 1, 2)), -jnp.ones((1, 1), jnp.int32), None)
  variables = encoder.init(jax.random.key(0), *prompt, a)
  da, db = (encoder.apply(variables, *prompt, m)[1] for m in (a, b))
  assert float(jnp.std(da, axis=(1, 2)).mean()) > 1e-2  # spatially varying
  assert float(jnp.abs(da - db).mean()) > 1e-2  # depends on the prompt
