"""Memory attention: conditions the current frame's S/16 features on the task's memory bank.

Pre-norm transformer layers (self-attention with axial RoPE -> cross-attention to the memory
tokens with RoPE -> ReLU MLP). SAM 2++ keeps one copy per task (`memory_attention_{task}`).

The memory is fixed-shape here: `memory_mask` marks the valid keys, and invalid keys are left
out of the softmax, which equals the reference's concatenation of only the present memories as
long as spatial memories are masked frame by frame (RoPE positions repeat per frame).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.attention import attention
from sam2pp_jax.model.layers import block_output, layer_norm
from sam2pp_jax.model.position_encoding import apply_rope, axial_rope_tables

# torch.nn.LayerNorm default epsilon (the memory-attention norms use it).
TORCH_LN_EPS = 1e-5


def _infer_hw(n: int, feat_hw: Sequence[int] | None) -> tuple[int, int]:
  """Static (h, w) of the query map; a square map is assumed when not given, like the reference."""
  if feat_hw is not None:
    h, w = int(feat_hw[0]), int(feat_hw[1])
    if h * w != n:
      raise ValueError(f"feat_hw {feat_hw} does not match {n} query tokens")
    return h, w
  s = math.isqrt(n)
  if s * s != n:
    raise ValueError(f"{n} query tokens is not a square map; pass feat_hw")
  return s, s


def rope_key_tables(cos: np.ndarray, sin: np.ndarray, num_keys: int, num_k_exclude_rope: int):
  """Key tables: the query grid repeated per memory frame, identity for the trailing tokens."""
  n_rope = num_keys - num_k_exclude_rope
  hw = cos.shape[0]
  if n_rope < 0 or n_rope % hw:
    raise ValueError(
      f"{n_rope} RoPE keys is not a whole number of {hw}-token frames "
      f"({num_keys} keys, {num_k_exclude_rope} excluded)"
    )
  reps = n_rope // hw
  half = cos.shape[1]
  cos_k = np.concatenate(
    [np.tile(cos, (reps, 1)), np.ones((num_k_exclude_rope, half), np.float32)], axis=0
  )
  sin_k = np.concatenate(
    [np.tile(sin, (reps, 1)), np.zeros((num_k_exclude_rope, half), np.float32)], axis=0
  )
  return cos_k, sin_k


class RoPEAttention(nn.Module):
  """Multi-head attention with axial 2-D RoPE on queries and (the first, spatial) keys.

  Key/value input width is taken from the inputs (kv_in_dim 64 for cross-attention).
  """

  embedding_dim: int = 256
  num_heads: int = 1
  downsample_rate: int = 1
  dropout: float = 0.1
  rope_theta: float = 10000.0
  rope_k_repeat: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(
    self,
    q,
    k,
    v,
    feat_hw: Sequence[int] | None = None,
    num_k_exclude_rope: int = 0,
    key_mask=None,
    deterministic: bool = True,
  ):
    internal = self.embedding_dim // self.downsample_rate
    if internal % self.num_heads:
      raise ValueError("num_heads must divide the internal dim")
    hd = internal // self.num_heads
    q = nn.Dense(internal, dtype=self.dtype, name="q_proj")(q)
    k = nn.Dense(internal, dtype=self.dtype, name="k_proj")(k)
    v = nn.Dense(internal, dtype=self.dtype, name="v_proj")(v)

    def heads(x):  # [B, N, C] -> [B, H, N, hd]
      b, n, _ = x.shape
      return x.reshape(b, n, self.num_heads, hd).transpose(0, 2, 1, 3)

    q, k, v = heads(q), heads(k), heads(v)
    nq, nk = q.shape[2], k.shape[2]
    h, w = _infer_hw(nq, feat_hw)
    cos, sin = axial_rope_tables(hd, end_x=w, end_y=h, theta=self.rope_theta)
    if nk - num_k_exclude_rope != nq and not self.rope_k_repeat:
      raise ValueError("keys differ in length from queries but rope_k_repeat is off")
    cos_k, sin_k = rope_key_tables(cos, sin, nk, num_k_exclude_rope)
    # The reference rotates in float32 and casts back.
    q = apply_rope(q.astype(jnp.float32), cos, sin).astype(q.dtype)
    k = apply_rope(k.astype(jnp.float32), cos_k, sin_k).astype(k.dtype)

    # the scale is 1/sqrt(hd): for hd a power of 4 (256, 64) exactly the former division
    rng = None if deterministic or self.dropout == 0.0 else self.make_rng("dropout")
    out = attention(
      q,
      k,
      v,
      scale=1.0 / math.sqrt(hd),
      key_mask=key_mask,
      dropout_rate=self.dropout,
      dropout_rng=rng,
    )
    b = out.shape[0]
    out = out.transpose(0, 2, 1, 3).reshape(b, nq, internal)
    return nn.Dense(self.embedding_dim, dtype=self.dtype, name="out_proj")(out)


class MemoryAttentionLayer(nn.Module):
  """Pre-norm self-attention -> cross-attention to memory -> MLP, each with a residual."""

  d_model: int = 256
  dim_feedforward: int = 2048
  dropout: float = 0.1
  num_heads: int = 1
  rope_theta: float = 10000.0
  pos_enc_at_attn: bool = False
  pos_enc_at_cross_attn_keys: bool = True
  pos_enc_at_cross_attn_queries: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(
    self,
    tgt,
    memory,
    query_pos,
    memory_pos,
    feat_hw=None,
    num_k_exclude_rope=0,
    memory_mask=None,
    deterministic: bool = True,
    key_scale=None,
  ):
    drop = lambda x: nn.Dropout(self.dropout)(x, deterministic=deterministic)
    attn = lambda name, repeat: RoPEAttention(
      embedding_dim=self.d_model,
      num_heads=self.num_heads,
      dropout=self.dropout,
      rope_theta=self.rope_theta,
      rope_k_repeat=repeat,
      dtype=self.dtype,
      name=name,
    )
    norm = lambda name: layer_norm(TORCH_LN_EPS, name=name, dtype=self.dtype)

    x = norm("norm1")(tgt)
    qk = x + query_pos if self.pos_enc_at_attn else x
    tgt = tgt + drop(
      attn("self_attn", False)(qk, qk, x, feat_hw=feat_hw, deterministic=deterministic)
    )

    x = norm("norm2")(tgt)
    q = x + query_pos if self.pos_enc_at_cross_attn_queries else x
    k = memory + memory_pos if self.pos_enc_at_cross_attn_keys else memory
    if key_scale is not None:  # SAM2Long: per-token key factors (values stay unscaled)
      k = k * key_scale[..., None].astype(k.dtype)
    tgt = tgt + drop(
      attn("cross_attn_image", True)(
        q,
        k,
        memory,
        feat_hw=feat_hw,
        num_k_exclude_rope=num_k_exclude_rope,
        key_mask=memory_mask,
        deterministic=deterministic,
      )
    )

    x = norm("norm3")(tgt)
    x = jax.nn.relu(nn.Dense(self.dim_feedforward, dtype=self.dtype, name="linear1")(x))
    x = nn.Dense(self.d_model, dtype=self.dtype, name="linear2")(drop(x))
    return block_output(tgt + drop(x))


class MemoryAttention(nn.Module):
  """Stack of `num_layers` MemoryAttentionLayers (`layers_i`) and a final LayerNorm `norm`.

  Defaults are the released SAM 2++ B+ config (1 head, FFN 2048, 4 layers, memory dim 64).
  """

  d_model: int = 256
  num_layers: int = 4
  pos_enc_at_input: bool = True
  dim_feedforward: int = 2048
  dropout: float = 0.1
  num_heads: int = 1
  rope_theta: float = 10000.0
  pos_enc_at_attn: bool = False
  pos_enc_at_cross_attn_keys: bool = True
  pos_enc_at_cross_attn_queries: bool = False
  dtype: Any = None  # computation dtype (None: float32, nothing cast)

  @nn.compact
  def __call__(
    self,
    curr,
    curr_pos,
    memory,
    memory_pos,
    num_obj_ptr_tokens: int = 0,
    memory_mask=None,
    feat_hw: Sequence[int] | None = None,
    deterministic: bool = True,
    key_scale=None,
  ):
    """curr/curr_pos [B,HW,C], memory/memory_pos [B,M,Cm], memory_mask bool [B,M] (True=valid).

    num_obj_ptr_tokens and feat_hw are static; the first M - num_obj_ptr_tokens memory tokens
    must be whole frames of HW tokens. key_scale [B,M] (optional, SAM2Long): every layer's
    cross-attention keys (memory + pos) are multiplied by it per token. Returns [B,HW,C].
    """
    x = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
    for i in range(self.num_layers):
      x = MemoryAttentionLayer(
        d_model=self.d_model,
        dim_feedforward=self.dim_feedforward,
        dropout=self.dropout,
        num_heads=self.num_heads,
        rope_theta=self.rope_theta,
        pos_enc_at_attn=self.pos_enc_at_attn,
        pos_enc_at_cross_attn_keys=self.pos_enc_at_cross_attn_keys,
        pos_enc_at_cross_attn_queries=self.pos_enc_at_cross_attn_queries,
        dtype=self.dtype,
        name=f"layers_{i}",
      )(
        x,
        memory,
        curr_pos,
        memory_pos,
        feat_hw=feat_hw,
        num_k_exclude_rope=int(num_obj_ptr_tokens),
        memory_mask=memory_mask,
        deterministic=deterministic,
        key_scale=key_scale,
      )
    return layer_norm(TORCH_LN_EPS, name="norm", dtype=self.dtype)(x)
