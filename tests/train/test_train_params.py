"""Training parameter layouts: shared memory base + per-task LoRA, init priors, the schedule."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sam2pp_jax.model.position_encoding import apply_rope, axial_rope_tables
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.train import init_priors, params
from sam2pp_jax.train.optimizer import make_optimizer
from sam2pp_jax.train.recipes import get_train_config
from sam2pp_jax.train.trainer import run_optimizer_config


def _tree(seed):
  rng = np.random.default_rng(seed)
  mem = lambda: {
    "layers_0": {
      "cross_attn_image": {
        n: {"kernel": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32)}
        for n in ("q_proj", "k_proj", "v_proj", "out_proj")
      }
    }
  }
  enc = lambda: {"out_proj": {"kernel": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32)}}
  tree = {"other": {"w": jnp.ones((2,))}}
  for t in TASKS:
    tree[f"memory_attention_{t}"] = mem()
    tree[f"memory_encoder_{t}"] = enc()
  return tree


def _lora_cfg(share):
  return ml_collections.ConfigDict(
    dict(enabled=True, rank=2, alpha=4.0, targets=("q_proj", "v_proj"), share_memory_base=share)
  )


def test_shared_memory_base_is_one_copy_that_every_task_reads():
  cfg = _lora_cfg(True)
  tp = params.init_train_params(_tree(0), jax.random.key(0), cfg)
  assert set(tp["shared"]) == {"memory_attention", "memory_encoder"}
  assert not any(k.startswith(("memory_attention_", "memory_encoder_")) for k in tp["model"])
  # distinct LoRA per task on the one base: tasks differ only by their factors
  tp["lora"] = jax.tree.map(lambda a: a + 0.5, tp["lora"])
  per = {t: params.params_for_task(tp, t, cfg) for t in TASKS}
  for t in TASKS:
    np.testing.assert_array_equal(
      per[t][f"memory_encoder_{t}"]["out_proj"]["kernel"],
      tp["shared"]["memory_encoder"]["out_proj"]["kernel"],
    )
  # gradients of every task reach the shared base
  for t in TASKS:
    g = jax.grad(
      lambda tp, t=t: jnp.sum(
        params.params_for_task(tp, t, cfg)[f"memory_attention_{t}"]["layers_0"]["cross_attn_image"][
          "q_proj"
        ]["kernel"]
      )
    )(tp)
    assert (
      float(
        jnp.abs(
          g["shared"]["memory_attention"]["layers_0"]["cross_attn_image"]["q_proj"]["kernel"]
        ).sum()
      )
      > 0
    )
  # the export holds the inference layout: one merged copy per task
  out = params.export_inference_params(tp, cfg)
  for t in TASKS:
    np.testing.assert_allclose(
      out[f"memory_attention_{t}"]["layers_0"]["cross_attn_image"]["q_proj"]["kernel"],
      per[t][f"memory_attention_{t}"]["layers_0"]["cross_attn_image"]["q_proj"]["kernel"],
    )
  a = out["memory_attention_mask"]["layers_0"]["cross_attn_image"]["q_proj"]["kernel"]
  b = out["memory_attention_box"]["layers_0"]["cross_attn_image"]["q_proj"]["kernel"]
  assert np.asarray(a).shape == np.asarray(b).shape


def test_unshared_layout_is_unchanged():
  cfg = _lora_cfg(False)
  tree = _tree(1)
  tp = params.init_train_params(tree, jax.random.key(0), cfg)
  assert "shared" not in tp and set(tp["model"]) == set(tree)
  out = params.export_inference_params(tp, cfg)  # B = 0: the merge is the base
  for k in tree:
    jax.tree.map(np.testing.assert_array_equal, out[k], tree[k])


def test_rope_locality_prior_makes_cross_attention_attend_to_its_own_position():
  """With the prior's q/k biases alone, RoPE scores peak where query and key positions match
  (the property the prior exists for), on a 4 x 4 grid."""
  hd, amp = 16, 6.0
  b = init_priors.rope_bias(hd, 1, amp)
  cos, sin = axial_rope_tables(hd, 4, 4)
  q = apply_rope(jnp.broadcast_to(jnp.asarray(b), (16, hd)), cos, sin)
  k = apply_rope(jnp.broadcast_to(jnp.asarray(b), (16, hd)), cos, sin)
  scores = np.asarray(q @ k.T)
  assert np.all(np.argmax(scores, axis=1) == np.arange(16))
  p = jax.nn.softmax(scores / np.sqrt(hd), axis=1)
  assert float(np.min(np.diag(np.asarray(p)))) > 0.2  # far from uniform (1/16)
  tree = {
    "layers_0": {
      "cross_attn_image": {n: {"bias": jnp.zeros(hd)} for n in ("q_proj", "k_proj", "v_proj")}
    }
  }
  out = init_priors.rope_locality_prior(tree, 1, amp)["layers_0"]["cross_attn_image"]
  np.testing.assert_array_equal(out["q_proj"]["bias"], b)
  np.testing.assert_array_equal(out["k_proj"]["bias"], b)
  np.testing.assert_array_equal(out["v_proj"]["bias"], 0)
  assert out["q_proj"]["bias"] is not out["k_proj"]["bias"]  # separate (donated) buffers


@pytest.mark.parametrize("name", ["demo", "pretrain_tiny", "finetune_tiny", "reference"])
def test_lr_schedule_ends_with_the_run(name):
  """The cosine reaches its end value at the run's last step, whatever optim.total_steps says
  (the old demo scheduled 3,000 steps and ran ~1,200: it never annealed)."""
  cfg = get_train_config(name)
  cfg.total_steps = 37
  cfg.optim.warmup_steps = 5
  _, info = make_optimizer(run_optimizer_config(cfg), {"w": jnp.zeros((2,))})
  end = float(cfg.optim.end_lr_factor)
  assert float(info.schedule(37)) == pytest.approx(end, abs=1e-6)
  assert float(info.schedule(20)) > end + 0.05
