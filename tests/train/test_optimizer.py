"""Training optimizer: the reference recipe's lr groups, layer decay, weight-decay exclusions,
schedule, clipping and freezing, each checked against values computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam2pp_jax.model.presets import get_model_config
from sam2pp_jax.train.optimizer import default_optimizer_config, make_optimizer, tree_paths

LORA_ONLY = (r"(^|/)lora_[ab]$",)


def _config(**overrides):
  c = default_optimizer_config()
  c.total_steps = 100
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _nest(flat):
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}} with float32 arrays."""
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value, jnp.float32)
  return tree


def _flat(tree):
  return dict(zip(tree_paths(tree), jax.tree.leaves(tree)))


def _step(tx, params, grads, state=None):
  """One update; returns (new params, raw updates, new state)."""
  state = tx.init(params) if state is None else state
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), updates, state


@pytest.fixture(scope="module")
def tiny_shapes():
  from sam2pp_jax.model.sam2pp import build_model, param_shapes

  return param_shapes(build_model("tiny"))


def test_layer_decay_of_tiny_trunk_matches_reference_formula(tiny_shapes):
  _, info = make_optimizer(_config(), tiny_shapes)
  assert info.num_trunk_blocks == sum(get_model_config("tiny").trunk.stages) == 5
  # layer_decay_param_modifier: num_layers = len(blocks) + 1 = 6, scale = 0.9 ** (6 - layer_id),
  # layer_id = i + 1 for block i, 0 for patch_embed; '*pos_embed*' overridden to 1.0.
  want = {f"blocks_{i}": 0.9 ** (6 - (i + 1)) for i in range(5)}
  assert want["blocks_0"] == pytest.approx(0.59049) and want["blocks_4"] == pytest.approx(0.9)
  for path, mult in info.lr_mult.items():
    if path.startswith("image_encoder/trunk/blocks_"):
      assert mult == pytest.approx(want[path.split("/")[2]]), path
  assert info.lr_mult["image_encoder/trunk/patch_embed/proj/kernel"] == pytest.approx(0.9**6)
  assert info.lr_mult["image_encoder/trunk/pos_embed"] == 1.0
  assert info.lr_mult["image_encoder/trunk/pos_embed_window"] == 1.0
  assert info.lr_mult["image_encoder/neck/convs_0/conv/kernel"] == 1.0
  assert info.lr_mult["memory_attention_mask/layers_0/linear1/kernel"] == 1.0
  # Two lr groups: image encoder at vision_lr, the rest at base_lr.
  assert info.base_lr["image_encoder/neck/convs_0/conv/kernel"] == 5e-6
  assert info.base_lr["sam_unified_decoder/iou_token/embedding"] == 5e-5
  assert info.peak_lr("image_encoder/trunk/blocks_2/attn/qkv/kernel") == pytest.approx(
    5e-6 * 0.9**3
  )


def test_buffers_and_frozen_bn_of_the_real_tree_are_frozen(tiny_shapes):
  _, info = make_optimizer(_config(), tiny_shapes)
  frozen = {p for p, f in info.frozen.items() if f}
  box_head = [p for p in info.frozen if "/box_head/" in p]
  n_bn = sum(p.endswith("/running_mean") for p in box_head)
  assert n_bn > 0
  # FrozenBatchNorm2d = {scale, bias, running_mean, running_var}; its conv keeps training.
  assert {p for p in box_head if p in frozen} == {
    p for p in box_head if p.rsplit("/", 1)[0] + "/running_mean" in info.frozen
  }
  assert sum(p in frozen for p in box_head) == 4 * n_bn
  assert not any(p.endswith("/kernel") for p in frozen)
  assert frozen - set(box_head) == {
    "sam_prompt_encoder/pe_layer/positional_encoding_gaussian_matrix"
  }


