"""The model checkpoint layout used everywhere: a directory holding

* ``params/``   -- an orbax (StandardCheckpointer) checkpoint of the Flax params tree;
* ``config.json`` -- the full model ConfigDict as JSON, including ``preset``.

``save_model`` writes the whole directory under a temporary sibling name (``DIR.tmp-XXXX``) and
renames it into place, so a reader never sees a half-written checkpoint. ``load_model``
rebuilds the config from its preset (every field of the JSON must be a known field of the
preset's config, lists become tuples where the preset has tuples), builds the model and checks
the params against the model's template, naming missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sam2pp_jax.io.atomic import atomic_dir
from sam2pp_jax.model.param_tree import ParamTreeError, check_against_template, flatten
from sam2pp_jax.model.presets import PRESETS, get_model_config, validate_model_config
from sam2pp_jax.model.sam2pp import build_model, param_shapes

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
  """Unusable checkpoint directory; the message names the path and a remedy."""


def _to_plain(x):
  if isinstance(x, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return {k: _to_plain(v) for k, v in x.items()}
  if isinstance(x, dict):
    return {k: _to_plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_plain(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def _merge(template: ml_collections.ConfigDict, data: dict, where: str, path: str) -> None:
  for key, val in data.items():
    name = f"{where}{key}"
    if key not in template:
      raise CheckpointError(
        f"{path}: unknown config field {name!r}; the checkpoint was "
        "written by an incompatible version -- remove the field or "
        "re-save the checkpoint"
      )
    cur = template[key]
    if isinstance(cur, ml_collections.ConfigDict):
      if not isinstance(val, dict):
        raise CheckpointError(f"{path}: config field {name!r} must be an object, got {val!r}")
      _merge(cur, val, name + ".", path)
      continue
    if isinstance(cur, tuple):
      if not isinstance(val, list):
        raise CheckpointError(f"{path}: config field {name!r} must be a list, got {val!r}")
      val = tuple(val)
    elif isinstance(cur, bool):
      if not isinstance(val, bool):
        raise CheckpointError(f"{path}: config field {name!r} must be true/false, got {val!r}")
    elif isinstance(cur, (int, float)):
      if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise CheckpointError(f"{path}: config field {name!r} must be a number, got {val!r}")
      if isinstance(cur, int) and not isinstance(cur, bool) and val != int(val):
        raise CheckpointError(f"{path}: config field {name!r} must be an integer, got {val!r}")
      val = type(cur)(val)
    elif isinstance(cur, str) and not isinstance(val, str):
      raise CheckpointError(f"{path}: config field {name!r} must be a string, got {val!r}")
    with template.ignore_type():
      template[key] = val


def config_from_json(text: str, path: str = CONFIG_FILE) -> ml_collections.ConfigDict:
  """Parse and validate a config.json: preset template + the recorded fields."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); re-save the checkpoint") from None
  if not isinstance(data, dict):
    raise CheckpointError(f"{path} must hold a JSON object (the model config)")
  preset = data.get("preset")
  if preset is None:
    raise CheckpointError(
      f"{path} has no 'preset' field; it must record the model preset (one of {', '.join(PRESETS)})"
    )
  if preset not in PRESETS:
    raise CheckpointError(
      f"{path}: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}"
    )
  config = get_model_config(preset)
  data = {k: v for k, v in data.items() if k != "_format_version"}
  _merge(config, data, "", path)
  try:
    validate_model_config(config)
  except ValueError as e:
    raise CheckpointError(f"{path}: invalid model config: {e}") from None
  return config


def write_model(directory, params, config) -> None:
  """Write config.json and the orbax params into the existing empty folder `directory` (not
  atomic by itself: `save_model` and the converter call it inside `io.atomic.atomic_dir`)."""
  plain = _to_plain(config)
  plain["_format_version"] = FORMAT_VERSION
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    f.write(json.dumps(plain, indent=2, sort_keys=True) + "\n")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, PARAMS_DIR), params)
  ckptr.wait_until_finished()


def save_model(directory, params, config, *, overwrite: bool = False) -> str:
  """Write params + config to `directory` atomically; returns its absolute path.

  `config` is a model ConfigDict (or a preset name). With overwrite, an existing checkpoint
  directory is replaced (the old one is removed only after the new one is in place).
  """
  if isinstance(config, str):
    config = get_model_config(config)
  if "preset" not in config:
    raise CheckpointError(
      "config has no 'preset' field; build it with presets.get_model_config(preset)"
    )
  validate_model_config(config)
  final = os.path.abspath(os.fspath(directory))
  if os.path.exists(final) and not overwrite:
    raise CheckpointError(
      f"checkpoint directory {final!r} already exists; choose another path or pass overwrite=True"
    )
  with atomic_dir(final) as tmp:
    write_model(tmp, params, config)
  return final


def load_config(directory) -> ml_collections.ConfigDict:
  """The validated model config of a checkpoint directory."""
  d = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(d):
    raise CheckpointError(
      f"checkpoint directory {d!r} does not exist; pass a directory "
      "written by sam2pp_jax.checkpoint.save_model (or the converter)"
    )
  cfg = os.path.join(d, CONFIG_FILE)
  if not os.path.isfile(cfg):
    raise CheckpointError(
      f"checkpoint {d!r} has no {CONFIG_FILE}; it is not a sam2pp_jax "
      "checkpoint (expected params/ and config.json)"
    )
  with open(cfg) as f:
    return config_from_json(f.read(), cfg)


def load_params(directory, model) -> Any:
  """The checkpoint's params, checked against `model`'s template (jax arrays)."""
  d = os.path.abspath(os.fspath(directory))
  pdir = os.path.join(d, PARAMS_DIR)
  if not os.path.isdir(pdir):
    raise CheckpointError(f"checkpoint {d!r} has no {PARAMS_DIR}/ directory; re-save it")
  try:
    params = ocp.StandardCheckpointer().restore(pdir)
  except Exception as e:  # orbax raises many kinds; report one clear error
    raise CheckpointError(
      f"cannot read the params of checkpoint {d!r}: {type(e).__name__}: {e}; re-save the checkpoint"
    ) from None
  template = param_shapes(model)
  try:
    check_against_template(params, template)
  except ParamTreeError as e:
    raise CheckpointError(
      f"params of checkpoint {d!r} do not match its config.json "
      f"(preset {model.config.preset!r}): {e}"
    ) from None
  got, want = flatten(params), flatten(template)
  # bfloat16 is a storage option (convert_torch_weights.py --dtype bfloat16): widen exactly.
  storage_ok = lambda g, w: g == w or (g.name == "bfloat16" and w == np.float32)
  bad = sorted(
    ("/".join(p), np.dtype(v.dtype), np.dtype(want[p].dtype))
    for p, v in got.items()
    if not storage_ok(np.dtype(v.dtype), np.dtype(want[p].dtype))
  )
  if bad:
    raise CheckpointError(
      f"params of checkpoint {d!r} have wrong dtypes: "
      + ", ".join(f"{p} is {g} want {w}" for p, g, w in bad[:20])
    )
  return jax.tree.map(lambda a, t: jax.numpy.asarray(a, t.dtype), params, template)


def load_model(directory):
  """(config, params) from a checkpoint directory written by `save_model` or the converter.

  `sam2pp_jax.model.sam2pp.build_model(config)` gives the module to apply the params with.
  """
  config = load_config(directory)
  try:
    model = build_model(config)
  except ValueError as e:
    raise CheckpointError(f"{os.fspath(directory)}: cannot build the model: {e}") from None
  return config, load_params(directory, model)
