"""Small building blocks shared by the model files (NHWC layout throughout).

Names of sub-modules follow the reference state-dict names so that the key map in
`sam2pp_jax.convert.key_map` is a mechanical translation (index `N` -> suffix `_N`).

Mixed precision follows flax's convention: a module's `dtype` is the dtype its matmuls,
convolutions and outputs compute in, while params stay float32 (`param_dtype`). `dtype=None`
casts nothing, so the float32 path is exactly the code without a dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

# Name of the transformer-block outputs that the "block" remat policy keeps (train/forward.py):
# a no-op outside jax.checkpoint, so inference and parity are unaffected.
BLOCK_OUTPUT = "block_output"


def block_output(x):
  """Tag a transformer block's output as the residual the per-block remat policy saves."""
  return checkpoint_name(x, BLOCK_OUTPUT)


def gelu(x):
  """Exact GELU, the default of torch.nn.GELU, written as torch's CPU kernel does (x/2 (1 +
  erf(x/sqrt 2))): 15% faster on CPU than jax.nn.gelu's erfc form."""
  return x * 0.5 * (1.0 + jax.lax.erf(x * np.asarray(math.sqrt(0.5), x.dtype)))


def cast(x, dtype):
  """x in the computation dtype; None leaves it as it is (the float32 path casts nothing)."""
  return x if dtype is None else x.astype(dtype)


