"""Attention kernel: the plain einsum path vs the blocked (online-softmax) path, same inputs.

    python bench/attention.py [--tokens 4096] [--memories 7] [--repeats 5] [--dtype float32]
    python bench/attention.py --grad     # also forward + backward (training)
    python bench/attention.py --smoke    # seconds: 256 tokens, 2 memories, one round

Shapes of the b+ model at 1024 px (--tokens 4096 = the 64 x 64 map at stride 16):
  hiera_global  a global Hiera block: 8 heads of 56 channels over all tokens ([B, N, H, d]);
  mem_self      memory attention's self-attention: 1 head of 256 channels;
  mem_cross     its cross-attention to --memories frames of tokens + 64 object-pointer tokens,
                with the key mask of a bank whose last memory and half its pointers are empty.
Each shape is jitted on both paths (`path=` overrides model/attention.py's size rule), the calls
interleaved round by round; the best of --repeats rounds is printed as ms and the ratio
plain / blocked (> 1: the blocked path is faster), with the size rule's own choice and the
largest difference between the two outputs (and gradients), relative to max(1, max|plain|).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _smoke import parse_args

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sam2pp_jax.model import attention as A  # noqa: E402

SMOKE = {"tokens": 256, "memories": 2, "repeats": 1}  # --smoke defaults
POINTER_TOKENS = 64  # 16 object pointers x 4 tokens of 64 channels (b+)


def cases(tokens: int, memories: int) -> dict:
  """name -> (q shape, k shape, layout, key-mask shape or None, valid keys per batch item)."""
  nk = memories * tokens + POINTER_TOKENS
  valid = (memories - 1) * tokens + POINTER_TOKENS // 2
  return {
    "hiera_global": ((1, tokens, 8, 56), (1, tokens, 8, 56), "bqhd", None, None),
    "mem_self": ((1, 1, tokens, 256), (1, 1, tokens, 256), "bhqd", None, None),
    "mem_cross": ((1, 1, tokens, 256), (1, 1, nk, 256), "bhqd", (1, nk), valid),
  }


def make_inputs(case, dtype, seed: int = 0):
  q_shape, k_shape, _, mask_shape, valid = case
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=s), dtype) for s in (q_shape, k_shape, k_shape))
  if mask_shape is None:
    return q, k, v, None
  # the bank's layout: spatial memories first, pointers last; the empty ones masked out
  keep = np.zeros(mask_shape, bool)
  n_spatial = mask_shape[1] - POINTER_TOKENS
  keep[:, : valid - POINTER_TOKENS // 2] = True
  keep[:, n_spatial : n_spatial + POINTER_TOKENS // 2] = True
  return q, k, v, jnp.asarray(keep)


def make_fn(layout: str, path: str, grad: bool):
  """Jitted attention on one path; with grad, the loss sum(out^2) and its gradients."""

  def fwd(q, k, v, mask):
    scale = 1.0 / math.sqrt(q.shape[-1])
    return A.attention(q, k, v, scale=scale, key_mask=mask, layout=layout, path=path)

  if not grad:
    return jax.jit(fwd)
  loss = lambda q, k, v, mask: jnp.sum(fwd(q, k, v, mask).astype(jnp.float32) ** 2)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def time_interleaved(fns: dict, args, repeats: int) -> dict:
  """Best wall time (s) of each fn over `repeats` rounds, fns taking turns; compiled first."""
  outs = {n: jax.block_until_ready(f(*args)) for n, f in fns.items()}
  best = {n: math.inf for n in fns}
  for _ in range(repeats):
    for n, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      best[n] = min(best[n], time.perf_counter() - t0)
  return best, outs


def rel_diff(a, b) -> float:
  """max|a - b| / max(1, max|b|), in float32."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(b))))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--tokens", type=int, default=4096, help="query tokens (64x64 at 1024 px)")
  ap.add_argument("--memories", type=int, default=7, help="spatial memory frames (mem_cross)")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--grad", action="store_true", help="also time forward + backward")
  ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
  args = parse_args(ap, argv, SMOKE)
  dtype = jnp.dtype(args.dtype)
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  print(
    f"# backend={jax.default_backend()} dtype={args.dtype} tokens={args.tokens} "
    f"memories={args.memories} repeats={args.repeats} load={load} "
    f"Q_CHUNK={A.Q_CHUNK} K_BLOCK={A.K_BLOCK} BLOCKED_MIN_SCORES={A.BLOCKED_MIN_SCORES}"
  )
  print(f"{'case':<14}{'mode':<9}{'Nq x Nk':>16}{'rule':>9}{'plain ms':>11}{'blocked ms':>12}"
        f"{'ratio':>8}{'rel diff':>11}")  # fmt: skip
  only = [c for c in args.only.split(",") if c]
  for name, case in cases(args.tokens, args.memories).items():
    if only and name not in only:
      continue
    q, k, v, mask = make_inputs(case, dtype)
    layout = case[2]
    axis, head_axis = (2, 1) if layout == "bhqd" else (1, 2)
    nq, nk = q.shape[axis], k.shape[axis]
    rule = A.attention_path(nq, nk, q.shape[head_axis])
    for grad in (False, True) if args.grad else (False,):
      fns = {p: make_fn(layout, p, grad) for p in A.PATHS}
      best, outs = time_interleaved(fns, (q, k, v, mask), args.repeats)
      leaves = [jax.tree.leaves(outs[p]) for p in A.PATHS]
      diff = max(rel_diff(a, b) for a, b in zip(*leaves))
      print(
        f"{name:<14}{'fwd+bwd' if grad else 'fwd':<9}{f'{nq} x {nk}':>16}{rule:>9}"
        f"{best['plain'] * 1e3:>11.1f}{best['blocked'] * 1e3:>12.1f}"
        f"{best['plain'] / best['blocked']:>8.2f}{diff:>11.2e}",
        flush=True,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
