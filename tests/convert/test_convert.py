"""convert_torch_weights.py: torch-free safe reading, SAM 2 -> SAM 2++, export back, errors."""

import collections
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from sam2pp_jax.convert import key_map
from sam2pp_jax.convert.torch_reader import UnsafeCheckpointError, read_torch_checkpoint
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.model.sam2pp import build_model, param_shapes
from sam2pp_jax.parity.det_init import det_state_dict

ROOT = str(REPO)
CLI = os.path.join(ROOT, "convert_torch_weights.py")


def _run(*args, block_torch=False):
  """Run the CLI in a subprocess (optionally with `import torch` made impossible)."""
  pre = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
  code = (
    pre + f"sys.argv = ['convert_torch_weights.py'] + {list(map(str, args))!r}; "
    f"import runpy; runpy.run_path({CLI!r}, run_name='__main__')"
  )
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def _torch():
  return pytest.importorskip("torch", reason="torch (optional test extra) writes the .pt inputs")


def _save_pt(torch, sd, path, container=True):
  state = collections.OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in sd.items())
  torch.save({"model": state} if container else state, path)


@pytest.fixture(scope="module")
def tiny_sd():
  """Deterministic weights for every reference key of the tiny preset."""
  return det_state_dict(key_map.reference_keys(param_shapes(build_model("tiny"))), 3)


def _sam2_style(sd):
  """The tiny SAM 2++ state dict expressed with SAM 2 key names (mask-task copies)."""
  out = collections.OrderedDict()
  for k, v in sd.items():
    if (
      k.startswith(
        (
          "memory_attention_point",
          "memory_attention_box",
          "memory_encoder_point",
          "memory_encoder_box",
        )
      )
      or "box_head" in k
    ):
      continue
    if k.startswith(("memory_attention_mask", "memory_encoder_mask")):
      k = k.replace("_mask.", ".", 1)
    elif k.startswith("sam_unified_decoder."):
      rest = k[len("sam_unified_decoder.") :]
      if any(
        rest.startswith(h)
        for h in ("output_hypernetworks_mlps_", "output_upscaling_", "conv_s0_", "conv_s1_")
      ):
        head, _, tail = rest.partition(".")
        if not head.endswith("_mask"):
          continue
        rest = head[: -len("_mask")] + "." + tail
      k = "sam_mask_decoder." + rest
    out[k] = v
  return out


def test_reader_matches_torch_load(tmp_path):
  torch = _torch()
  sd = collections.OrderedDict(
    a=torch.randn(3, 4),
    b=torch.randn(4, 3).t(),
    c=torch.arange(10)[2:7],
    d=torch.randn(5).to(torch.bfloat16),
    e=torch.tensor(2.5),
    f=torch.ones(3, dtype=torch.bool),
  )
  torch.save({"model": sd}, tmp_path / "x.pt")
  ours = read_torch_checkpoint(tmp_path / "x.pt")["model"]
  ref = torch.load(tmp_path / "x.pt", weights_only=True)["model"]
  for k in ref:
    want = ref[k].float().numpy() if ref[k].dtype == torch.bfloat16 else ref[k].numpy()
    got = np.asarray(ours[k], np.float32) if ref[k].dtype == torch.bfloat16 else ours[k]
    assert got.shape == want.shape and np.array_equal(got, want), k


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"model": Evil()}, protocol=2))
    z.writestr("evil/byteorder", "little")
  with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
    read_torch_checkpoint(path)
  r = _run(path, tmp_path / "out")
  assert r.returncode == 2 and "refusing" in r.stderr and "Traceback" not in r.stderr
  assert not marker.exists() and not (tmp_path / "out").exists()


