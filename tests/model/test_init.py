"""Fresh-init health: the from-scratch recipes start from flax init, so its defaults matter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model.memory_encoder import MaskDownSampler
from sam2pp_jax.model.prompt_encoder import PromptEncoder


def _backward_gain(fn, x):
  """Largest |input gradient| for a unit-normal output cotangent (the backward Jacobian)."""
  y, back = jax.vjp(fn, x)
  ct = jax.random.normal(jax.random.key(3), y.shape)
  return float(jnp.abs(back(ct)[0]).max())


@pytest.mark.parametrize("value", [0.0, 1.0, -10.0])
def test_mask_convs_before_layernorm_are_not_degenerate_on_constant_masks(value):
  """A constant mask region gives the conv before a 4-channel LayerNorm the same output at every
  pixel; with zero biases that output is exactly zero on an empty (0-valued) mask and the
  LayerNorm's backward gain is 1/sqrt(eps): the mask downsampler's gain was 7e10 and the prompt
  encoder's 1e6 at init, and the first gradient norm of training ~6e3. torch's default
  (uniform, non-zero) conv biases keep both O(10)."""
  x = jnp.full((1, 64, 64, 1), value, jnp.float32)
  down = MaskDownSampler(embed_dim=16, total_stride=16)
  p = down.init(jax.random.key(0), x)
  assert np.all(np.asarray(p["params"]["encoder_0"]["bias"]) != 0)
  assert _backward_gain(lambda x: down.apply(p, x), x) < 1e3

  pe = PromptEncoder(embed_dim=64, image_embedding_size=(4, 4), input_image_size=(64, 64))
  m = jnp.full((1, 16, 16, 1), value, jnp.float32)
  pp = pe.init(jax.random.key(1), m, method=PromptEncoder.embed_masks)
  assert np.all(np.asarray(pp["params"]["mask_downscaling_0"]["bias"]) != 0)
  gain = _backward_gain(lambda m: pe.apply(pp, m, method=PromptEncoder.embed_masks), m)
  assert gain < 1e3
