"""Memory policies for the one per-frame step (policy.py explains the hooks).

`get_policy(name, **options)` builds one by name; unknown names and options are refused with
the valid ones listed. POLICIES maps each name to its class.
"""

from __future__ import annotations

import dataclasses

from sam2pp_jax.tracking.memory.dam4sam import DAM4SAM
from sam2pp_jax.tracking.memory.policy import SAM2, MemoryPolicy
from sam2pp_jax.tracking.memory.sam2long import SAM2Long
from sam2pp_jax.tracking.memory.samurai import Samurai

POLICIES = {p.name: p for p in (SAM2, Samurai, SAM2Long, DAM4SAM)}


def get_policy(name: str = "sam2", **options) -> MemoryPolicy:
  """The policy `name` with `options` overriding its defaults (values coerced to the default's
  type, so command-line strings work)."""
  if name not in POLICIES:
    raise ValueError(f"unknown memory policy {name!r}; choose one of {', '.join(POLICIES)}")
  cls = POLICIES[name]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(options) - set(fields))
  if unknown:
    valid = ", ".join(f"{k}={f.default!r}" for k, f in fields.items()) or "none"
    raise ValueError(f"memory policy {name!r} has no option(s) {unknown}; its options: {valid}")
  return cls(**{k: _coerce(name, k, v, fields[k].default) for k, v in options.items()})


def _coerce(policy: str, key: str, value, default):
  if not isinstance(value, str):
    return value
  try:
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return value.lower() in ("true", "1")
    return type(default)(value)
  except ValueError:
    raise ValueError(
      f"memory policy {policy!r}: option {key}={value!r} is not a {type(default).__name__}"
    ) from None


def parse_options(items) -> dict:
  """['k=v', ...] (the CLIs' --memory-opt) -> {k: 'v'}."""
  out = {}
  for item in items or ():
    key, sep, value = str(item).partition("=")
    if not sep or not key:
      raise ValueError(f"--memory-opt {item!r}: write it as name=value")
    out[key.strip()] = value.strip()
  return out


__all__ = [
  "DAM4SAM",
  "POLICIES",
  "SAM2",
  "SAM2Long",
  "MemoryPolicy",
  "Samurai",
  "get_policy",
  "parse_options",
]