def test_tiny_round_trip_without_torch(tmp_path, tiny_sd):
  torch = _torch()
  _save_pt(torch, tiny_sd, tmp_path / "tiny.pt")
  r = _run(tmp_path / "tiny.pt", tmp_path / "conv", "--config", "tiny", block_torch=True)
  assert r.returncode == 0, r.stderr
  rep = json.load(open(tmp_path / "conv" / "conversion_report.json"))
  assert rep["source_kind"] == "sam2plus" and rep["fresh_init_keys"] == []
  r = _run("--to-torch", tmp_path / "conv", tmp_path / "back.pt")
  assert r.returncode == 0, r.stderr
  back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
  assert set(back) == set(tiny_sd)
  for k, v in tiny_sd.items():
    assert np.array_equal(back[k].numpy(), v), k


def test_bfloat16_storage_loads_as_float32(tmp_path, tiny_sd):
  torch = _torch()
  import sam2pp_jax

  _save_pt(torch, tiny_sd, tmp_path / "tiny.pt", container=False)  # bare state dict
  r = _run(tmp_path / "tiny.pt", tmp_path / "bf", "--config", "tiny", "--dtype", "bfloat16")
  assert r.returncode == 0, r.stderr
  cfg, params = sam2pp_jax.load_model(tmp_path / "bf")
  leaf = params["obj_ptr_proj"]["layers_0"]["kernel"]
  assert leaf.dtype == jnp.float32
  want = tiny_sd["obj_ptr_proj.layers.0.weight"].T.astype(jnp.bfloat16).astype(np.float32)
  assert np.array_equal(np.asarray(leaf), want)


@pytest.mark.parametrize(
  "case", ["truncated", "legacy", "other_model", "missing_key", "wrong_shape", "wrong_preset"]
)
def test_bad_checkpoints_give_one_clear_error(tmp_path, tiny_sd, case):
  torch = _torch()
  p = tmp_path / "in.pt"
  args = ["--config", "tiny"]
  if case == "truncated":
    _save_pt(torch, tiny_sd, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    expect = "truncated|not a PyTorch zip|corrupt"
  elif case == "legacy":
    p.write_bytes(pickle.dumps({"model": {}}) + b"\x00" * 64)
    expect = "legacy|not a PyTorch zip"
  elif case == "other_model":
    _save_pt(torch, {"fc.weight": np.zeros((2, 2), np.float32)}, p)
    expect = "neither SAM2-Plus"
  elif case == "missing_key":
    sd = dict(tiny_sd)
    sd.pop("obj_ptr_tpos_proj.bias")
    _save_pt(torch, sd, p)
    expect = "obj_ptr_tpos_proj/bias"
  elif case == "wrong_shape":
    sd = dict(tiny_sd, no_obj_ptr=np.zeros((1, 7), np.float32))
    _save_pt(torch, sd, p)
    expect = "no_obj_ptr"
  else:  # a B+-shaped trunk converted with --config l
    sd = {
      "image_encoder.trunk.patch_embed.proj.weight": np.zeros((112, 3, 7, 7), np.float32),
      "sam_unified_decoder.iou_token.weight": np.zeros((1, 256), np.float32),
      "memory_attention_mask.norm.weight": np.zeros((256,), np.float32),
    }
    sd.update(
      {f"image_encoder.trunk.blocks.{i}.norm1.weight": np.zeros(112, np.float32) for i in range(24)}
    )
    _save_pt(torch, sd, p)
    args = ["--config", "l"]
    expect = "looks like preset 'b\\+'"
  r = _run(p, tmp_path / "out", *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  import re

  assert re.search(expect, r.stderr), r.stderr
  assert not (tmp_path / "out").exists()
  assert not [x for x in os.listdir(tmp_path) if x.startswith("out.")]


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_sam2_style_checkpoint_converts_and_runs_all_tasks(tmp_path, tiny_sd):
  torch = _torch()
  import sam2pp_jax

  _save_pt(torch, _sam2_style(tiny_sd), tmp_path / "sam2.pt")
  r = _run(tmp_path / "sam2.pt", tmp_path / "conv", "--config", "tiny", "--seed", "5")
  assert r.returncode == 0, r.stderr
  rep = json.load(open(tmp_path / "conv" / "conversion_report.json"))
  assert rep["source_kind"] == "sam2"
  assert rep["fresh_init_keys"] and all("box_head" in k for k in rep["fresh_init_keys"])
  cfg, params = sam2pp_jax.load_model(tmp_path / "conv")
  # shared modules were replicated per task, mask-head weights copied into each head
  for t in ("point", "box"):
    np.testing.assert_array_equal(
      params[f"memory_attention_{t}"]["layers_0"]["linear1"]["kernel"],
      params["memory_attention_mask"]["layers_0"]["linear1"]["kernel"],
    )
    np.testing.assert_array_equal(
      params["sam_unified_decoder"][f"conv_s0_{t}"]["kernel"],
      params["sam_unified_decoder"]["conv_s0_mask"]["kernel"],
    )
  _assert_every_task_runs(build_model(cfg), params)


def _assert_every_task_runs(model, params):
  """Encoder + heads of every task give finite masks (and boxes) on a random frame."""
  s = model.image_size
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, s, s, 3)), jnp.float32)
  encode = jax.jit(
    lambda p, x, task: model.apply({"params": p}, x, task=task, method="encode_image"),
    static_argnums=2,
  )
  for task in TASKS:
    f = encode(params, x, task)
    o = model.apply(
      {"params": params},
      f["vision"],
      f["s0"],
      f["s1"],
      task=task,
      multimask_output=True,
      method="sam_heads",
    )
    assert np.all(np.isfinite(np.asarray(o["high_res_masks"]))), task
    if task == "box":
      assert np.all(np.isfinite(np.asarray(o["boxes"]))), task


