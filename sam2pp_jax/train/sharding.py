"""FSDP sharding rules (big_vision style): param path -> PartitionSpec.

A leaf is named by its '/'-joined path; an optimizer-state leaf that mirrors a param (Adam's
mu / nu under `opt_state/.../mu/model/...`) takes that param's name, so it is sharded like the
param. The spec of a param (or mirror) is decided by, in order:

  1. the first rule of `config.mesh.fsdp_rules` whose regex `re.fullmatch`es the name; a rule is
     (regex, choice) with choice "replicate", "fsdp" or an explicit PartitionSpec written as a
     tuple of mesh axes / None, e.g. (None, "fsdp");
  2. otherwise "fsdp".

"fsdp" shards the leaf's largest dimension divisible by the fsdp axis size, unless the leaf has
fewer than `config.mesh.fsdp_min_size` elements (then it stays replicated); an explicit spec is
applied as written, whatever the size. Leaves that mirror no param (step, PRNG key, optimizer
counters, statistics of another shape than their param) take "fsdp" under the threshold. With
fsdp_min_size 0 and no rules this is the trainer's original policy. Pure functions over shapes
and names: nothing here touches devices.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence, Tuple

import jax
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")  # the trainer's mesh axes
REPLICATE, FSDP = "replicate", "fsdp"


@dataclasses.dataclass(frozen=True)
class Rule:
  index: int  # position in config.mesh.fsdp_rules, for error messages
  regex: str
  choice: Any  # REPLICATE, FSDP or a PartitionSpec
  pattern: re.Pattern = dataclasses.field(compare=False, repr=False)

  def where(self) -> str:
    return f"config.mesh.fsdp_rules[{self.index}] ({self.regex!r}, {_show(self.choice)})"


@dataclasses.dataclass(frozen=True)
class Policy:
  min_size: int = 0  # leaves with fewer elements are not sharded by "fsdp"
  rules: Tuple[Rule, ...] = ()


def _show(choice) -> str:
  return repr(choice) if isinstance(choice, str) else repr(tuple(choice))


def _spec_entry(entry, axis_names: Sequence[str], where: str):
  """One PartitionSpec entry: None, a mesh axis, or a tuple of mesh axes."""
  if entry is None:
    return None
  names = (entry,) if isinstance(entry, str) else entry
  if not isinstance(names, (tuple, list)) or not names:
    raise ValueError(f"{where}: spec entry {entry!r} is not None, an axis name or a tuple of them")
  for a in names:
    if a not in axis_names:
      raise ValueError(f"{where}: unknown mesh axis {a!r} (the mesh has {', '.join(axis_names)})")
  return names[0] if isinstance(entry, str) or len(names) == 1 else tuple(names)


def parse_rules(rules, axis_names: Sequence[str] = AXES) -> Tuple[Rule, ...]:
  """Validated rules from config (a sequence of (regex, choice) pairs); a bad one raises a
  ValueError naming it, so a typo fails before the model is built rather than mid-run."""
  if rules is None:
    return ()
  if isinstance(rules, str) or not isinstance(rules, (tuple, list)):
    raise ValueError(
      f"config.mesh.fsdp_rules must be a sequence of (regex, choice) pairs, got {rules!r}"
    )
  out = []
  for i, rule in enumerate(rules):
    where = f"config.mesh.fsdp_rules[{i}] = {rule!r}"
    if isinstance(rule, str) or not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ValueError(f"{where}: a rule is a (regex, choice) pair")
    regex, choice = rule
    if not isinstance(regex, str):
      raise ValueError(f"{where}: the regex must be a string")
    try:
      pattern = re.compile(regex)
    except re.error as e:
      raise ValueError(f"{where}: bad regex: {e}") from None
    if isinstance(choice, str):
      if choice not in (REPLICATE, FSDP):
        raise ValueError(
          f"{where}: choice must be {REPLICATE!r}, {FSDP!r} or a PartitionSpec such as "
          f"(None, 'fsdp'), got {choice!r}"
        )
    elif isinstance(choice, (tuple, list, P)):
      entries = [_spec_entry(e, axis_names, where) for e in choice]
      used = [a for e in entries if e is not None for a in ((e,) if isinstance(e, str) else e)]
      if len(used) != len(set(used)):
        raise ValueError(f"{where}: a mesh axis appears twice in the spec")
      choice = P(*entries)
    else:
      raise ValueError(
        f"{where}: choice must be {REPLICATE!r}, {FSDP!r} or a PartitionSpec such as "
        f"(None, 'fsdp'), got {choice!r}"
      )
    out.append(Rule(i, regex, choice, pattern))
  return tuple(out)


def policy_from_config(mesh_cfg, axis_names: Sequence[str] = AXES) -> Policy:
  """The Policy of config.mesh; configs without the fields get the original policy."""
  get = mesh_cfg.get if hasattr(mesh_cfg, "get") else lambda k, d: getattr(mesh_cfg, k, d)
  min_size = get("fsdp_min_size", 0)
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"config.mesh.fsdp_min_size must be an integer >= 0, got {min_size!r}")
  return Policy(int(min_size), parse_rules(get("fsdp_rules", ()), axis_names))


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int = 0) -> P:
  """The largest dimension divisible by `fsdp` over "fsdp" (the first of equals); replicated
  when fsdp is 1, nothing divides, or the leaf has fewer than min_size elements."""
  size = 1
  for d in shape:
    size *= int(d)
  if fsdp > 1 and len(shape) and size >= min_size:
    for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
      if shape[i] % fsdp == 0:
        spec = [None] * len(shape)
        spec[i] = FSDP
        return P(*spec)
  return P()


def _check_fits(rule: Rule, name: str, shape, axis_sizes: Mapping[str, int]) -> None:
  spec = tuple(rule.choice)
  if len(spec) > len(shape):
    raise ValueError(f"{rule.where()}: spec has {len(spec)} entries for {name} of shape {shape}")
  for dim, entry in zip(shape, spec):
    if entry is None:
      continue
    n = 1
    for a in (entry,) if isinstance(entry, str) else entry:
      n *= int(axis_sizes[a])
    if dim % n:
      raise ValueError(
        f"{rule.where()}: dimension {dim} of {name} (shape {tuple(shape)}) is not divisible by "
        f"the {n} devices of {entry!r}"
      )


def leaf_spec(
  name: str, shape: Sequence[int], axis_sizes: Mapping[str, int], policy: Policy = Policy()
) -> P:
  """The PartitionSpec of a param (or its optimizer-state mirror) named `name`."""
  shape = tuple(int(d) for d in shape)
  for rule in policy.rules:
    if rule.pattern.fullmatch(name):
      if rule.choice == REPLICATE:
        return P()
      if rule.choice == FSDP:
        break
      _check_fits(rule, name, shape, axis_sizes)
      return rule.choice
  return fsdp_spec(shape, int(axis_sizes.get(FSDP, 1)), policy.min_size)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_name(keypath) -> str:
  """'/'-joined names of a jax key path: params/model/image_encoder/.../kernel."""
  return "/".join(_key_name(k) for k in keypath)


def tree_specs(tree, params, axis_sizes: Mapping[str, int], policy: Policy = Policy()):
  """A tree of PartitionSpecs shaped as `tree` (a TrainState, or anything holding the params
  and optimizer state). A leaf whose path ends with a param's path (relative to `params`) and
  has its shape is named by that param: params and their optimizer-state mirrors share rules."""
  param_shapes = {
    path_name(p): tuple(getattr(x, "shape", ()))
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  specs = []
  for keypath, x in flat:
    parts = [_key_name(k) for k in keypath]
    shape = tuple(getattr(x, "shape", ()))
    name: Optional[str] = None
    for i in range(len(parts)):  # the longest suffix that is a param path
      cand = "/".join(parts[i:])
      if cand in param_shapes:
        # a factored statistic (another shape) is no mirror: it gets the default policy
        name = cand if param_shapes[cand] == shape else None
        break
    if name is None:  # step, rng, optimizer counters: no rules, "fsdp" under the threshold
      specs.append(fsdp_spec(shape, int(axis_sizes.get(FSDP, 1)), policy.min_size))
    else:
      specs.append(leaf_spec(name, shape, axis_sizes, policy))
  return jax.tree_util.tree_unflatten(treedef, specs)
