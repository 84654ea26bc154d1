"""Image encoder (Hiera trunk + FPN neck): parity with the PyTorch fixtures and param layout."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, get_fixture

from sam2pp_jax.convert import key_map
from sam2pp_jax.model.fpn_neck import upsample2x
from sam2pp_jax.model.hiera import Hiera, bicubic_resize
from sam2pp_jax.model.image_encoder import ImageEncoder
from sam2pp_jax.model.presets import TRUNKS
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.parity.fixture import parity_dir

# The dev fixtures' small model uses the Hiera-T trunk/neck settings at S=256 (fixture README).
SMALL, LARGE = TRUNKS["t"], TRUNKS["l"]


def _encoder_params(fx):
  sd = {k: v for k, v in fx.state_dict().items() if k.startswith("image_encoder.")}
  return key_map.torch_to_flax(sd)["image_encoder"]


def _nchw(a):
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


@pytest.fixture(scope="module")
def box_run():
  """Box fixture and our encoder outputs on its frames 0 and 1 (one jitted call)."""
  fx = get_fixture("box")
  model = ImageEncoder(**SMALL)
  frames = np.transpose(fx.frames()[:2], (0, 2, 3, 1))
  out = jax.jit(lambda p, x: model.apply({"params": p}, x))(_encoder_params(fx), frames)
  return fx, jax.tree.map(np.asarray, out)


def test_param_template_matches_small_fixture():
  fx = get_fixture("box")
  model = ImageEncoder(**SMALL)
  s = fx.image_size
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, 3)))["params"]
  key_map.check_against_template(_encoder_params(fx), template)


def test_parity_box_frames_0_and_1(box_run):
  fx, out = box_run
  fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
  assert len(fpn) == len(pos) == 3
  for t in (0, 1):
    assert_close(
      f"frame{t} backbone_fpn_2",
      _nchw(fpn[2][t : t + 1]),
      fx[f"frame{t}/image_encoder/backbone_fpn_2"],
    )
  checks = {
    "backbone_fpn_0[...,::8,::8]": _nchw(fpn[0][:1])[..., ::8, ::8],
    "backbone_fpn_1[...,::4,::4]": _nchw(fpn[1][:1])[..., ::4, ::4],
    "vision_pos_enc_2[...,::2,::2]": _nchw(pos[2][:1])[..., ::2, ::2],
  }
  for name, got in checks.items():
    assert_close(f"frame0 {name}", got, fx[f"frame0/image_encoder/{name}"])
  np.testing.assert_array_equal(out["vision_features"], fpn[2])


@pytest.mark.parametrize("task", ["mask", "point"])
def test_parity_other_tasks_frame0(box_run, task):
  """Same video and seed as box: our box-run outputs must match their stored arrays too."""
  fx_box, out = box_run
  fx = get_fixture(task)
  if not np.array_equal(fx.frames()[:1], fx_box.frames()[:1]):
    pytest.skip(f"{task} fixture uses another video than box")
  assert_close(
    f"{task} frame0 backbone_fpn_2",
    _nchw(out["backbone_fpn"][2][:1]),
    fx["frame0/image_encoder/backbone_fpn_2"],
  )


def test_bicubic_and_upsample_match_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  for (hi, wi), (ho, wo) in [((7, 7), (64, 64)), ((14, 14), (256, 256)), ((7, 9), (16, 12))]:
    x = rng.standard_normal((1, 3, hi, wi)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=(ho, wo), mode="bicubic").numpy()
    got = _nchw(bicubic_resize(np.transpose(x, (0, 2, 3, 1)), (ho, wo)))
    np.testing.assert_allclose(got, ref, atol=2e-6)
  x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
  for mode, kw in (("nearest", {}), ("bilinear", {"align_corners": False})):
    ref = F.interpolate(torch.from_numpy(x), scale_factor=2.0, mode=mode, **kw).numpy()
    got = _nchw(upsample2x(np.transpose(x, (0, 2, 3, 1)), mode))
    np.testing.assert_allclose(got, ref, atol=2e-6)


def _numpy_init(model, x, seed=0):
  """Random variables from the eval_shape template (flax's jitted init is slow on 2 CPUs)."""
  return random_params(jax.eval_shape(model.init, jax.random.key(0), x), seed)


def test_tiny_shapes_and_modes():
  """Tiny trunk: output shapes, channel order, bilinear/avg neck and drop path all run."""
  cfg = dict(
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 1, 1),
    global_att_blocks=(2,),
    window_pos_embed_bkg_spatial_size=(4, 4),
    window_spec=(8, 4, 2, 2),
    d_model=32,
    drop_path_rate=0.5,
  )
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3)), jnp.float32)
  model = ImageEncoder(**cfg)
  variables = _numpy_init(model, x)
  assert variables["params"]["trunk"]["pos_embed"].shape == (1, 4, 4, 16)
  assert variables["params"]["neck"]["convs_0"]["conv"]["kernel"].shape == (1, 1, 128, 32)
  out = jax.jit(model.apply)(variables, x)
  assert [f.shape for f in out["backbone_fpn"]] == [(2, 16, 16, 32), (2, 8, 8, 32), (2, 4, 4, 32)]
  assert [p.shape for p in out["vision_pos_enc"]] == [f.shape for f in out["backbone_fpn"]]
  train = jax.jit(functools.partial(model.apply, deterministic=False))(
    variables, x, rngs={"dropout": jax.random.key(2)}
  )
  assert all(bool(jnp.all(jnp.isfinite(f))) for f in train["backbone_fpn"])
  # Drop path only acts in training: some sample paths differ from the inference output.
  # (block 0 has rate 0 by the linear decay rule, so its level may coincide).
  assert not np.allclose(train["backbone_fpn"][2], out["backbone_fpn"][2])
  for extra in (
    dict(fpn_interp_model="bilinear", fuse_type="avg", fpn_top_down_levels=None),
    dict(scalp=0),
  ):
    out2 = ImageEncoder(**cfg, **extra).apply(variables, x)
    assert len(out2["backbone_fpn"]) == 3 + (extra.get("scalp", 1) == 0)
  assert Hiera(**{k: cfg[k] for k in ("embed_dim", "stages", "window_spec")}).channel_list == [
    128,
    64,
    32,
    16,
  ]


