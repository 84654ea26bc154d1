"""Checkpoint layout: bit-exact save/load round trip and clear errors."""

import json
import os

import jax
import numpy as np
import pytest

import sam2pp_jax
from sam2pp_jax.checkpoint import CheckpointError, load_model, save_model
from sam2pp_jax.model.presets import get_model_config
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model


@pytest.fixture(scope="module")
def tiny_params():
  return random_params(build_model("tiny"), 0)


def test_round_trip_bit_exact(tmp_path, tiny_params):
  d = save_model(tmp_path / "ckpt", tiny_params, get_model_config("tiny"))
  assert sorted(os.listdir(d)) == ["config.json", "params"]
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
  cfg = json.load(open(os.path.join(d, "config.json")))
  assert cfg["preset"] == "tiny" and cfg["image_size"] == 64
  config, params = sam2pp_jax.load_model(d)
  assert build_model(config) == build_model("tiny")
  a, b = jax.tree.leaves_with_path(tiny_params), jax.tree.leaves_with_path(params)
  assert [p for p, _ in a] == [p for p, _ in b]
  for (p, x), (_, y) in zip(a, b):
    assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), p
  with pytest.raises(CheckpointError, match="already exists"):
    save_model(d, tiny_params, "tiny")
  save_model(d, tiny_params, "tiny", overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_non_default_config_round_trips(tmp_path, tiny_params):
  c = get_model_config("tiny")
  c.sigmoid_scale_for_mem_enc = 10.0
  d = save_model(tmp_path / "c", tiny_params, c)
  config, _ = load_model(d)
  assert config.sigmoid_scale_for_mem_enc == 10.0
  assert isinstance(config.trunk.stages, tuple)


def _write_cfg(d, **kw):
  cfg = json.load(open(d / "config.json"))
  cfg.update(kw)
  (d / "config.json").write_text(json.dumps(cfg))


def test_errors(tmp_path, tiny_params):
  with pytest.raises(CheckpointError, match="does not exist"):
    load_model(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no config.json"):
    load_model(tmp_path / "empty")
  d = tmp_path / "ck"
  save_model(d, tiny_params, "tiny")
  _write_cfg(d, preset="huge")
  with pytest.raises(CheckpointError, match="unknown preset 'huge'"):
    load_model(d)
  _write_cfg(d, preset="tiny", bogus=1)
  with pytest.raises(CheckpointError, match="unknown config field 'bogus'"):
    load_model(d)
  cfg = json.load(open(d / "config.json"))
  del cfg["bogus"]
  cfg["image_size"] = 65
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="multiple of 16"):
    load_model(d)
  (d / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="not valid JSON"):
    load_model(d)
  # params that do not match the config's template: the offending keys are named
  cfg["image_size"] = 64
  cfg["mem_dim"] = 32
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="do not match its config.json.*shape mismatches"):
    load_model(d)
  bad = dict(tiny_params)
  bad.pop("maskmem_tpos_enc")
  d2 = save_model(tmp_path / "missing", bad, "tiny")
  with pytest.raises(CheckpointError, match="maskmem_tpos_enc"):
    load_model(d2)
