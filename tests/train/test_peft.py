"""The reference recipe's peft: LoRA on the frozen image encoder (and per task on the memory
attentions), dropout on the LoRA branch, the merged export, and trainable counts against the
released checkpoint's manifest with the released peft rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import bplus_manifest

from sam2pp_jax.convert import key_map
from sam2pp_jax.model import lora
from sam2pp_jax.model.presets import TASKS, get_model_config
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model, param_shapes
from sam2pp_jax.train import params, peft
from sam2pp_jax.train.optimizer import make_optimizer
from sam2pp_jax.train.recipes import get_train_config
from sam2pp_jax.train.trainer import run_optimizer_config

# The released trainable set (manifest_bplus.json + trainer.peft of the three-task yaml).
REF_TRAINABLE = 49_363_586
REF_ENCODER_LORA = 22_251_904
# per memory attention: 4 layers x (self q/k/v/out 4 x 128 x (256 + 256), cross q/out
# 2 x 128 x (256 + 256), cross k/v 2 x 128 x (64 + 256), linear1/linear2 2 x 128 x (256 + 2048))
REF_MEM_ATTN_LORA = 4 * (4 * 65536 + 2 * 65536 + 2 * 40960 + 2 * 294912)


def _reference_on_tiny():
  """The reference recipe on the tiny preset (same peft targets, rank, alpha, dropout)."""
  c = get_train_config("reference")
  c.model = get_model_config("tiny")
  return c


@pytest.fixture(scope="module")
def tiny():
  c = _reference_on_tiny()
  model = build_model(c.model)
  base = random_params(model, 0)
  tp = params.init_train_params(base, jax.random.key(1), c.lora)
  return c, model, base, tp


def _perturbed(tp, seed=2):
  """Factors with B != 0 (fresh ones are B = 0, a no-op)."""
  rng = np.random.default_rng(seed)
  out = dict(tp)
  for k in ("lora", params.ENCODER_LORA):
    out[k] = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype), tp[k])
  return out


def test_reference_recipe_has_the_released_peft():
  c = get_train_config("reference")
  for name, sub in (("memory_attention", c.lora), ("image_encoder", c.lora.image_encoder)):
    ref = peft.REFERENCE_PEFT[name]
    want = (ref["rank"], ref["alpha"], ref["dropout"])
    assert (sub.rank, sub.alpha, sub.dropout) == want == (128, 32.0, 0.1)
    assert tuple(sub.targets) == tuple(ref["targets"])
  assert c.lora.enabled and c.lora.image_encoder.enabled and c.lora.image_encoder.freeze_base
  assert "image_encoder" in c.optim.lora_wrapped_modules
  for name in ("pretrain_tiny", "finetune_tiny", "demo", "test"):  # from scratch: no peft
    assert not get_train_config(name).lora.image_encoder.enabled, name


def test_encoder_factors_sit_on_the_reference_targets(tiny):
  c, _, base, tp = tiny
  found = lora.target_paths(base["image_encoder"], c.lora.image_encoder.targets)
  n_blocks = sum(c.model.trunk.stages)
  want = {"trunk.patch_embed.proj"} | {f"neck.convs.{i}.conv" for i in range(3)}
  for i in range(n_blocks):
    want |= {
      f"trunk.blocks.{i}.{m}" for m in ("attn.qkv", "attn.proj", "mlp.layers.0", "mlp.layers.1")
    }
  assert {lora.dotted_name(p) for p, _ in found} == want  # not blocks' `proj`, not convs.3
  fac = tp[params.ENCODER_LORA]["image_encoder"]
  assert len(jax.tree.leaves(fac)) == 2 * len(found)
  for path, kernel in found:
    f = fac
    for k in path:
      f = f[k]
    assert f["lora_a"].shape == kernel.shape[:-1] + (128,), path
    assert f["lora_b"].shape == (128, kernel.shape[-1]), path
    assert not np.any(np.asarray(f["lora_b"]))
  # the patch-embed conv's A is a 7x7 conv to rank 128, bound 1/sqrt(7*7*3)
  a = np.asarray(tp[params.ENCODER_LORA]["image_encoder"]["trunk"]["patch_embed"]["proj"]["lora_a"])
  assert a.shape == (7, 7, 3, 128) and np.abs(a).max() <= 1 / np.sqrt(147)


def test_base_is_frozen_and_factors_train(tiny):
  c, _, _, tp = tiny
  _, info = make_optimizer(run_optimizer_config(c), tp)
  for p, frozen in info.frozen.items():
    if p.startswith(("model/image_encoder/", "model/memory_attention_")):
      assert frozen, p
    elif p.startswith(params.ENCODER_LORA + "/"):
      assert not frozen and info.peak_lr(p) == pytest.approx(5e-6), p  # vision lr, no decay
    elif p.startswith("lora/"):
      assert not frozen and info.peak_lr(p) == pytest.approx(5e-5), p
  assert not info.frozen["model/sam_unified_decoder/iou_token/embedding"]
  # an optimizer step (on the patch embed's slice of the tree: the same paths, so the same
  # rules) leaves the base bit-identical and moves the factors
  pe = lambda t: {
    "image_encoder": {"trunk": {"patch_embed": t["image_encoder"]["trunk"]["patch_embed"]}}
  }
  sub = {"model": pe(tp["model"]), params.ENCODER_LORA: pe(_perturbed(tp)[params.ENCODER_LORA])}
  tx, _ = make_optimizer(run_optimizer_config(c), sub)
  up, _ = tx.update(jax.tree.map(jnp.ones_like, sub), tx.init(sub), sub)
  new = optax.apply_updates(sub, up)
  jax.tree.map(np.testing.assert_array_equal, new["model"], sub["model"])
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new, sub)[params.ENCODER_LORA]
  assert len(jax.tree.leaves(moved)) == 2 and all(jax.tree.leaves(moved))


def _run_encoder(model, x, task):
  @jax.jit
  def run(p, key=None):
    kw = {} if key is None else dict(rngs={"dropout": key}, deterministic=False)
    return model.apply({"params": p}, x, task=task, method="encode_image", **kw)

  return run


def test_merged_export_equals_unmerged_forward(tiny):
  c, model, base, tp = tiny
  tp = _perturbed(tp)
  merged = params.export_inference_params(tp, c.lora)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
  attached = {t: params.params_for_task(tp, t, c.lora) for t in TASKS}
  enc = attached["box"]["image_encoder"]["trunk"]["blocks_0"]["attn"]["qkv"]
  assert "lora_a" in enc and "lora_dropout" in enc  # the unmerged (dropout) form
  run = _run_encoder(model, x, "box")
  got, want = run(attached["box"]), run(merged)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
  plain = run(base)  # same tree as the merged one: no recompile
  assert max(float(jnp.abs(want[k] - plain[k]).max()) for k in want) > 1e-2  # LoRA acts
  d, m = int(c.model.hidden_dim), int(c.model.mem_dim)
  nptr = d // m
  mem = jnp.asarray(rng.standard_normal((2, 3 * 16 + nptr, m)), jnp.float32)
  for t in TASKS:  # each task's memory attention with its own factors (eager: small)
    k = f"memory_attention_{t}"

    def cond(p, t=t):
      return model.apply(
        {"params": p},
        want["vision"],
        want["vision_pos"],
        mem,
        mem,
        task=t,
        num_obj_ptr_tokens=nptr,
        method="condition_on_memory",
      )

    assert "lora_a" in attached[t][k]["layers_0"]["cross_attn_image"]["k_proj"]
    a, b = cond(attached[t]), cond(merged)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=t)
    assert float(jnp.abs(b - cond(base)).max()) > 1e-3, t


def test_lora_dropout_is_on_the_branch_only_and_keyed(tiny):
  c, model, _, tp = tiny
  x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 64, 64, 3)), jnp.float32)
  enc = _run_encoder(model, x, "mask")
  run = lambda t, key: enc(params.params_for_task(t, "mask", c.lora), key)["vision"]
  # fresh factors (B = 0): dropout on the LoRA input changes nothing
  np.testing.assert_array_equal(run(tp, jax.random.key(0)), run(tp, None))
  tp2 = _perturbed(tp)
  a, b, off = run(tp2, jax.random.key(0)), run(tp2, jax.random.key(1)), run(tp2, None)
  np.testing.assert_array_equal(a, run(tp2, jax.random.key(0)))  # same key, same masks
  assert float(jnp.abs(a - b).max()) > 1e-4 and float(jnp.abs(a - off).max()) > 1e-4
  # rate 0: no dropout, the merged path
  c0 = c.lora.copy_and_resolve_references()
  c0.image_encoder.dropout = 0.0
  p0 = params.params_for_task(tp2, "mask", c0)
  assert "lora_a" not in p0["image_encoder"]["trunk"]["blocks_0"]["attn"]["qkv"]


@pytest.mark.slow
def test_frozen_encoder_gets_no_gradient_and_its_factors_do(tiny):
  """Through the dropout forward under jax.checkpoint (~20 s compile)."""
  c, model, _, tp = tiny
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)), jnp.float32)

  def loss(t):
    p = params.params_for_task(t, "mask", c.lora)
    f = model.apply(
      {"params": p},
      x,
      task="mask",
      method="encode_image",
      rngs={"dropout": jax.random.key(0)},
      deterministic=False,
    )
    return sum(jnp.sum(v**2) for v in f.values())

  g = jax.jit(jax.grad(jax.checkpoint(loss)))(_perturbed(tp))  # remat, as the reference recipe
  assert not any(np.any(np.asarray(v)) for v in jax.tree.leaves(g["model"]["image_encoder"]))
  assert all(np.any(np.asarray(v)) for v in jax.tree.leaves(g[params.ENCODER_LORA]))


def test_reference_trainable_count_on_the_releasedbplus_manifest():
  shapes = bplus_manifest()
  ref = peft.reference_trainable_count(shapes)
  assert ref["lora_modules"] == {
    "image_encoder": 1 + 24 * 4 + 3,  # patch embed, 24 blocks x 4, neck convs 0-2
    **{f"memory_attention_{t}": 4 * 10 for t in TASKS},
  }
  assert ref["lora_by_module"]["memory_attention_mask"] == REF_MEM_ATTN_LORA
  assert ref["lora_by_module"]["image_encoder"] == REF_ENCODER_LORA
  assert ref["buffers"] == 1 + 24 * 4  # gaussian matrix, 24 FrozenBN x 4 entries
  assert ref["trainable"] == REF_TRAINABLE
  assert ref["trainable"] + ref["frozen"] == ref["total"]


def test_rules_raise_on_bad_input():
  with pytest.raises(ValueError, match="no parameters"):
    peft.reference_trainable_count({"other.weight": (2, 2)})
  with pytest.raises(ValueError, match="match no module"):
    lora.init_lora(jax.random.key(0), {"a": {"kernel": jnp.ones((2, 2))}}, 2, ("a", "nope"))
  with pytest.raises(ValueError, match="dropout"):
    lora.attach({"a": {"kernel": jnp.ones((2, 2))}}, {"a": {"lora_a": 0, "lora_b": 0}}, 1, 1, 1.0)


def test_report_matches_reference_rules_and_guards_the_frozen_encoder(tiny):
  c, _, _, tp = tiny
  _, info = make_optimizer(run_optimizer_config(c), tp)
  text = peft.trainable_report(c, tp, info)
  assert "ours match" in text, text
  bad = c.copy_and_resolve_references()
  bad.optim.lora_wrapped_modules = tuple(
    m for m in bad.optim.lora_wrapped_modules if m != "image_encoder"
  )
  _, info2 = make_optimizer(run_optimizer_config(bad), tp)
  with pytest.raises(ValueError, match="freeze_base"):
    peft.trainable_report(bad, tp, info2)


@pytest.mark.slow
def test_bplus_reference_recipe_trains_what_the_released_peft_trains():
  """Ours (the reference recipe on b+, shapes only) = the manifest count (~10 s)."""
  shapes = bplus_manifest()
  c = get_train_config("reference")
  ps = param_shapes(build_model(c.model))
  assert key_map.reference_keys(ps) == shapes
  tp = jax.eval_shape(lambda p: params.init_train_params(p, jax.random.key(0), c.lora), ps)
  _, info = make_optimizer(run_optimizer_config(c), tp)
  ours = peft.trainable_count(tp, info)
  assert ours["trainable"] == REF_TRAINABLE
  assert ours["by_key"][params.ENCODER_LORA] == REF_ENCODER_LORA
  assert ours["by_key"]["lora"] == 3 * REF_MEM_ATTN_LORA
