"""Nested params trees: flatten to path tuples, and check a tree against a model's template.

Shared by the checkpoint loader (`sam2pp_jax.checkpoint`) and the state-dict converter
(`sam2pp_jax.convert.key_map`), which both sit above the model layer.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class ParamTreeError(ValueError):
  """A params tree does not match the model's template (names the offending params)."""


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
  """{path tuple: leaf} of a nested mapping, in insertion order."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def check_against_template(tree: Mapping, template: Mapping, origin: Mapping | None = None):
  """Raise ParamTreeError listing missing, unexpected and mis-shaped params.

  `template` is a params tree or its `jax.eval_shape`; `origin` optionally maps a path to the
  name it came from (a reference state-dict key), quoted beside unexpected / mis-shaped ones.
  """
  got, want = flatten(tree), flatten(template)
  origin = origin or {}
  name = lambda p: f"{'/'.join(p)}" + (f" (from {origin[p]})" if p in origin else "")
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  bad = [p for p in set(got) & set(want) if tuple(np.shape(got[p])) != tuple(want[p].shape)]
  msgs = []
  if missing:
    msgs.append(
      f"{len(missing)} Flax params have no reference key: "
      + ", ".join("/".join(p) for p in missing[:20])
    )
  if extra:
    msgs.append(
      f"{len(extra)} reference keys match no Flax param: " + ", ".join(name(p) for p in extra[:20])
    )
  if bad:
    msgs.append(
      f"{len(bad)} shape mismatches: "
      + ", ".join(
        f"{name(p)} got {tuple(np.shape(got[p]))} want {tuple(want[p].shape)}"
        for p in sorted(bad)[:20]
      )
    )
  if msgs:
    raise ParamTreeError("state dict does not match the model: " + "; ".join(msgs))
