"""Scaled dot-product attention with an optional key mask, the one implementation behind Hiera's
attention, memory attention and the two-way transformer.

`attention` picks a path from the problem size (`attention_path`):
  * plain: all scores at once, normalised after p @ v (small problems, e.g. Hiera's windows and
    the 256 px parity models);
  * blocked: queries in chunks (`lax.map`) x keys in blocks (`lax.scan`) with a running max and
    sum (online softmax, as flash attention does), so the [Nq, Nk] scores are never written out.
    On CPU that is what makes 4,096-token global attention and memory attention over many
    memories fast (writing and re-reading the full float32 scores is what costs).
  * fused: `jax.nn.dot_product_attention` with cuDNN's flash-attention kernel, on a GPU for the
    problems cuDNN takes (bf16/f16, head dim <= 128, no dropout).
The XLA paths keep scores, max, sum and softmax in float32 and run the p @ v matmul in the
input dtype.
Masked keys get exactly zero weight; a query row whose keys are all masked gets a zero output
(and zero gradients), as memory attention has always done for an empty memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sam2pp_jax.model.layers import dot_f32

# Size rule and block sizes, measured on the 2-core CPU (f32, jitted, interleaved in one process;
# bench/attention.py has the b+ shapes). Blocked / plain speed by heads x queries x keys:
# 4 x 1024 x 1024 and 1 x 1024 x 4096 (4M scores): 0.87-0.98x; 8 x 768 x 768 (4.7M): 1.0x;
# 1 x 2048 x 4096 (8M): 1.4x; 8 x 1024 x 1024 (8M): 1.7x; 8 x 4096 x 4096 (b+ global, d=56):
# 2.3-2.6x; 1 x 4096 x 16448 (memory attention, 4 memories, d=256): 1.3x. Hence the 8M rule.
# Chunk x block sizes tried: {64..1024} x {256..2048}; 256 x 512 was best for the b+ global
# shape, 512-1024 x 512 for one 256-channel head; 512 x 512 is within ~8% of the best on both.
BLOCKED_MIN_SCORES = 8 * 1024 * 1024  # heads * Nq * Nk at or above which the blocked path runs
Q_CHUNK = 512  # target queries per chunk (the chunk count is ceil(Nq / Q_CHUNK))
K_BLOCK = 512  # target keys per block (the block count is ceil(Nk / K_BLOCK))
_ALIGN = 8  # chunk and block lengths are rounded up to a multiple of this

_NEG = float(jnp.finfo(jnp.float32).min)  # masked score: finite, so no inf - inf = nan

PATHS = ("plain", "blocked")  # the XLA paths (every backend, dropout, gradients)
FUSED = "fused"  # jax.nn.dot_product_attention: cuDNN flash attention on GPUs

# On GPU/TPU the scores live in fast memory and XLA fuses the softmax, so the plain path is kept
# up to this many scores (1 GiB of float32) and the blocked one only bounds memory above it.
# Not measured on an accelerator yet (no device was lent); bench/propagate.py is the check.
ACCEL_BLOCKED_MIN_SCORES = 256 * 1024 * 1024
GPU_BACKENDS = ("gpu", "cuda", "rocm")  # jax.default_backend() names where cuDNN may run


def attention_path(
  num_queries: int,
  num_keys: int,
  num_heads: int = 1,
  *,
  head_dim: int | None = None,
  dtype=None,
  dropout: bool = False,
  backend: str | None = None,
) -> str:
  """The path `attention` takes for these (static) sizes on `backend` (default: JAX's default):
  "fused" on a GPU where cuDNN's flash attention takes the problem (bf16/f16, head dim a
  multiple of 8 up to 128, no dropout), else "blocked" from BLOCKED_MIN_SCORES scores on CPU
  (ACCEL_BLOCKED_MIN_SCORES elsewhere), else "plain"."""
  backend = jax.default_backend() if backend is None else backend
  if (
    backend in GPU_BACKENDS
    and not dropout
    and dtype is not None
    and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    and head_dim is not None
    and head_dim <= 128
    and head_dim % 8 == 0
  ):
    return FUSED
  limit = BLOCKED_MIN_SCORES if backend == "cpu" else ACCEL_BLOCKED_MIN_SCORES
  return "blocked" if num_heads * num_queries * num_keys >= limit else "plain"


def attention(
  q,
  k,
  v,
  *,
  scale: float,
  key_mask=None,
  layout: str = "bhqd",
  dropout_rate: float = 0.0,
  dropout_rng=None,
  path: str | None = None,
):
  """softmax(q k^T * scale, masked keys left out) v.

  q [B,H,Nq,d], k [B,H,Nk,d], v [B,H,Nk,dv] for layout "bhqd" ([B,N,H,d] each for "bqhd"; the
  output has q's layout). key_mask: bool, broadcastable to [B, Nk], True = attend. Dropout on the
  attention weights runs when `dropout_rng` is given and the rate is positive. `path` overrides
  the size rule (tests, benchmarks).
  """
  if layout not in ("bhqd", "bqhd"):
    raise ValueError(f"layout must be 'bhqd' or 'bqhd', got {layout!r}")
  axis, head_axis = (2, 1) if layout == "bhqd" else (1, 2)
  nq, nk = q.shape[axis], k.shape[axis]
  rate = float(dropout_rate) if dropout_rng is not None else 0.0
  if path is None:
    path = attention_path(
      nq,
      nk,
      q.shape[head_axis],
      head_dim=q.shape[-1] if q.shape[-1] == v.shape[-1] else None,
      dtype=q.dtype,
      dropout=rate > 0.0,
    )
  if path not in PATHS + (FUSED,):
    raise ValueError(f"path must be one of {PATHS + (FUSED,)}, got {path!r}")
  if key_mask is not None:
    key_mask = jnp.broadcast_to(key_mask, (q.shape[0], nk))
  if path == FUSED:
    if rate > 0.0:
      raise ValueError("the fused path has no attention dropout: use path 'plain' or 'blocked'")
    return _fused(q, k, v, scale, key_mask, layout)
  if path == "plain":
    return _plain(q, k, v, scale, key_mask, layout, rate, dropout_rng)
  if layout == "bqhd":
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  out = _blocked(q, k, v, scale, key_mask, rate, dropout_rng)
  return out.transpose(0, 2, 1, 3) if layout == "bqhd" else out


def _fused(q, k, v, scale, key_mask, layout):
  """jax.nn.dot_product_attention: cuDNN's kernel on a GPU, XLA's elsewhere (tests). A row whose
  keys are all masked is zeroed, as on the other paths."""
  if layout == "bhqd":
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  on_gpu = jax.default_backend() in GPU_BACKENDS
  mask = None if key_mask is None else key_mask[:, None, None, :]
  out = jax.nn.dot_product_attention(
    q, k, v, mask=mask, scale=float(scale), implementation="cudnn" if on_gpu else "xla"
  )
  if key_mask is not None:
    out = jnp.where(key_mask.any(axis=-1)[:, None, None, None], out, jnp.zeros_like(out))
  return out.transpose(0, 2, 1, 3) if layout == "bhqd" else out


def _dropout(x, rate: float, rng):
  """flax's nn.Dropout on the attention weights (kept ones scaled by 1 / (1 - rate))."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _plain(q, k, v, scale, key_mask, layout, rate, rng):
  """All scores at once, normalised after p @ v: one divide per output row instead of per score
  and no softmax pass over the scores, 1.6-5x faster on CPU for Hiera's window sizes (the
  reference's CPU SDPA normalises late too). Masked keys and all-masked rows as in `_blocked`."""
  if layout == "bqhd":
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  s = dot_f32("bhqd,bhkd->bhqk", q, k) * jnp.float32(scale)
  if key_mask is not None:
    valid = key_mask[:, None, None, :]
    s = jnp.where(valid, s, _NEG)
  # the result does not depend on the shift, so its gradient is dropped exactly (as softmax does)
  p = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
  if key_mask is not None:
    p = jnp.where(valid, p, 0.0)  # exact zeros, also when every key is masked
  total = p.sum(axis=-1, keepdims=True)
  if rate > 0.0:
    p = _dropout(p, rate, rng)
  if key_mask is not None:  # an all-masked row has total 0 and p @ v 0: its output is 0
    total = jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
  out = dot_f32("bhqk,bhkd->bhqd", p.astype(v.dtype), v) / total
  out = out.astype(v.dtype)
  return out.transpose(0, 2, 1, 3) if layout == "bqhd" else out


def _pieces(n: int, target: int) -> tuple[int, int]:
  """(count, length) of the fewest pieces of at most ~target covering n: padding stays small."""
  count = max(1, math.ceil(n / target))
  length = math.ceil(math.ceil(n / count) / _ALIGN) * _ALIGN
  return count, length


def _split(x, axis: int, count: int, length: int):
  """Zero-pad `axis` to count * length and move the `count` pieces to a new leading axis."""
  pad = count * length - x.shape[axis]
  if pad:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    x = jnp.pad(x, widths)
  x = x.reshape(x.shape[:axis] + (count, length) + x.shape[axis + 1 :])
  return jnp.moveaxis(x, axis, 0)


def _blocked(q, k, v, scale, key_mask, rate, rng):
  """Online softmax over key blocks for each query chunk; [B,H,N,d] layout in and out."""
  b, h, nq, _ = q.shape
  nk, dv = k.shape[2], v.shape[-1]
  nc, cq = _pieces(nq, Q_CHUNK)
  nb, kb = _pieces(nk, K_BLOCK)
  if key_mask is None and nb * kb != nk:
    key_mask = jnp.ones((b, nk), bool)  # the padded keys must be masked out
  masked = key_mask is not None
  qs = _split(q, 2, nc, cq)  # [nc, B, H, cq, d]
  ks, vs = _split(k, 2, nb, kb), _split(v, 2, nb, kb)  # [nb, B, H, kb, d]
  valid = _split(key_mask, 1, nb, kb) if masked else jnp.zeros((nb, 0), bool)  # [nb, B, kb]

  def chunk(args):
    qc, ci = args

    def step(carry, xs):
      m, l, acc = carry
      kj, vj, valid_j, j = xs
      s = dot_f32("bhqd,bhkd->bhqk", qc, kj) * jnp.float32(scale)
      if masked:
        s = jnp.where(valid_j[:, None, None, :], s, _NEG)
      # the result does not depend on m, so its gradient is dropped exactly (as softmax does)
      m_new = jax.lax.stop_gradient(jnp.maximum(m, s.max(axis=-1)))
      p = jnp.exp(s - m_new[..., None])
      if masked:
        p = jnp.where(valid_j[:, None, None, :], p, 0.0)
      corr = jnp.exp(m - m_new)
      l = l * corr + p.sum(axis=-1)
      if rate > 0.0:
        p = _dropout(p, rate, jax.random.fold_in(jax.random.fold_in(rng, ci), j))
      acc = acc * corr[..., None] + dot_f32("bhqk,bhkd->bhqd", p.astype(v.dtype), vj)
      return (m_new, l, acc), None

    init = (
      jnp.full((b, h, cq), _NEG, jnp.float32),
      jnp.zeros((b, h, cq), jnp.float32),
      jnp.zeros((b, h, cq, dv), jnp.float32),
    )
    (_, l, acc), _ = jax.lax.scan(step, init, (ks, vs, valid, jnp.arange(nb)))
    # all keys masked: l == 0 and acc == 0, so the row is zero
    return (acc / jnp.where(l > 0.0, l, 1.0)[..., None]).astype(v.dtype)

  # remat per chunk: the backward recomputes a chunk's scores instead of storing all of them
  out = jax.lax.map(jax.checkpoint(chunk, prevent_cse=False), (qs, jnp.arange(nc)))
  out = jnp.moveaxis(out, 0, 2).reshape(b, h, nc * cq, dv)
  return out[:, :, :nq]
