"""The released B+ structure runs for real at 1024 (slow: CPU, ~100M params)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.convert import key_map
from sam2pp_jax.model.sam2pp import build_model, param_shapes
from sam2pp_jax.parity.det_init import det_state_dict
from sam2pp_jax.parity.fixture import parity_dir


@pytest.mark.slow
def test_bplus_frame_at_1024():
  d = parity_dir()
  if d is None or not (d / "manifest_bplus.json").exists():
    pytest.skip("manifest_bplus.json not found (set $SAM2PP_PARITY_DIR)")
  man = {e["key"]: e["shape"] for e in json.loads((d / "manifest_bplus.json").read_text())["keys"]}
  model = build_model("b+")
  # deterministic weights for every key of the released checkpoint, through the key map
  params = key_map.torch_to_flax(det_state_dict(man, 0), template=param_shapes(model))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, 1024, 1024, 3), np.float32))

  @jax.jit
  def frame(p, x):
    f = model.apply({"params": p}, x, task="box", method="encode_image")
    v = model.apply({"params": p}, f["vision"], method="no_memory_features")
    pts = jnp.array([[[100.0, 200.0], [600.0, 700.0]]])
    return f, model.apply(
      {"params": p},
      v,
      f["s0"],
      f["s1"],
      pts,
      jnp.array([[2, 3]]),
      task="box",
      multimask_output=True,
      method="sam_heads",
    )

  f, o = frame(params, x)
  assert f["vision"].shape == (1, 64, 64, 256) and f["s0"].shape == (1, 256, 256, 32)
  assert o["low_res_masks"].shape == (1, 256, 256) and o["boxes"].shape == (1, 4)
  assert np.all(np.isfinite(np.asarray(o["low_res_masks"])))
  b = np.asarray(o["boxes"])  # soft-argmax corners lie in [0, 1-4/S] (0 when gated off)
  assert np.all(np.isfinite(b)) and np.all((b >= 0) & (b <= 1 - 4 / 1024 + 1e-6))
