"""model/attention.py: the blocked (online-softmax) path equals the plain einsum path, with key
masks, padding of non-multiple sizes, bf16 inputs, gradients and dropout; the size rule sends
the large shapes (b+ global blocks, memory attention at 1024 px) to the blocked path."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model import attention as A
from sam2pp_jax.model.hiera import MultiScaleAttention
from sam2pp_jax.model.memory_attention import RoPEAttention

B, H, NQ, NK, D = 2, 3, 100, 300, 16  # neither a multiple of the small chunk/block sizes below


@pytest.fixture
def small_blocks(monkeypatch):
  """Chunks of 32 queries x blocks of 64 keys: several of each, with padding on both axes."""
  monkeypatch.setattr(A, "Q_CHUNK", 32)
  monkeypatch.setattr(A, "K_BLOCK", 64)


def _qkv(dtype=jnp.float32, seed=0, nq=NQ, nk=NK):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = 2.0 * jax.random.normal(ks[0], (B, H, nq, D))
  k = jax.random.normal(ks[1], (B, H, nk, D))
  v = jax.random.normal(ks[2], (B, H, nk, D))
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _mask():
  """Batch 0: random keys masked, the whole first two key blocks among them; batch 1: all."""
  m = np.array(jax.random.bernoulli(jax.random.key(7), 0.6, (NK,)))
  m[:150] = False
  return jnp.asarray(np.stack([m, np.zeros(NK, bool)]))


def _both(q, k, v, **kw):
  scale = 1.0 / math.sqrt(q.shape[-1])
  plain = A.attention(q, k, v, scale=scale, path="plain", **kw)
  blocked = A.attention(q, k, v, scale=scale, path="blocked", **kw)
  return plain, blocked


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("masked", [False, True])
def test_blocked_equals_plain_f32(small_blocks, masked):
  mask = _mask() if masked else None
  plain, blocked = _both(*_qkv(), key_mask=mask)
  assert blocked.shape == plain.shape == (B, H, NQ, D) and blocked.dtype == jnp.float32
  assert _rel(blocked, plain) < 2e-6  # measured 5e-7
  if masked:  # every key of batch 1 masked: zero output on both paths, as memory attention did
    assert not np.any(np.asarray(plain[1])) and not np.any(np.asarray(blocked[1]))


def _softmax_attention_f64(q, k, v, scale, mask=None):
  """The textbook formula in float64 numpy (an independent reference for both paths)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
  if mask is not None:
    s = np.where(np.asarray(mask)[:, None, None, :], s, -np.inf)
  with np.errstate(invalid="ignore"):  # an all-masked row: -inf - -inf
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bhkd->bhqd", np.nan_to_num(p), v)


@pytest.mark.parametrize("masked", [False, True])
def test_both_paths_equal_the_float64_formula(small_blocks, masked):
  q, k, v = _qkv(seed=3)
  mask = _mask() if masked else None
  plain, blocked = _both(q, k, v, key_mask=mask)
  ref = _softmax_attention_f64(q, k, v, 1.0 / math.sqrt(D), mask)
  if masked:  # batch 1 has no valid key: the formula gives nan, both paths give zeros
    ref[1] = 0.0
  assert _rel(plain, ref) < 2e-6 and _rel(blocked, ref) < 2e-6  # measured 4e-7 / 4e-7


def test_masked_keys_do_not_contribute(small_blocks):
  """Changing the values and keys behind masked keys changes nothing."""
  q, k, v = _qkv()
  mask = _mask()
  out = A.attention(q, k, v, scale=0.25, key_mask=mask, path="blocked")
  junk = ~mask[:, None, :, None]
  out2 = A.attention(
    q, jnp.where(junk, 1e3, k), jnp.where(junk, -1e3, v), scale=0.25, key_mask=mask,
    path="blocked",
  )  # fmt: skip
  np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))


def test_broadcast_key_mask(small_blocks):
  """A [1, Nk] mask applies to every batch item."""
  q, k, v = _qkv()
  one = _mask()[:1]
  plain, blocked = _both(q, k, v, key_mask=one)
  full = A.attention(q, k, v, scale=0.25, key_mask=jnp.tile(one, (B, 1)), path="plain")
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(full))
  assert _rel(blocked, plain) < 2e-6  # measured 5e-7


