"""Reference state-dict names <-> Flax param paths, with explicit layout transforms.

Module paths translate mechanically: a numeric component joins its parent with '_'
(`blocks.3.attn` -> `blocks_3/attn`, `adjust3_tl.0.1` -> `adjust3_tl_0_1`). Leaves follow the
ordered RULES table below (first match wins), each naming the Flax leaf and the transform.
Every key must be consumed exactly once and every Flax param filled; errors name the keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from sam2pp_jax.model.param_tree import ParamTreeError, check_against_template, flatten

# ---------------------------------------------------------------------------------------------
# Layout transforms (torch -> flax, and the inverse)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
  name: str
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
LINEAR = Transform("linear OI->IO", lambda a: a.T, lambda a: a.T)
CONV = Transform(
  "conv OIHW->HWIO", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)
)
CONV_T = Transform(
  "conv-transpose IOHW->HWIO", lambda a: a.transpose(2, 3, 0, 1), lambda a: a.transpose(2, 3, 0, 1)
)
NCHW = Transform(
  "map NCHW->NHWC", lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2)
)

# (regex on the full torch key, required ndim or None, flax leaf name or None=keep, transform)
RULES: list[tuple[str, int | None, str | None, Transform]] = [
  # nn.Embedding tables keep their [num, dim] layout.
  (
    r"(point_embeddings\.\d+|not_a_point_embed|no_mask_embed|iou_token|mask_tokens|"
    r"obj_score_token)\.weight$",
    2,
    "embedding",
    IDENTITY,
  ),
  # Transposed convs of the per-task output upscaling (Sequential slots 0 and 3).
  (r"output_upscaling_\w+\.[03]\.weight$", 4, "kernel", CONV_T),
  # Frozen batch-norm statistics and layer scale: same name, same layout.
  (r"\.running_(mean|var)$", 1, None, IDENTITY),
  (r"\.gamma$", 1, "gamma", IDENTITY),
  # Hiera absolute position embeddings are image-like maps.
  (r"\.pos_embed(_window)?$", 4, None, NCHW),
  # Top-level free tensors of the video model.
  (
    r"^(maskmem_tpos_enc|no_mem_embed|no_mem_pos_enc|no_obj_ptr|no_obj_embed_spatial)$",
    None,
    None,
    IDENTITY,
  ),
  (r"positional_encoding_gaussian_matrix$", 2, None, IDENTITY),
  # Generic layers.
  (r"\.weight$", 4, "kernel", CONV),
  (r"\.weight$", 2, "kernel", LINEAR),
  (r"\.weight$", 1, "scale", IDENTITY),  # LayerNorm / LayerNorm2d / FrozenBatchNorm
  (r"\.bias$", 1, "bias", IDENTITY),
]
_COMPILED = [(re.compile(p), nd, leaf, tf) for p, nd, leaf, tf in RULES]


class KeyMapError(ParamTreeError):
  """A state dict does not match the Flax parameter tree (names the offending keys)."""


def _module_path(parts: list[str]) -> list[str]:
  out: list[str] = []
  for p in parts:
    if p.isdigit():
      if not out:
        raise KeyMapError(f"key starts with an index: {'.'.join(parts)}")
      out[-1] = f"{out[-1]}_{p}"
    else:
      out.append(p)
  return out


def rule_for(key: str, ndim: int) -> tuple[tuple[str, ...], Transform]:
  """Flax path (tuple) and transform for one reference key of rank `ndim`."""
  for pat, nd, leaf, tf in _COMPILED:
    if (nd is None or nd == ndim) and pat.search(key):
      parts = key.split(".")
      mod = _module_path(parts[:-1])
      return tuple(mod + [leaf or parts[-1]]), tf
  raise KeyMapError(
    f"no key-map rule for reference key {key!r} (rank {ndim}); "
    "add one to sam2pp_jax.convert.key_map.RULES"
  )


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  node = tree
  for p in path[:-1]:
    node = node.setdefault(p, {})
    if not isinstance(node, dict):
      raise KeyMapError(f"path collision at {'/'.join(path)}")
  if path[-1] in node:
    raise KeyMapError(f"two reference keys map to the same Flax param {'/'.join(path)}")
  node[path[-1]] = value


def torch_to_flax(state_dict: Mapping[str, np.ndarray], template: Mapping | None = None) -> dict:
  """Reference state dict -> nested Flax params dict.

  With `template` (a params tree or its `jax.eval_shape`), also checks that every template
  param is filled with the right shape and no reference key is left over.
  """
  tree: dict = {}
  for key, value in state_dict.items():
    arr = np.asarray(value)
    path, tf = rule_for(key, arr.ndim)
    _set(tree, path, tf.to_flax(arr))
  if template is not None:
    try:
      check_against_template(
        tree, template, origin=dict((rule_for(k, np.ndim(v))[0], k) for k, v in state_dict.items())
      )
    except ParamTreeError as e:
      raise KeyMapError(str(e)) from None
  return tree


def flax_to_torch(params: Mapping, reference_keys: Mapping[str, tuple] | list[str]) -> dict:
  """Nested Flax params -> reference state dict, in the order of `reference_keys`.

  `reference_keys` is a manifest ({key: shape}) or a key list; every key must be produced and
  every Flax param consumed exactly once.
  """
  flat = flatten(params)
  shapes = dict(reference_keys) if isinstance(reference_keys, Mapping) else None
  out, used = {}, set()
  for key in reference_keys:
    if shapes is not None:
      ndim = len(shapes[key])
    else:
      ndim = None
    path, tf = _rule_for_reverse(key, ndim, flat)
    if path not in flat:
      raise KeyMapError(f"reference key {key!r} needs Flax param {'/'.join(path)}, which is absent")
    if path in used:
      raise KeyMapError(f"Flax param {'/'.join(path)} claimed twice (last by {key!r})")
    used.add(path)
    arr = tf.to_torch(np.asarray(flat[path]))
    if shapes is not None and tuple(arr.shape) != tuple(shapes[key]):
      raise KeyMapError(f"{key!r}: exported shape {arr.shape} != manifest {tuple(shapes[key])}")
    out[key] = arr
  left = sorted(set(flat) - used)
  if left:
    raise KeyMapError(
      f"{len(left)} Flax params not exported: " + ", ".join("/".join(p) for p in left[:20])
    )
  return out


def _rule_for_reverse(key, ndim, flat):
  if ndim is not None:
    return rule_for(key, ndim)
  for nd in (1, 2, 3, 4):
    try:
      path, tf = rule_for(key, nd)
    except KeyMapError:
      continue
    if path in flat and np.ndim(flat[path]) == nd:
      return path, tf
  raise KeyMapError(f"cannot place reference key {key!r} without its shape")


def reference_keys(params: Mapping) -> dict[str, tuple]:
  """{reference key: reference shape} for every leaf of a Flax params tree (inverse rules).

  A module component `name_N` is the reference's `name.N`; every key found is checked to map
  back to the same Flax path, so the inverse is exact or it raises.
  """
  out = {}
  for path, leaf in flatten(params).items():
    mods = []
    for comp in path[:-1]:
      m = re.match(r"^(.*?)((?:_\d+)+)$", comp)
      if m and m.group(1):
        mods.append(m.group(1))
        mods.extend(m.group(2).strip("_").split("_"))
      else:
        mods.append(comp)
    last = path[-1]
    leaf_names = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
    key = ".".join(mods + [leaf_names.get(last, last)])
    shape = tuple(np.shape(leaf))
    fpath, tf = rule_for(key, len(shape))
    if fpath != path:
      raise KeyMapError(
        f"Flax param {'/'.join(path)} has no reference name (inverse gives "
        f"{key!r} -> {'/'.join(fpath)})"
      )
    probe = np.lib.stride_tricks.as_strided(
      np.zeros(1, np.float32), shape=shape, strides=(0,) * len(shape)
    )
    out[key] = tuple(tf.to_torch(probe).shape)
  return out
