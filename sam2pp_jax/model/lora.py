"""LoRA factors for SAM 2++'s task-adaptive memory attention, kept apart from the base params.

A targeted layer with kernel W [..., in, out] gets A [..., in, r] and B [r, out]; the effective
kernel is W + (alpha / r) * A @ B (biases untouched, as peft with bias="none"). Factors live in
a plain pytree mirroring the base tree, so one apply serves inference (merge once) and
training (merge inside the loss; gradients reach A and B, the base can be stop-gradiented).
Not modelled: peft's lora_dropout on the LoRA branch input (merging makes it inexpressible).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The paper's memory-attention targets (peft target_modules of the released training config).
MEMORY_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")


def lora_scale(alpha: float, rank: int) -> float:
  """peft's scaling for the LoRA branch."""
  return float(alpha) / float(rank)


def _targets(tree: Mapping, targets: Iterable[str], path=()):
  """Yield (path, kernel) of every module named in `targets` that holds a `kernel`."""
  targets = tuple(targets)
  for name, sub in tree.items():
    if not isinstance(sub, Mapping):
      continue
    if name in targets and "kernel" in sub and not isinstance(sub["kernel"], Mapping):
      yield path + (name,), sub["kernel"]
    else:
      yield from _targets(sub, targets, path + (name,))


def _set(tree: dict, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def init_lora(
  key,
  base_params: Mapping,
  rank: int,
  targets: Iterable[str] = MEMORY_ATTENTION_TARGETS,
  dtype=jnp.float32,
) -> dict:
  """Fresh factors for every targeted kernel: A ~ U(+-1/sqrt(fan_in)) (torch kaiming-uniform
  with a=sqrt(5), peft's default), B = 0, so the merged model starts equal to the base."""
  found = list(_targets(base_params, targets))
  if not found:
    raise ValueError(f"no module named one of {tuple(targets)} with a kernel in the params")
  shapes = [tuple(kernel.shape) for _, kernel in found]

  @jax.jit
  def draw(key):  # one program for all factors (eager per-shape RNG ops compile slowly)
    out = []
    for k, shape in zip(jax.random.split(key, len(shapes)), shapes):
      bound = 1.0 / np.sqrt(int(np.prod(shape[:-1])))
      out.append(
        (
          jax.random.uniform(k, shape[:-1] + (rank,), dtype, -bound, bound),
          jnp.zeros((rank, shape[-1]), dtype),
        )
      )
    return out

  tree: dict = {}
  for (path, _), (a, b) in zip(found, draw(key)):
    _set(tree, path, {"lora_a": a, "lora_b": b})
  return tree


def delta(lora_a, lora_b, alpha: float, rank: int):
  """Low-rank kernel update (alpha / r) * A @ B, shaped like the kernel."""
  return lora_scale(alpha, rank) * jnp.tensordot(lora_a, lora_b, axes=1)


def merge(base_params: Mapping, lora_params: Mapping, alpha: float, rank: int) -> dict:
  """Plain params with every factored kernel replaced by kernel + scale * A @ B.

  Modules without factors are passed through unchanged (same leaves); a factor without a
  matching kernel is an error.
  """

  def rec(base, lora, path):
    if lora is None:
      return base
    if "lora_a" in lora:
      if "kernel" not in base:
        raise KeyError(f"LoRA factors at {'/'.join(path)} but no kernel there")
      k = base["kernel"]
      d = delta(lora["lora_a"], lora["lora_b"], alpha, rank)
      if d.shape != k.shape:
        raise ValueError(f"{'/'.join(path)}: update {d.shape} != kernel {k.shape}")
      return {**base, "kernel": k + d.astype(k.dtype)}
    extra = set(lora) - set(base)
    if extra:
      raise KeyError(f"LoRA factors for absent modules {sorted(extra)} under {'/'.join(path)}")
    return {
      n: rec(v, lora.get(n), path + (n,)) if isinstance(v, Mapping) else v for n, v in base.items()
    }

  return rec(base_params, lora_params, ())
