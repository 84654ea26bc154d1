"""Prompt encoder, two-way transformer, unified decoder and box head against the reference.

Frame-0 component dumps of the dev fixtures give every input of the prompt encoder and of the
decoder (the S/16 image feature, the projected high-res features), so each task's decoder
call is checked in isolation.  Also: parameter trees vs the key map, tiny-model shapes.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, get_fixture

from sam2pp_jax.convert import key_map
from sam2pp_jax.model.corner_head import soft_argmax_xy
from sam2pp_jax.model.prompt_encoder import PromptEncoder
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.unified_decoder import TASKS, UnifiedDecoder, argmax_point, soft_argmax_point
from sam2pp_jax.parity.fixture import parity_dir

TASK_PARAMS = ("sam_prompt_encoder", "sam_unified_decoder")


def nhwc(a):
  return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def make_models(image_size: int):
  h = image_size // 16
  return (
    PromptEncoder(image_embedding_size=(h, h), input_image_size=(image_size, image_size)),
    UnifiedDecoder(image_size=image_size),
  )


@functools.lru_cache(maxsize=None)
def _fixture_params(task):
  fx = get_fixture(task)
  sd = {
    k: v
    for k, v in fx.state_dict().items()
    if k.startswith(tuple(p + "." for p in TASK_PARAMS)) or k == "no_mem_embed"
  }
  return fx, key_map.torch_to_flax(sd)


# ---------------------------------------------------------------------------------------------
# Parameter trees
# ---------------------------------------------------------------------------------------------


def _check_trees(manifest: dict, image_size: int):
  sd = {
    k: np.broadcast_to(np.float32(0), s)
    for k, s in manifest.items()
    if k.startswith(tuple(p + "." for p in TASK_PARAMS))
  }
  tree = key_map.torch_to_flax(sd)
  pe, dec = make_models(image_size)
  rng = jax.random.key(0)
  pe_shape = jax.eval_shape(lambda: pe.init(rng, method=PromptEncoder.init_all))["params"]
  dec_shape = jax.eval_shape(lambda: dec.init(rng, method=UnifiedDecoder.init_all))["params"]
  key_map.check_against_template(tree["sam_prompt_encoder"], pe_shape)
  key_map.check_against_template(tree["sam_unified_decoder"], dec_shape)
  # And the way back: every reference key is produced from the Flax trees.
  for prefix, shp in zip(TASK_PARAMS, (pe_shape, dec_shape)):
    keys = {k[len(prefix) + 1 :]: s for k, s in sd.items() if k.startswith(prefix + ".")}
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shp)
    key_map.flax_to_torch(zeros, {k: tuple(v.shape) for k, v in keys.items()})


def test_param_tree_small_fixture():
  fx = get_fixture("box")
  _check_trees(fx.manifest, fx.image_size)


def test_param_tree_bplus_manifest():
  d = parity_dir()
  if d is None or not (d / "manifest_bplus.json").exists():
    pytest.skip("manifest_bplus.json not found")
  m = json.loads((d / "manifest_bplus.json").read_text())
  _check_trees({k["key"]: tuple(k["shape"]) for k in m["keys"]}, 1024)


# ---------------------------------------------------------------------------------------------
# Parity on frame 0 (stored inputs -> stored outputs)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _frame0_run(task):
  fx, params = _fixture_params(task)
  s = fx.image_size
  pe, dec = make_models(s)
  multimask = bool(fx["frame0/unified_decoder/multimask_output"])
  has_mask = fx.has("frame0/prompt_encoder/in_masks")

  @jax.jit
  def run(p_pe, p_dec, no_mem_embed, x):
    sparse, dense = pe.apply(
      {"params": p_pe}, x["coords"], x["labels"], masks=x["masks"] if has_mask else None
    )
    image_pe = pe.apply({"params": p_pe}, method=PromptEncoder.get_dense_pe)
    image = x["fpn2"]
    if task == "box":  # directly_add_no_mem_embed on the box-prompted frame
      image = image + no_mem_embed.reshape(1, 1, 1, -1)
    dec_dense = x["dense_ref"] if has_mask else dense
    out = dec.apply(
      {"params": p_dec},
      image,
      image_pe,
      x["sparse_ref"],
      dec_dense,
      (x["s0"], x["s1"]),
      task=task,
      multimask_output=multimask,
    )
    proj = dec.apply(
      {"params": p_dec},
      x["fpn0_spot"],
      x["fpn1_spot"],
      task,
      method=UnifiedDecoder.project_high_res_features,
    )
    return {"sparse": sparse, "dense": dense, "proj_s0": proj[0], "proj_s1": proj[1], **out}

  f0 = "frame0/"
  x = {
    "coords": fx[f0 + "prompt_encoder/in_point_coords"],
    "labels": fx[f0 + "prompt_encoder/in_point_labels"],
    "masks": nhwc(fx[f0 + "prompt_encoder/in_masks"]) if has_mask else None,
    "dense_ref": nhwc(fx[f0 + "prompt_encoder/dense"]) if has_mask else None,
    "sparse_ref": fx[f0 + "prompt_encoder/sparse"],
    "fpn2": nhwc(fx[f0 + "image_encoder/backbone_fpn_2"]),
    "s0": nhwc(fx[f0 + "forward_image/conv_s0_out"]),
    "s1": nhwc(fx[f0 + "forward_image/conv_s1_out"]),
    "fpn0_spot": nhwc(fx[f0 + "image_encoder/backbone_fpn_0[...,::8,::8]"]),
    "fpn1_spot": nhwc(fx[f0 + "image_encoder/backbone_fpn_1[...,::4,::4]"]),
  }
  out = run(params["sam_prompt_encoder"], params["sam_unified_decoder"], params["no_mem_embed"], x)
  return fx, jax.tree_util.tree_map(np.asarray, out)


@pytest.mark.parametrize("task", TASKS)
def test_prompt_encoder_parity(task):
  fx, out = _frame0_run(task)
  assert_close("sparse", out["sparse"], fx["frame0/prompt_encoder/sparse"])
  if fx.has("frame0/prompt_encoder/dense"):
    assert_close("dense", out["dense"], nhwc(fx["frame0/prompt_encoder/dense"]))


@pytest.mark.parametrize("task", TASKS)
def test_high_res_projection_parity(task):
  fx, out = _frame0_run(task)
  assert_close("conv_s0", out["proj_s0"], nhwc(fx["frame0/forward_image/conv_s0_out"])[:, ::8, ::8])
  assert_close("conv_s1", out["proj_s1"], nhwc(fx["frame0/forward_image/conv_s1_out"])[:, ::4, ::4])


@pytest.mark.parametrize("task", TASKS)
def test_unified_decoder_parity(task):
  fx, out = _frame0_run(task)
  ref = lambda n: fx["frame0/unified_decoder/" + n]
  errs = {
    n: assert_close(n, out[n], ref(n))
    for n in ("masks", "iou_pred", "object_score_logits", "sam_tokens_out")
  }
  if task == "box":
    errs["boxes"] = assert_close("boxes", out["boxes"], ref("boxes_xyxy_norm"))
  else:
    assert out["boxes"] is None
  # Discrete decisions downstream of the decoder must agree exactly.
  assert np.array_equal(out["object_score_logits"] > 0, ref("object_score_logits") > 0)
  assert np.argmax(out["iou_pred"], -1) == np.argmax(ref("iou_pred"), -1)
  print(task, {k: f"{v:.2e}" for k, v in errs.items()})


# ---------------------------------------------------------------------------------------------
# Tiny model: shapes of every task / multimask combination, one compile
# ---------------------------------------------------------------------------------------------


def _random_params(model, init_method, seed=0):
  """Params of the init tree's shapes, numpy-filled (cheaper than compiling jax.random init)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), method=init_method))["params"]
  return random_params(shapes, seed)