def test_blocked_equals_plain_bf16(small_blocks):
  """bf16 inputs: bf16 output; scores and softmax are float32 on both paths, only the rounding
  of the weights before p @ v differs (normalised vs unnormalised), a few bf16 ulps."""
  q, k, v = _qkv(jnp.bfloat16)
  plain, blocked = _both(q, k, v, key_mask=_mask())
  assert blocked.dtype == plain.dtype == jnp.bfloat16
  ref = A.attention(*_qkv(), scale=0.25, key_mask=_mask(), path="plain")
  assert _rel(blocked, plain) < 1e-2  # measured 3.5e-3
  assert _rel(blocked, ref) < 2e-2 and _rel(plain, ref) < 2e-2


def test_bqhd_layout(small_blocks):
  """Hiera's [B, N, H, d] layout gives the transposed [B, H, N, d] result on both paths."""
  q, k, v = _qkv()
  ref = A.attention(q, k, v, scale=0.25, path="plain")
  t = lambda x: x.transpose(0, 2, 1, 3)
  for path in A.PATHS:
    out = A.attention(t(q), t(k), t(v), scale=0.25, layout="bqhd", path=path)
    assert _rel(t(out), ref) < 1e-6


def test_gradients_agree(small_blocks):
  q, k, v = _qkv()
  mask = _mask()
  w = jax.random.normal(jax.random.key(3), (B, H, NQ, D))

  def loss(path):
    f = lambda q, k, v: jnp.sum(w * A.attention(q, k, v, scale=0.25, key_mask=mask, path=path))
    return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

  gp, gb = loss("plain"), loss("blocked")
  for a, b in zip(gb, gp):
    assert np.all(np.isfinite(np.asarray(a)))
    assert _rel(a, b) < 1e-5
  for g in gb:  # the fully masked batch item gets no gradient
    assert not np.any(np.asarray(g[1]))


def test_bf16_gradients_agree(small_blocks):
  q, k, v = _qkv(jnp.bfloat16)
  mask = _mask()

  def grads(path):
    f = lambda q, k, v: jnp.sum(
      A.attention(q, k, v, scale=0.25, key_mask=mask, path=path).astype(jnp.float32) ** 2
    )
    return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

  for a, b in zip(grads("blocked"), grads("plain")):
    assert a.dtype == jnp.bfloat16
    assert _rel(a, b) < 5e-2


@pytest.mark.parametrize("path", A.PATHS)
def test_dropout_keeps_the_expected_output(small_blocks, path):
  """With v = 1 every row sums its weights: dropout keeps the mean at 1 (kept weights are scaled
  by 1/(1-rate), the normaliser is not dropped); the same key gives the same output."""
  q, k, _ = _qkv(nk=256)
  v = jnp.ones((B, H, 256, D))
  kw = dict(scale=0.05, dropout_rate=0.5, dropout_rng=jax.random.key(1), path=path)
  out = np.asarray(A.attention(q, k, v, **kw))
  assert abs(out.mean() - 1.0) < 0.02 and out.std() > 0.01
  np.testing.assert_array_equal(out, np.asarray(A.attention(q, k, v, **kw)))
  no_rng = A.attention(q, k, v, scale=0.05, dropout_rate=0.5, path=path)
  np.testing.assert_allclose(np.asarray(no_rng), 1.0, rtol=1e-6)


def _runs_blocked(q, k, v, **kw) -> bool:
  """Whether `attention` traces the blocked path (a scan) for these shapes: tracing only."""
  jaxpr = jax.make_jaxpr(lambda q, k, v: A.attention(q, k, v, scale=0.1, **kw))(q, k, v)
  return "scan" in str(jaxpr)


def test_size_rule_picks_blocked_for_large_shapes():
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  # b+ at 1024 px: global Hiera blocks, 8 heads x 4,096 tokens ([B, N, H, d])
  assert A.attention_path(4096, 4096, 8) == "blocked"
  assert _runs_blocked(s(1, 4096, 8, 56), s(1, 4096, 8, 56), s(1, 4096, 8, 56), layout="bqhd")
  # memory attention at 1024 px: self-attention and 7 memories + 64 pointer tokens, one head
  assert A.attention_path(4096, 4096, 1) == "blocked"
  nk = 7 * 4096 + 64
  mask = jax.ShapeDtypeStruct((1, nk), jnp.bool_)
  jaxpr = jax.make_jaxpr(lambda q, k, v, m: A.attention(q, k, v, scale=0.1, key_mask=m))(
    s(1, 1, 4096, 256), s(1, 1, nk, 256), s(1, 1, nk, 256), mask
  )
  assert "scan" in str(jaxpr)
  # small ones stay plain: Hiera windows, the 256 px parity models, the two-way transformer
  assert A.attention_path(14 * 14, 14 * 14, 8) == "plain"
  assert A.attention_path(256, 7 * 256 + 64, 1) == "plain"
  assert A.attention_path(7, 4096, 8) == "plain" and A.attention_path(4096, 7, 8) == "plain"
  assert not _runs_blocked(s(1, 8, 196, 56), s(1, 8, 196, 56), s(1, 8, 196, 56))


