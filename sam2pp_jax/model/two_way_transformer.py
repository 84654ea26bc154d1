"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Tokens are [B, N, C]; the image enters as an NHWC map and leaves as [B, h*w, C] tokens.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam2pp_jax.model.attention import attention
from sam2pp_jax.model.layers import MLP, block_output, layer_norm


def scaled_dot_product_attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v over [B, heads, N, d] arrays (no mask, no dropout), float32
  scores and softmax (model/attention.py)."""
  return attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]))


class Attention(nn.Module):
  """Multi-head attention whose projections may shrink the width by `downsample_rate`."""

  embedding_dim: int
  num_heads: int
  downsample_rate: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, q, k, v):
    internal = self.embedding_dim // self.downsample_rate
    if internal % self.num_heads:
      raise ValueError(f"num_heads {self.num_heads} must divide the internal dim {internal}")
    q = nn.Dense(internal, dtype=self.dtype, name="q_proj")(q)
    k = nn.Dense(internal, dtype=self.dtype, name="k_proj")(k)
    v = nn.Dense(internal, dtype=self.dtype, name="v_proj")(v)

    def split(x):
      b, n, c = x.shape
      return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(0, 2, 1, 3)

    out = scaled_dot_product_attention(split(q), split(k), split(v))
    b, h, n, d = out.shape
    out = out.transpose(0, 2, 1, 3).reshape(b, n, h * d)
    return nn.Dense(self.embedding_dim, dtype=self.dtype, name="out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
  """Token self-attention, token->image attention, token MLP, image->token attention."""

  embedding_dim: int
  num_heads: int
  mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  skip_first_layer_pe: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, queries, keys, query_pe, key_pe):
    d, nh, r, dt = self.embedding_dim, self.num_heads, self.attention_downsample_rate, self.dtype
    norm = lambda name: layer_norm(1e-5, name=name, dtype=dt)
    if self.skip_first_layer_pe:
      queries = Attention(d, nh, dtype=dt, name="self_attn")(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + Attention(d, nh, dtype=dt, name="self_attn")(q, q, queries)
    queries = norm("norm1")(queries)

    q = queries + query_pe
    k = keys + key_pe
    queries = queries + Attention(d, nh, r, dt, name="cross_attn_token_to_image")(q, k, keys)
    queries = norm("norm2")(queries)

    queries = queries + MLP(self.mlp_dim, d, 2, dtype=dt, name="mlp")(queries)
    queries = norm("norm3")(queries)

    q = queries + query_pe
    k = keys + key_pe
    keys = keys + Attention(d, nh, r, dt, name="cross_attn_image_to_token")(k, q, queries)
    keys = norm("norm4")(keys)
    return block_output(queries), block_output(keys)


class TwoWayTransformer(nn.Module):
  """`depth` two-way blocks, then a last token->image attention (SAM mask decoder core)."""

  depth: int = 2
  embedding_dim: int = 256
  num_heads: int = 8
  mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  dtype: Any = None

  @nn.compact
  def __call__(self, image_embedding, image_pe, point_embedding):
    """image_embedding, image_pe: [B,h,w,C]; point_embedding: [B,N,C] -> ([B,N,C], [B,h*w,C])."""
    b, h, w, c = image_embedding.shape
    keys = image_embedding.reshape(b, h * w, c)
    key_pe = jnp.broadcast_to(image_pe, image_embedding.shape).reshape(b, h * w, c)
    queries = point_embedding
    for i in range(self.depth):
      queries, keys = TwoWayAttentionBlock(
        self.embedding_dim,
        self.num_heads,
        self.mlp_dim,
        self.attention_downsample_rate,
        skip_first_layer_pe=(i == 0),
        dtype=self.dtype,
        name=f"layers_{i}",
      )(queries, keys, point_embedding, key_pe)
    q = queries + point_embedding
    k = keys + key_pe
    queries = queries + Attention(
      self.embedding_dim,
      self.num_heads,
      self.attention_downsample_rate,
      self.dtype,
      name="final_attn_token_to_image",
    )(q, k, keys)
    queries = layer_norm(1e-5, name="norm_final_attn", dtype=self.dtype)(queries)
    return queries, keys