def test_frozen_params_do_not_change_and_hold_no_state():
  names = (
    "sam_unified_decoder/box_head/conv1_tl_0/kernel",
    "sam_unified_decoder/box_head/conv1_tl_0/bias",
    "sam_unified_decoder/box_head/conv1_tl_1/scale",
    "sam_unified_decoder/box_head/conv1_tl_1/bias",
    "sam_unified_decoder/box_head/conv1_tl_1/running_mean",
    "sam_unified_decoder/box_head/conv1_tl_1/running_var",
    "sam_prompt_encoder/pe_layer/positional_encoding_gaussian_matrix",
    "sam_prompt_encoder/no_mask_embed/embedding",
    "sam_unified_decoder/transformer/layers_0/norm1/scale",
    "sam_unified_decoder/transformer/layers_0/mlp/layers_0/kernel",
    "image_encoder/trunk/blocks_0/attn/qkv/kernel",
  )
  params = _nest({n: [1.0] for n in names})
  grads = _nest({n: [0.5] for n in names})
  cfg = _config(frozen=(r"^sam_unified_decoder/transformer/",))
  tx, info = make_optimizer(cfg, params)
  new, _, state = _step(tx, params, grads)
  before, after = _flat(params), _flat(new)
  changed = {p for p in names if not np.array_equal(before[p], after[p])}
  assert changed == {
    "sam_unified_decoder/box_head/conv1_tl_0/kernel",
    "sam_unified_decoder/box_head/conv1_tl_0/bias",
    "sam_prompt_encoder/no_mask_embed/embedding",
    "image_encoder/trunk/blocks_0/attn/qkv/kernel",  # no LoRA in the tree: base trains
  }
  assert {p for p, f in info.frozen.items() if not f} == changed
  mu = optax.tree_utils.tree_get(state, "mu")
  assert sum(1 for x in jax.tree.leaves(mu) if hasattr(x, "shape")) == len(changed)


def test_weight_decay_exclusions_by_hand():
  p0, g = 2.0, 0.01
  names = {
    "sam_unified_decoder/transformer/layers_0/norm1/scale": 0.0,  # torch.nn.LayerNorm
    "sam_unified_decoder/transformer/layers_0/norm1/bias": 0.0,  # '*bias*'
    "sam_unified_decoder/transformer/norm_final_attn/scale": 0.0,
    "memory_attention_mask/norm/scale": 0.0,  # MemoryAttention's final nn.LayerNorm
    "sam_unified_decoder/transformer/layers_0/mlp/layers_0/kernel": 0.1,
    "memory_encoder_mask/fuser/layers_0/norm/scale": 0.1,  # LayerNorm2d: not excluded
    "sam_prompt_encoder/no_mask_embed/embedding": 0.1,  # embeddings keep the decay
  }
  params = _nest({n: [p0] for n in names})
  grads = _nest({n: [g] for n in names})
  tx, info = make_optimizer(_config(grad_clip_norm=None), params)
  _, updates, _ = _step(tx, params, grads)
  lr, eps = 5e-5, 1e-8  # step 0: the cosine starts at base_lr (no warm-up in the yaml)
  for name, u in _flat(updates).items():
    assert info.weight_decay[name] == names[name], name
    want = -lr * (g / (g + eps) + names[name] * p0)  # AdamW step 1: m_hat / sqrt(v_hat) = 1
    np.testing.assert_allclose(np.asarray(u), [want], rtol=1e-5, err_msg=name)


def test_warmup_and_cosine_values():
  sched = make_optimizer(_config(warmup_steps=10, total_steps=110), {"w": jnp.zeros(1)})[1].schedule
  cosine = lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 100))  # noqa: E731
  for step, want in [
    (0, 0.0),
    (5, 0.5),
    (10, 1.0),
    (35, cosine(25)),
    (60, 0.55),
    (110, 0.1),
    (500, 0.1),
  ]:
    assert float(sched(step)) == pytest.approx(want, abs=1e-6), step
  # The yaml's own schedule: fvcore cosine from base_lr to base_lr / 10 over `where` in [0, 1].
  _, info = make_optimizer(_config(total_steps=200), {"x/bias": jnp.zeros(1)})
  assert info.lr("x/bias", 0) == pytest.approx(5e-5)
  assert info.lr("x/bias", 100) == pytest.approx(5e-5 * 0.55)
  assert info.lr("x/bias", 200) == pytest.approx(5e-6)