def _bplus_manifest_params():
  d = parity_dir()
  path = None if d is None else d / "manifest_bplus.json"
  if path is None or not path.exists():
    pytest.skip("manifest_bplus.json not found")
  keys = json.loads(path.read_text())["keys"]
  sd = {
    k["key"]: np.zeros(k["shape"], np.float32)
    for k in keys
    if k["key"].startswith("image_encoder.")
  }
  return key_map.torch_to_flax(sd)["image_encoder"]


def test_bplus_template_matches_release_manifest():
  model = ImageEncoder()  # defaults are the released B+ config
  x = jax.ShapeDtypeStruct((1, 1024, 1024, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  key_map.check_against_template(_bplus_manifest_params(), variables["params"])
  out = jax.eval_shape(model.apply, variables, x)
  assert [f.shape for f in out["backbone_fpn"]] == [
    (1, 256, 256, 256),
    (1, 128, 128, 256),
    (1, 64, 64, 256),
  ]


def test_large_preset_shapes():
  model = ImageEncoder(**LARGE)
  x = jax.ShapeDtypeStruct((1, 1024, 1024, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  trunk = variables["params"]["trunk"]
  assert len([k for k in trunk if k.startswith("blocks_")]) == 48
  assert trunk["pos_embed"].shape == (1, 7, 7, 144)
  assert variables["params"]["neck"]["convs_0"]["conv"]["kernel"].shape == (1, 1, 1152, 256)
  out = jax.eval_shape(model.apply, variables, x)
  assert [f.shape for f in out["backbone_fpn"]] == [
    (1, 256, 256, 256),
    (1, 128, 128, 256),
    (1, 64, 64, 256),
  ]