def _manifest(name):
  from sam2pp_jax.parity.fixture import parity_dir

  d = parity_dir()
  if d is None:
    pytest.skip("parity manifests not found (set $SAM2PP_PARITY_DIR)")
  if name == "bplus":
    return {
      e["key"]: e["shape"] for e in json.loads((d / "manifest_bplus.json").read_text())["keys"]
    }
  m = json.loads((d / "manifest_sam2.json").read_text())["models"][name]
  return {e["key"]: e["shape"] for e in m["keys"]}


@pytest.mark.slow
def test_bplus_release_layout_round_trip_without_torch(tmp_path):
  torch = _torch()
  sd = det_state_dict(_manifest("bplus"), 0)
  _save_pt(torch, sd, tmp_path / "b.pt")
  r = _run(tmp_path / "b.pt", tmp_path / "conv", block_torch=True)
  assert r.returncode == 0, r.stderr
  assert json.load(open(tmp_path / "conv" / "conversion_report.json"))["preset"] == "b+"
  r = _run("--to-torch", tmp_path / "conv", tmp_path / "back.pt")
  assert r.returncode == 0, r.stderr
  back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
  assert list(back) == list(sd) or set(back) == set(sd)
  for k, v in sd.items():
    assert np.array_equal(back[k].numpy(), v), k


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam2.1_t", "sam2_bplus"])
def test_meta_sam2_manifests_convert(tmp_path, name):
  torch = _torch()
  _save_pt(torch, det_state_dict(_manifest(name), 0), tmp_path / "m.pt")
  r = _run(tmp_path / "m.pt", tmp_path / "conv")
  assert r.returncode == 0, r.stderr
  rep = json.load(open(tmp_path / "conv" / "conversion_report.json"))
  assert rep["source_kind"] == "sam2"
  extra = {k for k in rep["fresh_init_keys"] if "box_head" not in k}
  assert extra == (
    {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"}
    if name == "sam2_bplus"
    else set()
  )
  if name != "sam2.1_t":
    return
  import sam2pp_jax

  cfg, params = sam2pp_jax.load_model(tmp_path / "conv")
  _assert_every_task_runs(build_model(cfg), params)
