"""LoRA factors (peft's LoraConfig semantics, bias="none") kept apart from the base params.

A targeted layer with kernel W [..., in, out] (Dense [in, out], conv [kh, kw, in, out]) gets
A [..., in, r] and B [r, out]; its output gains (alpha / r) * (dropout(x) (*) A) @ B, where
(*) is the layer's own op (matmul, or the conv with its stride and padding), so the merged
kernel is W + (alpha / r) * A @ B. Factors live in a plain pytree mirroring the base tree.

Two ways to run them:
  * `merge`: one kernel per layer (inference, export, and training without dropout);
  * `attach`: factors ride inside the layer's params and `forward_interceptor` (installed by
    SAM2Plus.apply) adds the branch, with peft's input dropout when the apply carries a
    "dropout" rng (training); without one the result equals the merged layer.
Targets follow peft's matching on the reference's dotted module names (`blocks_3` is
`blocks.3`): a module matches a target t when its name is t or ends with "." + t.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.layers import Conv2d

# peft target_modules of the released training config
# (sam2.1_hiera_b+_predmasks_decoupled_MAME_mixtraining_threetasks.yaml, trainer.peft).
MEMORY_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")
IMAGE_ENCODER_TARGETS = (
  "patch_embed.proj",
  "attn.qkv",
  "attn.proj",
  "mlp.layers.0",
  "mlp.layers.1",
  "neck.convs.0.conv",
  "neck.convs.1.conv",
  "neck.convs.2.conv",
)
# leaves `attach` adds to a targeted layer's params
LORA_A, LORA_B, LORA_DROPOUT = "lora_a", "lora_b", "lora_dropout"


def lora_scale(alpha: float, rank: int) -> float:
  """peft's scaling for the LoRA branch."""
  return float(alpha) / float(rank)


def dotted_name(path) -> str:
  """The reference's module name of a Flax path (`blocks_3`/`mlp`/`layers_0` ->
  `blocks.3.mlp.layers.0`), the name peft's target matching sees."""
  out = []
  for comp in path:
    m = re.match(r"^(.*?)((?:_\d+)+)$", comp)
    if m and m.group(1):
      out.append(m.group(1))
      out.extend(m.group(2).strip("_").split("_"))
    else:
      out.append(comp)
  return ".".join(out)


def matches(name: str, target: str) -> bool:
  """peft's rule for a list of target_modules: exact name or a "."-separated suffix."""
  return name == target or name.endswith("." + target)


