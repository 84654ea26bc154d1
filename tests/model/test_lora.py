"""LoRA factors for the memory attention: init, merge, equivalence to a low-rank branch, grads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model import lora
from sam2pp_jax.model.memory_attention import MemoryAttention
from sam2pp_jax.model.position_encoding import apply_rope, axial_rope_tables

RANK, ALPHA = 4, 2.0
SCALE = ALPHA / RANK
H, W, FRAMES, N_PTR, MEM_DIM, D, HEADS = 2, 3, 2, 4, 8, 16, 2
CFG = dict(d_model=D, num_layers=2, dim_feedforward=24, num_heads=HEADS, dropout=0.0)


def _rand(rng, shape, scale=1.0):
  return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def _fill(tpl, rng):
  """Numpy-filled params/factors of a template (non-trivial norms and biases)."""

  def f(path, s):
    name = path[-1].key
    if name in ("kernel", "lora_a", "lora_b"):
      return _rand(rng, s.shape, 1.0 / np.sqrt(s.shape[-2]))
    return (1.0 if name == "scale" else 0.0) + _rand(rng, s.shape, 0.1)

  return jax.tree_util.tree_map_with_path(f, tpl)


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  hw, m = H * W, FRAMES * H * W + N_PTR
  x = [
    _rand(rng, (2, hw, D)),
    _rand(rng, (2, hw, D)),
    _rand(rng, (2, m, MEM_DIM)),
    _rand(rng, (2, m, MEM_DIM)),
  ]
  model = MemoryAttention(**CFG)
  tpl = jax.eval_shape(lambda k: model.init(k, *x, N_PTR, feat_hw=(H, W)), jax.random.key(0))
  base = _fill(tpl["params"], rng)
  factors = lora.init_lora(jax.random.key(1), base, RANK)
  factors_nz = _fill(jax.eval_shape(lambda: factors), rng)  # nonzero B too
  return model, base, factors, factors_nz, x


def test_init_structure(setup):
  _, base, factors, _, _ = setup
  assert sorted(factors) == ["layers_0", "layers_1"]
  for layer in factors.values():
    assert sorted(layer) == ["cross_attn_image", "linear1", "linear2", "self_attn"]
    for att in ("self_attn", "cross_attn_image"):
      assert sorted(layer[att]) == ["k_proj", "out_proj", "q_proj", "v_proj"]
  f = factors["layers_1"]["cross_attn_image"]["k_proj"]
  assert f["lora_a"].shape == (MEM_DIM, RANK) and f["lora_b"].shape == (RANK, D)
  assert factors["layers_0"]["linear1"]["lora_a"].shape == (D, RANK)
  assert not np.any(np.asarray(f["lora_b"]))
  a = np.asarray(factors["layers_0"]["linear2"]["lora_a"])  # fan_in = 24
  assert np.abs(a).max() <= 1 / np.sqrt(24) and np.abs(a).std() > 0.05
  # Zero B: merging gives exactly the base params.
  merged = lora.merge(base, factors, ALPHA, RANK)
  jax.tree_util.tree_map(np.testing.assert_array_equal, merged, base)


def test_merge_dense():
  rng = np.random.default_rng(1)
  x = _rand(rng, (5, 7))
  dense = nn.Dense(3)
  base = {"q_proj": {"kernel": _rand(rng, (7, 3)), "bias": _rand(rng, (3,))}}
  a, b = _rand(rng, (7, RANK)), _rand(rng, (RANK, 3))
  merged = lora.merge(base, {"q_proj": {"lora_a": a, "lora_b": b}}, ALPHA, RANK)
  np.testing.assert_array_equal(merged["q_proj"]["bias"], base["q_proj"]["bias"])
  got = dense.apply({"params": merged["q_proj"]}, x)
  want = dense.apply({"params": base["q_proj"]}, x) + SCALE * (x @ a) @ b
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _manual_forward(base, fac, curr, curr_pos, mem, mem_pos):
  """Memory attention written out by hand, every targeted Dense with its low-rank branch."""

  def dense(p, f, x):
    return x @ p["kernel"] + p["bias"] + SCALE * (x @ f["lora_a"]) @ f["lora_b"]

  def ln(p, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]

  hd = D // HEADS
  cos, sin = axial_rope_tables(hd, W, H)
  n_sp = mem.shape[1] - N_PTR
  cos_k = np.concatenate([np.tile(cos, (n_sp // (H * W), 1)), np.ones((N_PTR, hd // 2))])
  sin_k = np.concatenate([np.tile(sin, (n_sp // (H * W), 1)), np.zeros((N_PTR, hd // 2))])

  def attn(p, f, q, k, v, ck, sk):
    split = lambda t: t.reshape(t.shape[0], t.shape[1], HEADS, hd).transpose(0, 2, 1, 3)
    q = apply_rope(split(dense(p["q_proj"], f["q_proj"], q)), cos, sin)
    k = apply_rope(split(dense(p["k_proj"], f["k_proj"], k)), ck, sk)
    v = split(dense(p["v_proj"], f["v_proj"], v))
    o = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), -1) @ v
    o = o.transpose(0, 2, 1, 3).reshape(q.shape[0], -1, D)
    return dense(p["out_proj"], f["out_proj"], o)

  x = curr + 0.1 * curr_pos
  for i in range(CFG["num_layers"]):
    p, f = base[f"layers_{i}"], fac[f"layers_{i}"]
    y = ln(p["norm1"], x)
    x = x + attn(p["self_attn"], f["self_attn"], y, y, y, cos, sin)
    y = ln(p["norm2"], x)
    x = x + attn(p["cross_attn_image"], f["cross_attn_image"], y, mem + mem_pos, mem, cos_k, sin_k)
    y = ln(p["norm3"], x)
    h = jax.nn.relu(dense(p["linear1"], f["linear1"], y))
    x = x + dense(p["linear2"], f["linear2"], h)
  return ln(base["norm"], x)


def test_merged_apply_equals_low_rank_forward(setup):
  model, base, _, fac, x = setup
  apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a, N_PTR, feat_hw=(H, W)))
  got = apply(lora.merge(base, fac, ALPHA, RANK), *x)
  want = jax.jit(_manual_forward)(base, fac, *x)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
  plain = apply(base, *x)
  assert float(jnp.max(jnp.abs(plain - want))) > 1e-2  # the factors do matter


def test_grads_reach_factors_not_frozen_base(setup):
  model, base, factors, fac, x = setup

  def loss(base_p, f):
    p = lora.merge(jax.lax.stop_gradient(base_p), f, ALPHA, RANK)
    return jnp.sum(model.apply({"params": p}, *x, N_PTR, feat_hw=(H, W)) ** 2)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))  # one compile serves both factor sets
  g_base, g_fac = grad(base, fac)
  for leaf in jax.tree_util.tree_leaves(g_fac):  # both A and B, B nonzero
    assert float(jnp.max(jnp.abs(leaf))) > 0
  assert all(not np.any(np.asarray(l)) for l in jax.tree_util.tree_leaves(g_base))
  # At init (B = 0) only B receives gradient.
  _, g0 = grad(base, factors)
  assert not np.any(np.asarray(g0["layers_0"]["self_attn"]["q_proj"]["lora_a"]))
  assert np.any(np.asarray(g0["layers_0"]["self_attn"]["q_proj"]["lora_b"]))


def test_merge_rejects_mismatch(setup):
  _, base, factors, _, _ = setup
  with pytest.raises(KeyError):
    lora.merge(base, {"layers_9": factors["layers_0"]}, ALPHA, RANK)