# Multimask on/off per task, chosen to complement the fixtures (box: on; mask, point: off) and
# the repeat_image call (point, on) while keeping the traced decoder calls few.
MM_CASES = {"mask": (True,), "box": (False,), "point": (False,)}


def test_tiny_shapes_all_tasks():
  s, d, b = 64, 32, 2
  h = s // 16
  pe = PromptEncoder(embed_dim=d, image_embedding_size=(h, h), input_image_size=(s, s))
  dec = UnifiedDecoder(
    transformer_dim=d,
    image_size=s,
    iou_head_hidden_dim=16,
    transformer_num_heads=2,
    transformer_mlp_dim=16,
    box_head_inner_dim=d,
  )
  p_pe, p_dec = (
    _random_params(pe, PromptEncoder.init_all),
    _random_params(dec, UnifiedDecoder.init_all),
  )
  ks = jax.random.split(jax.random.key(1), 4)
  fpn0 = jax.random.normal(ks[0], (b, s // 4, s // 4, d))
  fpn1 = jax.random.normal(ks[1], (b, s // 8, s // 8, d))
  fpn2 = jax.random.normal(ks[2], (b, h, h, d))
  coords = jax.random.uniform(ks[3], (b, 2, 2)) * s
  labels = jnp.array([[2, 3], [1, -1]], jnp.int32)
  masks = jnp.zeros((b, 4 * h, 4 * h, 1))

  @jax.jit
  def run_all(p_pe, p_dec):
    sparse, dense = pe.apply({"params": p_pe}, coords, labels, masks=masks)
    _, dense0 = pe.apply({"params": p_pe}, coords, labels)
    box_sparse, _ = pe.apply({"params": p_pe}, None, None, boxes=coords.reshape(b, 4))
    image_pe = pe.apply({"params": p_pe}, method=PromptEncoder.get_dense_pe)
    outs = {
      "sparse": sparse,
      "dense": dense,
      "dense0": dense0,
      "box_sparse": box_sparse,
      "image_pe": image_pe,
    }
    for task in TASKS:
      feats = dec.apply(
        {"params": p_dec}, fpn0, fpn1, task, method=UnifiedDecoder.project_high_res_features
      )
      for mm in MM_CASES[task]:
        outs[f"{task}/{mm}"] = dec.apply(
          {"params": p_dec}, fpn2, image_pe, sparse, dense, feats, task=task, multimask_output=mm
        )
    # repeat_image: one image, a batch of prompts.
    outs["repeat"] = dec.apply(
      {"params": p_dec},
      fpn2[:1],
      image_pe,
      sparse,
      dense0,
      (feats[0][:1], feats[1][:1]),
      task="point",
      multimask_output=True,
      repeat_image=True,
    )
    return outs

  outs = run_all(p_pe, p_dec)
  assert outs["sparse"].shape == (b, 3, d)  # 2 points + padding point
  assert outs["box_sparse"].shape == (b, 2, d)
  assert outs["dense"].shape == outs["dense0"].shape == (b, h, h, d)
  assert outs["image_pe"].shape == (1, h, h, d)
  for task in TASKS:
    for mm in MM_CASES[task]:
      o = outs[f"{task}/{mm}"]
      m = 3 if mm else 1
      assert o["masks"].shape == (b, m, s // 4, s // 4)
      assert o["iou_pred"].shape == (b, m)
      assert o["object_score_logits"].shape == (b, 1)
      assert o["sam_tokens_out"].shape == (b, m, d)
      if task == "box":
        bx = np.asarray(o["boxes"])
        assert bx.shape == (b, m, 4)
        assert np.all(bx >= 0) and np.all(bx <= 1 - 4 / s + 1e-6)
      else:
        assert o["boxes"] is None
      assert np.all(np.isfinite(np.asarray(o["masks"])))
  assert outs["repeat"]["masks"].shape == (b, 3, s // 4, s // 4)


def test_point_readouts():
  logits = jnp.full((2, 5, 7), -5.0).at[0, 3, 2].set(4.0).at[0, 1, 6].set(4.0).at[1, 4, 0].set(9.0)

  @jax.jit
  def readouts(z):
    grad = jax.grad(lambda z: soft_argmax_point(z).sum())(z)
    return (
      argmax_point(z),
      soft_argmax_point(z * 100.0, normalize=False),
      soft_argmax_point(z[1:] * 100.0),
      grad,
      soft_argmax_xy(jnp.zeros((3, 4)), 4.0),
    )

  hard, sharp, norm, grad, uniform = readouts(logits)
  np.testing.assert_array_equal(hard, [[6, 1], [0, 4]])  # first maximum in row-major order
  np.testing.assert_allclose(sharp[1], [0.0, 4.0], atol=1e-4)
  np.testing.assert_allclose(sharp[0], [4.0, 2.0], atol=1e-4)  # mean of the two maxima
  np.testing.assert_allclose(norm[0], [0.0, 4.0 / 5.0], atol=1e-4)
  assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).sum()) > 0
  # Box-head read-out: uniform scores give the mean grid coordinate times the stride.
  np.testing.assert_allclose(uniform, [6.0, 4.0], atol=1e-6)