def target_paths(tree: Mapping, targets: Iterable[str]) -> list:
  """(path, kernel) of every module holding a `kernel` whose dotted name matches a target.

  Raises when a target matches nothing (a typo or a preset without that layer): peft would
  silently skip it and train fewer factors than the config says.
  """
  targets = tuple(targets)
  if not targets:
    raise ValueError("LoRA needs at least one target module")
  found, used = [], set()

  def rec(sub, path):
    for name, v in sub.items():
      if not isinstance(v, Mapping):
        continue
      p = path + (name,)
      hit = [t for t in targets if matches(dotted_name(p), t)]
      if hit and "kernel" in v and not isinstance(v["kernel"], Mapping):
        found.append((p, v["kernel"]))
        used.update(hit)
      else:
        rec(v, p)

  rec(tree, ())
  missing = [t for t in targets if t not in used]
  if missing:
    raise ValueError(f"LoRA targets {missing} match no module with a kernel in the params")
  return found


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
  with a=sqrt(5), peft's default; fan_in = kh*kw*in for convs), B = 0, so the model starts
  equal to the base."""
  if int(rank) < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {rank}")
  found = target_paths(base_params, targets)
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
    _set(tree, path, {LORA_A: a, LORA_B: b})
  return tree


def delta(lora_a, lora_b, alpha: float, rank: int):
  """Low-rank kernel update (alpha / r) * A @ B, shaped like the kernel."""
  return lora_scale(alpha, rank) * jnp.tensordot(lora_a, lora_b, axes=1)


def _zip_factors(base: Mapping, lora: Mapping, on_layer, path=()):
  """Copy of `base` with on_layer(base_module, factors, path) at every factored module."""
  if LORA_A in lora:
    if "kernel" not in base:
      raise KeyError(f"LoRA factors at {'/'.join(path)} but no kernel there")
    return on_layer(base, lora, path)
  extra = set(lora) - set(base)
  if extra:
    raise KeyError(f"LoRA factors for absent modules {sorted(extra)} under {'/'.join(path)}")
  return {
    n: _zip_factors(v, lora[n], on_layer, path + (n,)) if n in lora else v for n, v in base.items()
  }


def merge(base_params: Mapping, lora_params: Mapping, alpha: float, rank: int) -> dict:
  """Plain params with every factored kernel replaced by kernel + scale * A @ B.

  Modules without factors are passed through unchanged (same leaves); a factor without a
  matching kernel is an error.
  """

  def layer(base, f, path):
    k = base["kernel"]
    d = delta(f[LORA_A], f[LORA_B], alpha, rank)
    if d.shape != k.shape:
      raise ValueError(f"{'/'.join(path)}: update {d.shape} != kernel {k.shape}")
    return {**base, "kernel": k + d.astype(k.dtype)}

  return _zip_factors(base_params, lora_params, layer)


def attach(
  base_params: Mapping, lora_params: Mapping, alpha: float, rank: int, dropout: float
) -> dict:
  """Params whose factored layers also hold A, scale * B and the dropout rate, for the
  unmerged forward of `forward_interceptor` (gradients reach A and B through the scaling)."""
  if not 0.0 <= float(dropout) < 1.0:
    raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
  s = lora_scale(alpha, rank)

  def layer(base, f, path):
    a, b = f[LORA_A], f[LORA_B]
    k = base["kernel"]
    if a.shape[:-1] != k.shape[:-1] or b.shape != (a.shape[-1], k.shape[-1]):
      raise ValueError(f"{'/'.join(path)}: factors {a.shape} x {b.shape} != kernel {k.shape}")
    return {**base, LORA_A: a, LORA_B: s * b, LORA_DROPOUT: jnp.float32(dropout)}

  return _zip_factors(base_params, lora_params, layer)


def _low_rank(module: nn.Module, x, a, b):
  """(x (*) A) @ B with the layer's own op (a rank-r clone of the layer, no bias)."""
  r = a.shape[-1]
  updates = {"features": r, "parent": None}
  params = {"kernel": a}
  if hasattr(module, "use_bias"):
    updates["use_bias"] = False
  else:  # Conv2d (layers.py) always has a bias
    params["bias"] = jnp.zeros((r,), a.dtype)
  h = module.clone(**updates).apply({"params": params}, x)
  return jnp.tensordot(h, b.astype(h.dtype), axes=1)


def forward_interceptor(next_fun, args, kwargs, context):
  """flax method interceptor: a layer whose params hold attached factors returns
  base(x) + (dropout(x) (*) A) @ (scale B); dropout only when the apply has a "dropout" rng."""
  module = context.module
  if context.method_name != "__call__" or not module.has_variable("params", LORA_A):
    return next_fun(*args, **kwargs)
  if not isinstance(module, (nn.Dense, nn.Conv, Conv2d)):
    raise TypeError(f"LoRA factors on {type(module).__name__} at {module.path}: not a linear layer")
  if len(args) != 1 or kwargs:
    raise TypeError(f"LoRA layer {module.path} expects one positional input")
  y = next_fun(*args, **kwargs)
  x = args[0]
  p = module.variables["params"]
  if module.has_rng("dropout") and LORA_DROPOUT in p:
    rate = jnp.asarray(p[LORA_DROPOUT], jnp.float32)
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    x = jnp.where(keep, x / (1.0 - rate).astype(x.dtype), jnp.zeros((), x.dtype))
  return y + _low_rank(module, x, p[LORA_A], p[LORA_B]).astype(y.dtype)
