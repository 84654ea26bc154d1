"""Fresh-init health: the from-scratch recipes start from flax init, so its defaults matter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model.memory_encoder import MaskDownSampler
from sam2pp_jax.model.prompt_encoder import PromptEncoder

_DOWN = MaskDownSampler(embed_dim=16, total_stride=16)
_PE = PromptEncoder(embed_dim=64, image_embedding_size=(4, 4), input_image_size=(64, 64))


def _backward_gain(fn, x):
  """Largest |input gradient| for a unit-normal output cotangent (the backward Jacobian)."""
  y, back = jax.vjp(fn, x)
  ct = jax.random.normal(jax.random.key(3), y.shape)
  return jnp.abs(back(ct)[0]).max()


@jax.jit
def _init_biases_and_gains(x, m):
  """Fresh-init first conv biases and backward gains of both mask convs, in one program: traced
  op by op, the conv/LayerNorm graphs cost ~20 s of per-op compiles on CPU."""
  p = _DOWN.init(jax.random.key(0), x)
  pp = _PE.init(jax.random.key(1), m, method=PromptEncoder.embed_masks)
  return (
    p["params"]["encoder_0"]["bias"],
    _backward_gain(lambda x: _DOWN.apply(p, x), x),
    pp["params"]["mask_downscaling_0"]["bias"],
    _backward_gain(lambda m: _PE.apply(pp, m, method=PromptEncoder.embed_masks), m),
  )


@pytest.mark.parametrize("value", [0.0, 1.0, -10.0])
def test_mask_convs_before_layernorm_are_not_degenerate_on_constant_masks(value):
  """A constant mask region gives the conv before a 4-channel LayerNorm the same output at every
  pixel; with zero biases that output is exactly zero on an empty (0-valued) mask and the
  LayerNorm's backward gain is 1/sqrt(eps): the mask downsampler's gain was 7e10 and the prompt
  encoder's 1e6 at init, and the first gradient norm of training ~6e3. torch's default
  (uniform, non-zero) conv biases keep both O(10)."""
  x = jnp.full((1, 64, 64, 1), value, jnp.float32)
  m = jnp.full((1, 16, 16, 1), value, jnp.float32)
  down_bias, down_gain, pe_bias, pe_gain = _init_biases_and_gains(x, m)
  assert np.all(np.asarray(down_bias) != 0)
  assert float(down_gain) < 1e3
  assert np.all(np.asarray(pe_bias) != 0)
  assert float(pe_gain) < 1e3