def test_updates_follow_the_schedule():
  params = {"x": {"bias": jnp.zeros(1)}}
  grads = {"x": {"bias": jnp.full(1, 0.01)}}  # constant grad: Adam's m_hat / sqrt(v_hat) = 1
  tx, info = make_optimizer(_config(warmup_steps=4, total_steps=14), params)
  state, update = tx.init(params), jax.jit(tx.update)
  for step in range(8):
    updates, state = update(grads, state, params)
    want = -5e-5 * float(info.schedule(step)) * 0.01 / (0.01 + 1e-8)
    np.testing.assert_allclose(
      np.asarray(updates["x"]["bias"]), [want], rtol=1e-4, atol=1e-12, err_msg=str(step)
    )


def test_grad_clipping_at_0p1_over_trainable_leaves():
  params = _nest({"a/bias": [0.0], "b/bias": [0.0], "c/bias": [0.0]})
  lr = 5e-5

  def update(grad_a, grad_b, **cfg):
    grads = _nest({"a/bias": [grad_a], "b/bias": [grad_b], "c/bias": [1e6]})
    # eps = 1 keeps the size of the (clipped) grad visible through Adam's first step:
    # update = -lr * g / (|g| + 1).
    tx, _ = make_optimizer(_config(eps=1.0, frozen=(r"^c/",), **cfg), params)
    u = _flat(_step(tx, params, grads)[1])
    assert u["c/bias"] == 0.0
    return float(u["a/bias"][0]), float(u["b/bias"][0])

  # Norm 5 -> scaled by 0.1 / 5 to (0.06, 0.08); the frozen leaf's huge grad is not counted.
  np.testing.assert_allclose(update(3.0, 4.0), [-lr * 0.06 / 1.06, -lr * 0.08 / 1.08], rtol=1e-5)
  np.testing.assert_allclose(
    update(3.0, 4.0, grad_clip_norm=None), [-lr * 3 / 4, -lr * 4 / 5], rtol=1e-5
  )
  # Norm 0.05 is under the threshold: untouched.
  np.testing.assert_allclose(update(0.03, 0.04), [-lr * 0.03 / 1.03, -lr * 0.04 / 1.04], rtol=1e-5)


def test_apply_if_finite_skips_nan_step():
  params = _nest({"a/kernel": [1.0, 2.0], "b/kernel": [3.0], "c/kernel": [4.0]})
  tx, _ = make_optimizer(_config(frozen=(r"^c/",)), params)
  ok = _nest({"a/kernel": [0.01, 0.02], "b/kernel": [0.03], "c/kernel": [0.0]})
  bad = _nest({"a/kernel": [0.01, np.nan], "b/kernel": [0.03], "c/kernel": [0.0]})
  p1, _, s1 = _step(tx, params, ok)
  assert not np.array_equal(p1["a"]["kernel"], params["a"]["kernel"])
  p2, u2, s2 = _step(tx, p1, bad, s1)
  for x, y in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)):
    np.testing.assert_array_equal(x, y)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(u2))
  mu1, mu2 = (optax.tree_utils.tree_get(s, "mu") for s in (s1, s2))
  for x, y in zip(jax.tree.leaves(mu1), jax.tree.leaves(mu2)):
    np.testing.assert_array_equal(x, y)
  # A NaN in a frozen leaf's grad is ignored: trainable leaves still update.
  frozen_nan = _nest({"a/kernel": [0.01, 0.02], "b/kernel": [0.03], "c/kernel": [np.nan]})
  p3, _, _ = _step(tx, p2, frozen_nan, s2)
  assert np.all(np.isfinite(np.asarray(p3["a"]["kernel"])))
  assert not np.array_equal(p3["b"]["kernel"], p2["b"]["kernel"])
  np.testing.assert_array_equal(p3["c"]["kernel"], p2["c"]["kernel"])


