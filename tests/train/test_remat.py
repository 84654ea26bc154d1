"""Remat policies of the training forward (`prompts.remat`, train/forward.py): each keeps what it
says (jax's own record of the saved residuals) and none changes the gradients.

The fast tests work on the tiny image encoder (one compile per policy, seconds); the slow one
compares whole training-loss gradients of the `test` recipe under every policy."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_with_objects_present
from jax.ad_checkpoint import print_saved_residuals

from sam2pp_jax.model.layers import BLOCK_OUTPUT
from sam2pp_jax.tracking.step import frame_features
from sam2pp_jax.train import data as train_data
from sam2pp_jax.train import trainer
from sam2pp_jax.train.forward import REMAT_POLICIES, remat_policy, rematerialise
from sam2pp_jax.train.params import init_train_params
from sam2pp_jax.train.recipes import get_train_config


@pytest.fixture(scope="module")
def encoder():
  """(loss of the tiny model's frame features w.r.t. its params, params, two frames)."""
  model, params = tiny_with_objects_present()
  s = int(model.config.image_size)
  frames = jax.random.uniform(jax.random.key(0), (2, s, s, 3))

  def features(p, x):
    f = frame_features(model, p, x, task="mask")
    return sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in jax.tree.leaves(f))

  return features, params, frames


def test_policy_names():
  assert remat_policy(True) == "frame" and remat_policy(False) == "none"
  for name in REMAT_POLICIES:
    assert remat_policy(name) == name
  with pytest.raises(ValueError, match="not a remat policy; use one of"):
    remat_policy("blocks")


def saved_residuals(fn, *args):
  """jax's own list of the values `fn`'s backward keeps, one description per value."""
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    print_saved_residuals(fn, *args)
  return [(None, line) for line in buf.getvalue().splitlines() if line.strip()]


def test_policies_keep_what_they_say(encoder):
  """none keeps the most; frame only the inputs; block the tagged block outputs (and inputs);
  dots_saveable matmul outputs but no tagged-only values."""
  features, params, frames = encoder
  res = {p: saved_residuals(rematerialise(features, p), params, frames) for p in REMAT_POLICIES}
  named = {p: [r for r in res[p] if f"named '{BLOCK_OUTPUT}'" in r[1]] for p in REMAT_POLICIES}
  inputs = lambda p: [r for r in res[p] if "from the argument" in r[1] or "from a constant" in r[1]]
  args = {p: inputs(p) for p in REMAT_POLICIES}
  # frame: nothing but the function's own arguments (and constants of the program)
  assert len(res["frame"]) == len(args["frame"])
  # block: the arguments plus one residual per tagged block output (every Hiera block here)
  n_blocks = sum(1 for k in params["image_encoder"]["trunk"] if k.startswith("blocks_"))
  assert n_blocks > 0 and len(named["block"]) >= n_blocks
  assert len(res["block"]) == len(args["block"]) + len(named["block"])
  # dots_saveable keeps more than block but less than keeping everything
  assert len(res["block"]) < len(res["dots_saveable"]) < len(res["none"])


@pytest.mark.slow  # ~25-35 s on 2 CPU cores; CI's slow stage runs it
def test_policies_give_the_same_gradients(encoder):
  features, params, frames = encoder
  grads = {p: jax.jit(jax.grad(rematerialise(features, p)))(params, frames) for p in REMAT_POLICIES}
  for p in REMAT_POLICIES[1:]:
    for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[p])):
      # float32 noise of a different fusion: measured <= 3e-7 of the leaf's largest entry
      a, b = np.asarray(a), np.asarray(b)
      np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max() + 1e-12, err_msg=p)


def test_recipe_rejects_unknown_policy():
  c = get_train_config("test")
  c.prompts.remat = "per-block"
  model = trainer.build_train_model(c)
  params = init_train_params(tiny_with_objects_present()[1], jax.random.key(0), c.lora)
  task, batch = next(train_data.make_train_iterator(c.data, 0))
  loss = trainer.make_loss_fn(model, c, task)
  with pytest.raises(ValueError, match="prompts.remat = 'per-block'"):
    jax.eval_shape(loss, params, batch, jax.random.key(0))


@pytest.mark.slow
def test_training_loss_gradients_agree_across_policies():
  """The whole training loss (test recipe, point task, corrections off) under every policy
  (~4 compiles of the tiny train gradient). Dropout off: `none` draws the encoder's drop-path
  for all frames at once, the other policies per frame (forward.encode_frames)."""
  c = get_train_config("test")
  c.prompts.apply_dropout = False
  params = init_train_params(tiny_with_objects_present()[1], jax.random.key(0), c.lora)
  task, batch = next(train_data.make_train_iterator(c.data, 0))
  out = {}
  for p in REMAT_POLICIES:
    c.prompts.remat = p
    model = trainer.build_train_model(c)
    loss = trainer.make_loss_fn(model, c, task)
    out[p] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch, jax.random.key(3))
  (l0, _), g0 = out["none"]
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).astype(np.float64)
  scale = float(np.abs(flat(g0)).max())
  for p in REMAT_POLICIES[1:]:
    (lp, _), gp = out[p]
    np.testing.assert_allclose(float(lp), float(l0), rtol=1e-5, err_msg=p)
    # float32 noise of encoding frame by frame instead of as one batch (other matmul shapes),
    # carried through the clip's scan. Measured (frame): relative L2 1.5e-6 over all grads; per
    # leaf max |diff| <= 3.9e-4 of the leaf's max, except leaves that are zero in exact
    # arithmetic (attention key biases, ~1e-9 against a largest gradient of 13): the floor
    rel = np.linalg.norm(flat(gp) - flat(g0)) / np.linalg.norm(flat(g0))
    assert rel <= 1e-4, (p, rel)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(gp)):
      a, b = np.asarray(a), np.asarray(b)
      np.testing.assert_allclose(
        b, a, rtol=0, atol=5e-3 * np.abs(a).max() + 1e-7 * scale, err_msg=p
      )