def dot_f32(spec: str, a, b):
  """einsum(spec, a, b) with a float32 result (attention scores, mask logits). For bf16 a, b
  the backward rounds the incoming gradient to bf16, so the gradient matmuls run in bf16 too,
  as a fused attention's backward does; float32 operands take the plain einsum."""
  if jnp.result_type(a, b) == jnp.float32:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
  return _dot_f32_low(spec, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dot_f32_low(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _dot_f32_fwd(spec, a, b):
  return _dot_f32_low(spec, a, b), (a, b)


def _dot_f32_bwd(spec, res, g):
  a, b = res
  _, vjp = jax.vjp(lambda x, y: jnp.einsum(spec, x, y), a, b)
  return vjp(g.astype(jnp.result_type(a, b)))


_dot_f32_low.defvjp(_dot_f32_fwd, _dot_f32_bwd)


def layer_norm(eps: float, name: str | None = None, dtype: Any = None) -> nn.LayerNorm:
  """LayerNorm that computes the variance as mean((x-mean)^2), like torch. Its statistics and
  normalisation run in float32 whatever `dtype` (the output's dtype) is, as under autocast."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def torch_bias_init(fan_in: int):
  """torch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Zero biases make a
  LayerNorm after a conv see an all-zero vector on empty mask regions (gradient x 1/sqrt(eps))."""
  bound = 1.0 / float(max(fan_in, 1)) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class MLP(nn.Module):
  """`num_layers` Dense layers with an activation between them (`layers_i`)."""

  hidden_dim: int
  output_dim: int
  num_layers: int
  activation: Callable = jax.nn.relu
  sigmoid_output: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      features = self.output_dim if last else self.hidden_dim
      x = nn.Dense(features, dtype=self.dtype, name=f"layers_{i}")(x)
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
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x = cast(x, self.dtype)
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, cin, self.features))
    bias = self.param("bias", torch_bias_init(4 * cin), (self.features,))
    b, h, w, _ = x.shape
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel.astype(x.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(x.dtype)


class DepthwiseConv2d(nn.Module):
  """Depth-wise KxK conv, stride 1, symmetric zero padding, as an explicit sum of shifted maps.

  Same params as `nn.Conv(feature_group_count=C)` (kernel [K, K, 1, C], bias [C]); XLA CPU's
  grouped convolution is slow, while the K*K multiply-adds fuse into one elementwise loop.
  """

  features: int
  kernel_size: int = 7
  padding: int = 3
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x = cast(x, self.dtype)
    k, p = self.kernel_size, self.padding
    c = x.shape[-1]
    if c != self.features:
      raise ValueError(f"depth-wise conv of {self.features} channels got {c}")
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c))
    bias = self.param("bias", torch_bias_init(k * k), (c,))
    _, h, w, _ = x.shape
    ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
    # the K*K-term sum accumulates in at least float32 (a bf16 running sum would round 49x)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(acc)
    kernel = kernel.astype(acc)
    out = None
    for i in range(k):
      for j in range(k):
        term = xp[:, i : i + ho, j : j + wo, :] * kernel[i, j, 0]
        out = term if out is None else out + term
    return (out + bias.astype(acc)).astype(x.dtype)


def _conv_native(x, kernel, stride: int, padding: int):
  lead = x.shape[:-3]
  y = jax.lax.conv_general_dilated(
    x.reshape((-1,) + x.shape[-3:]),
    kernel,
    (stride, stride),
    [(padding, padding), (padding, padding)],
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return y.reshape(lead + y.shape[1:])


def _conv_patches(x, kernel, stride: int, padding: int):
  """The same convolution as k*k strided slices and one contraction."""
  k, s, p = kernel.shape[0], stride, padding
  if p:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)])
  h, w = x.shape[-3], x.shape[-2]
  ho, wo = (h - k) // s + 1, (w - k) // s + 1
  cols = [
    x[..., i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :]
    for i in range(k)
    for j in range(k)
  ]
  return jnp.einsum(
    "...hwpc,pco->...hwo", jnp.stack(cols, axis=-2), kernel.reshape((k * k,) + kernel.shape[2:])
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv(x, kernel, stride: int, padding: int):
  """Native convolution forward; gradient through `_conv_patches`. XLA CPU's own gradient of a
  strided convolution (dilated-kernel / dilated-input convolutions) is ~10x slower, while its
  forward is 2-4x faster than the patch form."""
  return _conv_native(x, kernel, stride, padding)


def _strided_fwd(x, kernel, stride, padding):
  return _conv_native(x, kernel, stride, padding), (x, kernel)


def _strided_bwd(stride, padding, res, g):
  x, kernel = res
  _, vjp = jax.vjp(lambda a, b: _conv_patches(a, b, stride, padding), x, kernel)
  return vjp(g)


strided_conv.defvjp(_strided_fwd, _strided_bwd)


class Conv2d(nn.Module):
  """A torch-style Conv2d (symmetric integer padding, NHWC) with `nn.Conv`'s params (kernel
  [K, K, Cin, Cout], bias [Cout]). Non-overlapping patches (stride = kernel) are a reshape and a
  contraction; other strided convolutions use `strided_conv` (fast gradient on CPU)."""

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x = cast(x, self.dtype)
    k, s, p = self.kernel_size, self.stride, self.padding
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
    bias = self.param("bias", torch_bias_init(k * k * cin), (self.features,))
    kernel = kernel.astype(x.dtype)
    h, w = x.shape[-3] + 2 * p, x.shape[-2] + 2 * p
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    if ho < 1 or wo < 1:
      raise ValueError(f"a {k}x{k} convolution needs at least {k}x{k} padded input, got {h}x{w}")
    if s == k and p == 0:
      lead = x.shape[:-3]
      x = x[..., : ho * k, : wo * k, :].reshape(lead + (ho, k, wo, k, cin))
      y = jnp.einsum("...hiwjc,ijco->...hwo", x, kernel)
    elif s > 1:
      y = strided_conv(x, kernel, s, p)
    else:
      y = _conv_native(x, kernel, s, p)
    return y + bias.astype(x.dtype)


def conv2d(
  features: int,
  kernel_size: int,
  stride: int = 1,
  padding: int = 0,
  groups: int = 1,
  name: str | None = None,
  dtype: Any = None,
) -> nn.Module:
  """A torch-style Conv2d (symmetric integer padding) in NHWC; grouped ones use `nn.Conv`."""
  if groups != 1:
    return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      feature_group_count=groups,
      dtype=dtype,
      name=name,
    )
  return Conv2d(features, kernel_size, stride, padding, dtype=dtype, name=name)
