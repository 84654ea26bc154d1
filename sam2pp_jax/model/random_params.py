"""Deterministic random params for tests and benchmarks, filled from numpy (no flax init compile).

One recipe for every random-weight model in the repository (tests, bench/): values are sane
enough that every layer runs finite, and the result depends only on the template and the seed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.sam2pp import SAM2Plus, param_shapes


def _fill(rng: np.random.Generator, name: str, shape: tuple) -> np.ndarray:
  fan_in = max(1, int(np.prod(shape[:-1]))) if len(shape) >= 2 else 1
  x = rng.standard_normal(shape) / np.sqrt(fan_in)
  if name == "running_var":  # FrozenBatchNorm variance: positive (same draw, so same stream)
    x = 0.5 + np.abs(x)
  return x


def random_params(template: Any, seed: int) -> Any:
  """Random params shaped like `template`: a SAM2Plus model (its `param_shapes`) or any pytree
  of arrays / ShapeDtypeStructs (e.g. `jax.eval_shape(module.init, ...)["params"]`).

  Every leaf is N(0, 1/fan_in) (fan_in = prod(shape[:-1]) for >=2-D leaves, 1 otherwise),
  drawn in tree order from `np.random.default_rng(seed)` (float64, cast to the leaf's dtype);
  FrozenBatchNorm `running_var` is 0.5 + |that draw|. Pure: same template and seed, same params.
  """
  if isinstance(template, SAM2Plus):
    template = param_shapes(template)
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    key = path[-1] if path else None
    name = str(getattr(key, "key", getattr(key, "name", key)))
    return jnp.asarray(_fill(rng, name, tuple(s.shape)), s.dtype)

  return jax.tree_util.tree_map_with_path(leaf, template)
