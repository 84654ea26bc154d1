"""Reference key names <-> Flax params: bit-exact round trips and clear errors."""

import numpy as np
import pytest
from conftest import bplus_manifest, get_fixture

from sam2pp_jax.convert import key_map
from sam2pp_jax.model.sam2pp import build_model, param_shapes


def test_round_trip_fixture_weights_bit_exact():
  fx = get_fixture("mask")
  sd = fx.state_dict()
  tree = key_map.torch_to_flax(sd, template=param_shapes(build_model("parity_small")))
  back = key_map.flax_to_torch(tree, fx.manifest)
  assert list(back) == list(sd)  # same keys, same order
  for k in sd:
    assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


def test_round_trip_bplus_manifest_and_template():
  man = bplus_manifest()
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in man.items()}
  tree = key_map.torch_to_flax(sd, template=param_shapes(build_model("b+")))
  back = key_map.flax_to_torch(tree, man)
  assert list(back) == list(man)
  assert all(np.array_equal(back[k], sd[k]) for k in sd)
  # per-task copies are distinct subtrees
  assert {
    "memory_attention_mask",
    "memory_attention_box",
    "memory_attention_point",
    "memory_encoder_mask",
    "memory_encoder_box",
    "memory_encoder_point",
  } <= set(tree)


def test_layout_transforms_are_explicit():
  sd = {
    "a.fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a.conv.weight": np.arange(24, dtype=np.float32).reshape(4, 3, 1, 2),
    "sam_unified_decoder.output_upscaling_box.0.weight": np.arange(16, dtype=np.float32).reshape(
      2, 4, 2, 1
    ),
  }
  t = key_map.torch_to_flax(sd)
  np.testing.assert_array_equal(t["a"]["fc"]["kernel"], sd["a.fc.weight"].T)
  np.testing.assert_array_equal(t["a"]["conv"]["kernel"], sd["a.conv.weight"].transpose(2, 3, 1, 0))
  k = t["sam_unified_decoder"]["output_upscaling_box_0"]["kernel"]
  assert k.shape == (2, 1, 2, 4)  # [kh, kw, in, out]


def test_errors_name_the_offending_keys():
  fx = get_fixture("box")
  sd = dict(fx.state_dict())
  template = param_shapes(build_model("parity_small"))
  missing = dict(sd)
  missing.pop("obj_ptr_tpos_proj.bias")
  with pytest.raises(key_map.KeyMapError, match="obj_ptr_tpos_proj/bias"):
    key_map.torch_to_flax(missing, template=template)
  extra = dict(sd, **{"sam_unified_decoder.bogus.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(key_map.KeyMapError, match="sam_unified_decoder.bogus.weight"):
    key_map.torch_to_flax(extra, template=template)
  bad = dict(sd, **{"no_obj_ptr": np.zeros((1, 128), np.float32)})
  with pytest.raises(key_map.KeyMapError, match="no_obj_ptr"):
    key_map.torch_to_flax(bad, template=template)
  with pytest.raises(key_map.KeyMapError, match="no key-map rule"):
    key_map.torch_to_flax({"weird.thing": np.zeros((2, 2, 2), np.float32)})