def _lora_tree():
  base = _nest(
    {
      "memory_attention_mask/layers_0/self_attn/q_proj/kernel": [[1.0]],
      "memory_attention_mask/layers_0/norm1/scale": [1.0],
      "memory_attention_box/layers_0/self_attn/q_proj/kernel": [[1.0]],
      "image_encoder/trunk/blocks_0/attn/qkv/kernel": [[1.0]],
      "image_encoder/trunk/blocks_1/attn/qkv/kernel": [[1.0]],
      "sam_unified_decoder/iou_token/embedding": [[1.0]],
    }
  )
  lora = _nest(
    {
      "memory_attention_mask/layers_0/self_attn/q_proj/lora_a": [[1.0]],
      "memory_attention_mask/layers_0/self_attn/q_proj/lora_b": [[1.0]],
      "image_encoder/trunk/blocks_0/attn/qkv/lora_a": [[1.0]],
      "image_encoder/trunk/blocks_0/attn/qkv/lora_b": [[1.0]],
    }
  )
  return {"params": base, "lora": lora}


def _changed(tx, params):
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01), params)
  before, after = _flat(params), _flat(_step(tx, params, grads)[0])
  return {p for p in before if not np.array_equal(before[p], after[p])}


def test_trainable_only_trains_lora_factors_alone():
  params = _lora_tree()
  tx, info = make_optimizer(_config(trainable_only=LORA_ONLY), params)
  lora = {p for p in info.frozen if p.startswith("lora/")}
  assert len(lora) == 4
  assert {p for p, f in info.frozen.items() if not f} == lora
  assert _changed(tx, params) == lora
  with pytest.raises(ValueError, match="matches no param"):
    make_optimizer(_config(trainable_only=(r"lora_c$",)), params)


def test_lora_freezes_base_of_wrapped_modules_like_peft():
  params = _lora_tree()
  tx, info = make_optimizer(_config(), params)
  frozen = {p for p, f in info.frozen.items() if f}
  assert frozen == {
    "params/memory_attention_mask/layers_0/self_attn/q_proj/kernel",
    "params/memory_attention_mask/layers_0/norm1/scale",
    "params/image_encoder/trunk/blocks_0/attn/qkv/kernel",
    "params/image_encoder/trunk/blocks_1/attn/qkv/kernel",
  }  # memory_attention_box has no factors here, so peft never wrapped it
  assert _changed(tx, params) == set(info.frozen) - frozen
  # Image-encoder factors: vision lr, and no layer decay (the reference's modifier misses the
  # peft-renamed trunk) unless asked for.
  a = "lora/image_encoder/trunk/blocks_0/attn/qkv/lora_a"
  assert info.base_lr[a] == 5e-6 and info.lr_mult[a] == 1.0
  assert info.weight_decay[a] == 0.1
  _, info = make_optimizer(_config(layer_decay_on_lora=True), params)
  assert info.lr_mult[a] == pytest.approx(0.9**2)  # 2 blocks in the tree: 0.9 ** (3 - 1)


def test_lr_mults_scale_updates():
  params = _nest({"sam_unified_decoder/x/bias": [0.0], "memory_encoder_mask/y/bias": [0.0]})
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01), params)
  cfg = _config(lr_mults=((r"^sam_unified_decoder/", 0.5), (r"decoder", 3.0)))
  tx, info = make_optimizer(cfg, params)
  assert info.lr_mult["sam_unified_decoder/x/bias"] == 0.5  # first match wins
  u = _flat(_step(tx, params, grads)[1])
  np.testing.assert_allclose(
    u["sam_unified_decoder/x/bias"], 0.5 * u["memory_encoder_mask/y/bias"], rtol=1e-6
  )
  assert float(u["memory_encoder_mask/y/bias"][0]) == pytest.approx(-5e-5, rel=1e-5)
