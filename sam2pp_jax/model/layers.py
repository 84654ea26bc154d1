"""Small building blocks shared by the model files (NHWC layout throughout).

Names of sub-modules follow the reference state-dict names so that the key map in
`sam2pp_jax.convert.key_map` is a mechanical translation (index `N` -> suffix `_N`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def gelu(x):
  """Exact (erf) GELU, the default of torch.nn.GELU."""
  return jax.nn.gelu(x, approximate=False)


def layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm that computes the variance as mean((x-mean)^2), like torch."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class MLP(nn.Module):
  """`num_layers` Dense layers with an activation between them (`layers_i`)."""

  hidden_dim: int
  output_dim: int
  num_layers: int
  activation: Callable = jax.nn.relu
  sigmoid_output: bool = False

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.output_dim if last else self.hidden_dim, name=f"layers_{i}")(x)
      if not last:
        x = self.activation(x)
    if self.sigmoid_output:
      x = jax.nn.sigmoid(x)
    return x


class ConvTranspose2x2(nn.Module):
  """Transposed conv with kernel 2, stride 2 (no overlap): each pixel becomes a 2x2 patch.

  Kernel stored as [2, 2, in, out]; written as an einsum so it is exact and layout-explicit.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    b, h, w, _ = x.shape
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel.astype(x.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(x.dtype)


def conv2d(features: int, kernel_size: int, stride: int = 1, padding: int = 0,
           groups: int = 1, name: str | None = None) -> nn.Conv:
  """A torch-style Conv2d (symmetric integer padding) in NHWC."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 feature_group_count=groups, name=name)


def nchw_to_nhwc(x):
  return jnp.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x):
  return jnp.transpose(x, (0, 3, 1, 2))
