"""Memory attention over only the present memories (issue 18): the gathered slots are the
reference's concatenation, in its order; every bucket equals attention over all slots, masked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.tracking.memory_bank import (
  MemoryBank,
  MemorySlots,
  bucket_index,
  present_buckets,
)
from sam2pp_jax.tracking.step import track_step


@pytest.fixture(scope="module")
def tiny():
  model = build_model("tiny")
  return model, random_params(model, 0)


def _apply(model, params, method, *a, **k):
  return model.apply({"params": params}, *a, method=method, **k)


def _bank(model, t, rng, b=2):
  """A bank after a prompt on frame 0 and tracked frames 1..t-1; with the written memories."""
  c = model.config
  h, d, m = int(c.image_size) // 16, int(c.hidden_dim), int(c.mem_dim)
  rnd = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  pos = rnd(1, h, h, m)
  feats = {f: rnd(b, h, h, m) for f in range(t)}
  ptrs = {f: rnd(b, d) for f in range(t)}
  bank = MemoryBank.empty(
    b,
    h * h,
    m,
    d,
    num_maskmem=int(c.num_maskmem),
    max_obj_ptrs=int(c.max_obj_ptrs_in_encoder),
    cond_capacity=2,
  )
  bank = bank.write_cond(0, 0, feats[0], pos, ptrs[0])
  for f in range(1, t):
    bank = bank.write(f, feats[f], pos, ptrs[f])
  return bank, feats, ptrs, pos


def test_buckets_and_their_choice():
  assert present_buckets(7, 16) == ((1, 1), (2, 2), (4, 4), (7, 16))
  assert present_buckets(8, 17) == ((1, 1), (2, 2), (4, 4), (8, 17))
  assert present_buckets(4, 5) == ((1, 1), (2, 2), (4, 5))
  assert present_buckets(1, 4) == ((1, 4),)
  bk = present_buckets(7, 16)
  pick = lambda s, p: int(bucket_index(bk, jnp.int32(s), jnp.int32(p)))
  assert [pick(n, n) for n in range(1, 8)] == [0, 1, 2, 2, 3, 3, 3]
  assert pick(0, 0) == 0  # nothing present: the smallest, all masked
  assert pick(2, 3) == 2  # more pointers than frames: the pointers decide
  assert pick(1, 16) == 3


@pytest.mark.parametrize("t", [1, 2, 3, 5])
def test_present_slots_are_the_reference_concatenation(tiny, t):
  """present(exact counts) holds exactly the memories the reference concatenates, in its order:
  cond frames, ring from the farthest to the nearest, cond pointers, pointers nearest first."""
  model, params = tiny
  c = model.config
  nm, d, m = int(c.num_maskmem), int(c.hidden_dim), int(c.mem_dim)
  num_frames = 6
  bank, feats, ptrs, pos = _bank(model, t, np.random.default_rng(t))
  tpos = params["maskmem_tpos_enc"][:, 0, 0]
  pe = lambda rel, tdm: _apply(model, params, "obj_ptr_pos_encoding", rel, tdm)
  slots = bank.slots(t, num_frames, tpos, pe)
  ns, npt = (int(x) for x in slots.num_present())
  mem, mpos, mask, scale = slots.present(ns, npt).flatten()
  assert scale is None and bool(mask.all())

  bf = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
  toks, tposs = [flat(bf(feats[0]))], [tpos[nm - 1]]
  for dist in range(nm - 1, 0, -1):
    if t - dist >= 1:
      toks.append(flat(bf(feats[t - dist])))
      tposs.append(tpos[dist - 1])
  max_ptrs = min(num_frames, int(c.max_obj_ptrs_in_encoder))
  rel, plist = [t], [ptrs[0]]
  for dist in range(1, max_ptrs):
    if t - dist >= 1:
      rel.append(dist)
      plist.append(ptrs[t - dist])
  ref_mem = jnp.concatenate(toks + [jnp.stack(plist, 1).reshape(2, -1, m)], 1)
  assert ns == len(toks) and npt == len(plist)
  np.testing.assert_array_equal(np.asarray(mem), np.asarray(ref_mem))  # gathered, not computed
  ref_pos = jnp.concatenate([flat(jnp.broadcast_to(pos, feats[0].shape)) + tp for tp in tposs], 1)
  np.testing.assert_array_equal(np.asarray(mpos[:, : ref_pos.shape[1]]), np.asarray(ref_pos))
  ppe = np.repeat(np.asarray(pe(jnp.asarray(rel, jnp.float32), max_ptrs - 1)), d // m, axis=0)
  np.testing.assert_allclose(np.asarray(mpos[0, ref_pos.shape[1] :]), ppe, rtol=1e-6, atol=1e-6)


def _random_slots(rng, b=2, f=5, q=6, hw=16, cm=16, split=4):
  """Slots with per-row presence (rows differ, as under a memory policy) and key factors."""
  rnd = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  ok = np.zeros((b, f), bool)
  ok[0, [0, 2, 3]] = True
  ok[1, [1, 4]] = True
  pok = np.zeros((b, q), bool)
  pok[0, [0, 5]] = True
  pok[1, [0, 1, 2]] = True
  return MemorySlots(
    feats=rnd(b, f, hw, cm),
    pos=rnd(b, f, hw, cm),
    ok=jnp.asarray(ok),
    order=jnp.asarray(rng.permutation(f * b).reshape(b, f), jnp.float32),
    ptr=rnd(b, q, split, cm),
    ptr_pos=rnd(b, q, split, cm),
    ptr_ok=jnp.asarray(pok),
    ptr_order=jnp.asarray(rng.permutation(q * b).reshape(b, q), jnp.float32),
    frame_key_scale=jnp.asarray(rng.uniform(0.5, 1.5, (b, f)), jnp.float32),
    ptr_key_scale=jnp.asarray(rng.uniform(0.5, 1.5, (b, q)), jnp.float32),
  )


def test_every_bucket_equals_all_slots_masked(tiny):
  """Memory attention over present(bucket) == over every slot with the mask (rows with
  different presence, SAM2Long-style key factors), for every bucket that holds them."""
  model, params = tiny
  c = model.config
  h, d, m = int(c.image_size) // 16, int(c.hidden_dim), int(c.mem_dim)
  rng = np.random.default_rng(3)
  slots = _random_slots(rng, hw=h * h, cm=m, split=d // m)
  vis = jnp.asarray(rng.standard_normal((2, h, h, d)), jnp.float32)
  vpos = jnp.asarray(rng.standard_normal((2, h, h, d)), jnp.float32)

  def attend(sl):
    mem, mpos, mask, scale = sl.flatten()
    return _apply(
      model,
      params,
      "condition_on_memory",
      vis,
      vpos,
      mem,
      mpos,
      mask,
      task="mask",
      num_obj_ptr_tokens=sl.num_ptr_tokens,
      key_scale=scale,
    )

  want = np.asarray(attend(slots))
  assert [int(x) for x in slots.num_present()] == [3, 3]
  for n in [(3, 3), (4, 3), (3, 6), (5, 6)]:
    got = np.asarray(attend(slots.present(*n)))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_track_step_present_only_equals_all_slots(tiny):
  """track_step's bucketed memory route == the fixed all-slots route, frame by frame
  (buckets 1, 2 and the full one of the tiny bank)."""
  model, params = tiny
  c = model.config
  h, d = int(c.image_size) // 16, int(c.hidden_dim)
  rng = np.random.default_rng(4)
  feats = {
    "vision": jnp.asarray(rng.standard_normal((1, h, h, d)), jnp.float32),
    "vision_pos": jnp.asarray(rng.standard_normal((1, h, h, d)), jnp.float32),
    "s0": jnp.asarray(rng.standard_normal((1, 4 * h, 4 * h, d // 8)), jnp.float32),
    "s1": jnp.asarray(rng.standard_normal((1, 2 * h, 2 * h, d // 4)), jnp.float32),
  }
  step = jax.jit(
    lambda bank, t, present_only: track_step(
      model, params, feats, bank, t, task="mask", num_frames=8, present_only=present_only
    ),
    static_argnums=2,
  )
  for t in (1, 2, 4):
    bank, *_ = _bank(model, t, np.random.default_rng(10 + t), b=2)
    _, a = step(bank, t, True)
    _, b = step(bank, t, False)
    np.testing.assert_allclose(np.asarray(a.pix), np.asarray(b.pix), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(a.low_res), np.asarray(b.low_res), rtol=1e-4, atol=1e-4)