def test_modules_on_the_blocked_path(small_blocks, monkeypatch):
  """Hiera's global attention (bqhd layout, pooled queries) and memory attention (key mask)
  give the same result when the size rule sends them to the blocked path."""
  x = jax.random.normal(jax.random.key(0), (1, 12, 12, 16))
  hiera = MultiScaleAttention(32, 2, q_stride=(2, 2), window_size=0)
  hp = hiera.init(jax.random.key(1), x, (6, 6))
  q = jax.random.normal(jax.random.key(2), (2, 64, 32))
  mem = jax.random.normal(jax.random.key(3), (2, 3 * 64 + 4, 16))
  mask = jnp.asarray(np.arange(196)[None] < np.array([[132], [0]]))
  rope = RoPEAttention(32, 1, dropout=0.0, rope_k_repeat=True)
  rp = rope.init(jax.random.key(4), q, mem, mem, num_k_exclude_rope=4)
  run = lambda: (
    hiera.apply(hp, x, (6, 6)),
    rope.apply(rp, q, mem, mem, num_k_exclude_rope=4, key_mask=mask),
  )
  plain = run()
  monkeypatch.setattr(A, "BLOCKED_MIN_SCORES", 0)
  blocked = run()
  for a, b in zip(blocked, plain):
    assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_path_equals_plain(dtype):
  """path="fused" (jax.nn.dot_product_attention; XLA's kernel here, cuDNN's on a GPU) with the
  key mask, the all-masked batch row zeroed, both layouts."""
  q, k, v = _qkv(dtype)
  scale = 1.0 / math.sqrt(D)
  for layout in ("bhqd", "bqhd"):
    args = (q, k, v) if layout == "bhqd" else tuple(x.transpose(0, 2, 1, 3) for x in (q, k, v))
    fused = A.attention(*args, scale=scale, key_mask=_mask(), layout=layout, path="fused")
    plain = A.attention(*args, scale=scale, key_mask=_mask(), layout=layout, path="plain")
    assert fused.shape == plain.shape and fused.dtype == plain.dtype
    assert _rel(fused, plain) < (2e-6 if dtype == jnp.float32 else 2e-2)
    assert not np.any(np.asarray(fused[1]))
  with pytest.raises(ValueError, match="no attention dropout"):
    A.attention(q, k, v, scale=scale, path="fused", dropout_rate=0.1, dropout_rng=jax.random.key(0))


def test_size_rule_on_accelerators():
  """GPU: cuDNN's fused kernel for bf16/f16 heads of <= 128 channels (multiple of 8) without
  dropout; otherwise plain up to 1 GiB of float32 scores (XLA fuses the softmax there)."""
  rule = functools.partial(A.attention_path, backend="gpu")
  assert rule(4096, 4096, 8, head_dim=56, dtype=jnp.bfloat16) == "fused"  # b+ global blocks
  assert rule(4096, 4096, 8, head_dim=56, dtype=jnp.bfloat16, dropout=True) == "plain"
  assert rule(4096, 4096, 8, head_dim=56, dtype=jnp.float32) == "plain"
  assert rule(4096, 16448, 1, head_dim=256, dtype=jnp.bfloat16) == "plain"  # memory attention
  assert rule(4096, 4096 * 20, 8, head_dim=256, dtype=jnp.bfloat16) == "blocked"
  assert A.attention_path(4096, 4096, 8, head_dim=56, dtype=jnp.bfloat16, backend="tpu") == (
    "plain"
  )
  assert A.attention_path(4096, 4096, 8, head_dim=56, dtype=jnp.bfloat16, backend="cpu") == (
    "blocked"
  )
