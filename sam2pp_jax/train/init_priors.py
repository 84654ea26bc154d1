"""Inductive-bias initialisations for from-scratch recipes (never used when fine-tuning).

Why: at a random init, memory attention's cross-attention is close to uniform over the memory
tokens, so every query receives the same average memory and no "where was the object" signal
reaches the decoder; from scratch this took thousands of steps to break. `rope_locality_prior`
gives the cross-attention queries and keys the same constant component on the highest-frequency
RoPE pairs (their biases), so at init each query attends mostly to the memory tokens at its own
position (RoPE makes q.k a function of the offset): copying the previous mask is available from
step 0 and training refines it with appearance.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np


def rope_bias(head_dim: int, num_heads: int, amplitude: float, pairs: int = 2) -> np.ndarray:
  """A bias [num_heads * head_dim] with `amplitude` on the real channel of the first `pairs`
  x- and y-frequency RoPE pairs of every head (see position_encoding.axial_rope_tables)."""
  b = np.zeros((num_heads, head_dim), np.float32)
  quarter = head_dim // 4
  for p in range(min(pairs, quarter)):
    b[:, 2 * p] = amplitude  # x frequency p
    b[:, 2 * (quarter + p)] = amplitude  # y frequency p
  return b.reshape(-1)


def rope_locality_prior(mem_attn: Mapping, num_heads: int, amplitude: float) -> dict:
  """A copy of one memory attention's params whose every cross-attention q/k bias is the
  shared RoPE bias (kernels untouched)."""
  out = {}
  for name, sub in mem_attn.items():
    if not isinstance(sub, Mapping):
      out[name] = sub
      continue
    sub = dict(sub)
    if "cross_attn_image" in sub:
      ca = {k: dict(v) for k, v in sub["cross_attn_image"].items()}
      width = int(ca["q_proj"]["bias"].shape[0])
      b = rope_bias(width // num_heads, num_heads, amplitude)
      for proj in ("q_proj", "k_proj"):  # separate buffers (the train step donates them)
        ca[proj]["bias"] = jnp.array(b, dtype=ca[proj]["bias"].dtype)
      sub["cross_attn_image"] = ca
    out[name] = sub
  return out
