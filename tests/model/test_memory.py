"""Memory encoder and memory attention: reference parity, param layout, masking semantics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, get_fixture

from sam2pp_jax.convert import key_map
from sam2pp_jax.model.memory_attention import MemoryAttention
from sam2pp_jax.model.memory_encoder import MemoryEncoder
from sam2pp_jax.model.position_encoding import sine_position_encoding
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.parity.fixture import parity_dir


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _mem_attn_inputs(fx):
  curr = jnp.asarray(fx["frame1/image_encoder/backbone_fpn_2"]).transpose(0, 2, 3, 1)
  b, h, w, c = curr.shape
  curr = curr.reshape(b, h * w, c)
  curr_pos = jnp.asarray(sine_position_encoding(h, w, c)).reshape(1, h * w, c)
  mem = jnp.asarray(fx["frame1/memory_attention/in_memory"]).transpose(1, 0, 2)
  mem_pos = jnp.asarray(fx["frame1/memory_attention/in_memory_pos"]).transpose(1, 0, 2)
  n_ptr = int(fx["frame1/memory_attention/num_obj_ptr_tokens"])
  return curr, curr_pos, mem, mem_pos, n_ptr, (h, w)


@pytest.mark.parametrize("task", TASKS)
def test_memory_encoder_parity(task):
  fx = get_fixture(task)
  params = key_map.torch_to_flax(fx.state_dict())
  model = MemoryEncoder()
  s = fx.image_size
  for t in (0, 1):
    pix = jnp.asarray(fx[f"frame{t}/image_encoder/backbone_fpn_2"]).transpose(0, 2, 3, 1)
    logits = jnp.asarray(fx["outputs/low_res_mask_logits"][t])[None, :, :, None]
    mask = jax.nn.sigmoid(jax.image.resize(logits, (1, s, s, 1), "linear")) * 20.0 - 10.0
    p = params[f"memory_encoder_{task}"]
    key_map.check_against_template(
      p, jax.eval_shape(model.init, jax.random.key(0), pix, mask)["params"]
    )
    feat, pos = model.apply({"params": p}, pix, mask)
    is_obj = float(fx["outputs/object_score_logits"][t] > 0)
    feat_f32 = feat + (1.0 - is_obj) * params["no_obj_embed_spatial"][0]
    d = f"frame{t}/memory_encoder/"
    assert_close(d + "vision_features", _nchw(feat), fx[d + "vision_features"])
    assert_close(d + "vision_pos_enc", _nchw(pos), fx[d + "vision_pos_enc"])
    assert_close(d + "maskmem_features_f32", _nchw(feat_f32), fx[d + "maskmem_features_f32"])


@pytest.mark.parametrize("task", TASKS)
def test_memory_attention_parity(task):
  fx = get_fixture(task)
  params = key_map.torch_to_flax(fx.state_dict())[f"memory_attention_{task}"]
  curr, curr_pos, mem, mem_pos, n_ptr, hw = _mem_attn_inputs(fx)
  model = MemoryAttention()
  tpl = jax.eval_shape(
    lambda: model.init(jax.random.key(0), curr, curr_pos, mem, mem_pos, n_ptr, feat_hw=hw)
  )["params"]
  key_map.check_against_template(params, tpl)
  out = model.apply({"params": params}, curr, curr_pos, mem, mem_pos, n_ptr, feat_hw=hw)
  out = np.asarray(out).reshape(1, hw[0], hw[1], -1).transpose(0, 3, 1, 2)
  assert_close("frame1/memory_attention/out", out, fx["frame1/memory_attention/out"])


def test_bplus_manifest_layout():
  """Param trees at the released size (S=1024 -> 64x64) match the B+ manifest (shapes only)."""
  d = parity_dir()
  if d is None or not (d / "manifest_bplus.json").exists():
    pytest.skip("manifest_bplus.json not found")
  keys = json.loads((d / "manifest_bplus.json").read_text())["keys"]
  sd = {
    k["key"]: np.zeros(k["shape"], np.float32)
    for k in keys
    if k["key"].startswith(("memory_attention_", "memory_encoder_"))
  }
  tree = key_map.torch_to_flax(sd)
  sds = jax.ShapeDtypeStruct
  hw = 64 * 64
  enc_tpl = jax.eval_shape(
    MemoryEncoder().init,
    jax.random.key(0),
    sds((1, 64, 64, 256), jnp.float32),
    sds((1, 1024, 1024, 1), jnp.float32),
  )["params"]
  attn_tpl = jax.eval_shape(
    lambda c, m: MemoryAttention().init(jax.random.key(0), c, c, m, m, 16, feat_hw=(64, 64)),
    sds((1, hw, 256), jnp.float32),
    sds((1, 2 * hw + 16, 64), jnp.float32),
  )["params"]
  for task in TASKS:
    key_map.check_against_template(tree[f"memory_encoder_{task}"], enc_tpl)
    key_map.check_against_template(tree[f"memory_attention_{task}"], attn_tpl)


# ------------------------------------------------------------------------------------------
# Small-hyperparameter behaviour tests (no fixtures)
# ------------------------------------------------------------------------------------------

TINY = dict(d_model=32, num_layers=2, dim_feedforward=48, num_heads=2, dropout=0.0)


def _shapes(init_fn, *args, **kwargs):
  """The params tree's shapes (no compile). Non-array arguments (static ints, tuples) are closed
  over, not traced."""
  return jax.eval_shape(lambda k: init_fn(k, *args, **kwargs), jax.random.key(0))["params"]


def _tiny_attention_setup(batch=2, h=3, w=4, frames=3, n_ptr=6, mem_dim=8, seed=0):
  rng = np.random.default_rng(seed)
  m = frames * h * w + n_ptr
  curr, curr_pos = (jnp.asarray(rng.normal(size=(batch, h * w, 32)), jnp.float32) for _ in range(2))
  mem, mem_pos = (jnp.asarray(rng.normal(size=(batch, m, mem_dim)), jnp.float32) for _ in range(2))
  model = MemoryAttention(**TINY)
  params = random_params(
    _shapes(model.init, curr, curr_pos, mem, mem_pos, n_ptr, feat_hw=(h, w)), seed
  )
  return model, params, curr, curr_pos, mem, mem_pos


def test_memory_encoder_shapes_tiny():
  model = MemoryEncoder(out_dim=8, in_dim=16, ds_total_stride=4)
  pix = jnp.ones((2, 3, 5, 16))
  mask = jnp.zeros((2, 12, 20, 1))
  p = random_params(_shapes(model.init, pix, mask), 0)
  feat, pos = jax.jit(model.apply)({"params": p}, pix, mask)
  assert feat.shape == pos.shape == (2, 3, 5, 8)
  assert sorted(p["mask_downsampler"]) == [
    "encoder_0",
    "encoder_1",
    "encoder_3",
    "encoder_4",
    "encoder_6",
  ]
  assert p["mask_downsampler"]["encoder_3"]["kernel"].shape == (3, 3, 4, 16)
  assert p["fuser"]["layers_1"]["dwconv"]["kernel"].shape == (7, 7, 1, 16)
  np.testing.assert_allclose(pos[1], sine_position_encoding(3, 5, 8), atol=0)


def test_memory_attention_shapes_and_jit():
  model, params, curr, curr_pos, mem, mem_pos = _tiny_attention_setup()
  fn = jax.jit(model.apply, static_argnames=("num_obj_ptr_tokens", "feat_hw"))
  out = fn({"params": params}, curr, curr_pos, mem, mem_pos, num_obj_ptr_tokens=6, feat_hw=(3, 4))
  assert out.shape == curr.shape
  assert params["layers_1"]["cross_attn_image"]["k_proj"]["kernel"].shape == (8, 32)
  # An all-True mask changes nothing.
  out2 = fn(
    {"params": params},
    curr,
    curr_pos,
    mem,
    mem_pos,
    num_obj_ptr_tokens=6,
    feat_hw=(3, 4),
    memory_mask=jnp.ones(mem.shape[:2], bool),
  )
  np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
  # Spatial keys must be whole frames.
  with pytest.raises(ValueError, match="whole number"):
    model.apply(
      {"params": params}, curr, curr_pos, mem, mem_pos, num_obj_ptr_tokens=5, feat_hw=(3, 4)
    )


def test_memory_mask_equals_removal():
  """Masked frames / pointer tokens == the reference's concatenation without them."""
  hw, frames, n_ptr = 12, 3, 6
  model, params, curr, curr_pos, mem, mem_pos = _tiny_attention_setup(frames=frames, n_ptr=n_ptr)
  apply = jax.jit(model.apply, static_argnums=5, static_argnames="feat_hw")
  # Per batch element: kept spatial frames, kept pointer tokens (same counts, other slots).
  keep = [(np.array([0, 2]), np.array([0, 1, 4])), (np.array([1, 2]), np.array([2, 3, 5]))]
  mask = np.zeros(mem.shape[:2], bool)
  idx = []
  for b, (fr, pt) in enumerate(keep):
    idx.append(np.concatenate([np.arange(f * hw, (f + 1) * hw) for f in fr] + [frames * hw + pt]))
    mask[b, idx[-1]] = True
  # Garbage in the masked slots must not leak into the result.
  garbage = jnp.where(jnp.asarray(mask)[..., None], 0.0, 1e3)
  out = apply(
    {"params": params},
    curr,
    curr_pos,
    mem + garbage,
    mem_pos - garbage,
    n_ptr,
    memory_mask=jnp.asarray(mask),
    feat_hw=(3, 4),
  )
  idx = np.stack(idx)
  take = lambda x: jnp.take_along_axis(x, jnp.asarray(idx)[..., None], axis=1)
  ref = apply({"params": params}, curr, curr_pos, take(mem), take(mem_pos), 3, feat_hw=(3, 4))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=2e-6)
  # Sanity: the masking does change the output.
  full = apply(
    {"params": params},
    curr,
    curr_pos,
    mem,
    mem_pos,
    n_ptr,
    memory_mask=jnp.ones(mask.shape, bool),
    feat_hw=(3, 4),
  )
  assert float(jnp.max(jnp.abs(full - out))) > 1e-3
