"""`python -m sam2pp_jax.parity live`: your checkpoint and video against the official predictor.

Fast tests (no torch): exit 2 with what to install when the reference cannot run, clear errors on
bad input, the live-fixture weights record, and the block diagnosis on a shipped fixture.
Slow tests (torch, hydra-core, ... and a SAM2-Plus checkout in $SAM2PLUS_REPO; skipped with the
reason otherwise): deterministic B+ weights on a generated video for the three tasks pass and
their exported fixtures pass `python -m sam2pp_jax.parity` (both modes) in a process where torch
cannot be imported; one perturbed memory-attention weight fails and `--blocks` names memory
attention.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import get_fixture

from sam2pp_jax.data.synthetic import generate_video
from sam2pp_jax.io.png import save_palette_png
from sam2pp_jax.parity import live, live_files, reference_run
from sam2pp_jax.parity.components import ComponentChecker
from sam2pp_jax.parity.det_init import det_state_dict
from sam2pp_jax.parity.fixture import Fixture, file_sha256, load_fixture, save_fixture
from sam2pp_jax.tracking import outputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(tmp_path, **kw):
  a = [
    "--checkpoint",
    kw.pop("checkpoint", str(tmp_path / "none.pt")),
    "--video",
    kw.pop("video", str(tmp_path)),
    "--task",
    kw.pop("task", "mask"),
    "--prompt",
    kw.pop("prompt", "1,1"),
  ]
  for k, v in kw.items():
    a += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
  return a


def test_missing_reference_dependencies_exit_2_with_the_install_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(
    reference_run, "missing_requirements", lambda: ["torch==2.13.0", "hydra-core"]
  )
  rc = live.main(_args(tmp_path, reference_repo=tmp_path))
  err = capsys.readouterr().err
  assert rc == 2
  assert "torch==2.13.0" in err and "pip install" in err and "[reference]" in err


@pytest.mark.parametrize(
  "extra, expect",
  [
    ({"frames": 1}, "--frames 1"),
    ({"save": "x.json"}, "--save"),
    ({"paths": "scan,gpu"}, "--paths"),
    ({"image_size": 250}, "multiple of 16"),
    ({}, "no such file"),  # the checkpoint
  ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, monkeypatch, extra, expect):
  monkeypatch.setattr(reference_run, "missing_requirements", lambda: [])
  repo = tmp_path / "repo"
  (repo / "sam2_plus").mkdir(parents=True)
  (repo / "sam2_plus" / "sam2_video_predictor.py").write_text("")
  rc = live.main(_args(tmp_path, reference_repo=repo, **extra))
  err = capsys.readouterr().err
  assert rc == 2 and expect in err, err
  assert "Traceback" not in err


def test_no_checkout_says_where_to_get_one(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(reference_run, "missing_requirements", lambda: [])
  monkeypatch.delenv("SAM2PLUS_REPO", raising=False)
  rc = live.main(_args(tmp_path))
  assert rc == 2 and "SAM2-Plus" in capsys.readouterr().err
  with pytest.raises(reference_run.ReferenceError, match="neither"):
    reference_run.checkout_kind(str(tmp_path))


def _mini_fixture(tmp_path, info_weights=None, embed=None):
  sd = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
  arrays = {
    "meta/info_json": np.asarray(
      json.dumps({"task": "mask", "image_size": 256, "base_seed": 0, "weights": info_weights})
    ),
    "meta/manifest_json": np.asarray(json.dumps({"a.weight": [2, 3]})),
    "meta/config_json": np.asarray(json.dumps({"hydra_overrides": []})),
  }
  if embed:
    arrays["weights/a.weight"] = sd["a.weight"]
  return save_fixture(tmp_path / "f.npz", arrays), sd


def test_live_fixture_weights_embedded_or_by_checkpoint(tmp_path):
  path, sd = _mini_fixture(tmp_path, {"kind": "embedded"}, embed=True)
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left
  np.testing.assert_array_equal(load_fixture(path).state_dict()["a.weight"], sd["a.weight"])
  ck = tmp_path / "model.pt"
  ck.write_bytes(b"not the recorded file")
  path, _ = _mini_fixture(tmp_path, {"kind": "checkpoint", "path": str(ck), "sha256": "0" * 64})
  with pytest.raises(ValueError, match="sha256"):
    load_fixture(path).state_dict()
  ck.unlink()
  with pytest.raises(ValueError, match="not there"):
    load_fixture(path).state_dict()
  assert len(file_sha256(path)) == 64
  with pytest.raises(ValueError, match=r"\.npz"):
    save_fixture(tmp_path / "f.bin", {})


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_blocks_name_memory_attention_when_its_weight_is_off():
  """The diagnosis on a shipped fixture's frame 1: clean -> no block; one memory-attention bias
  moved -> memory_attention is the first block out of tolerance (decoder and encoders still ok,
  since each is fed the reference's recorded inputs)."""
  fx = get_fixture("mask")
  chk = ComponentChecker(fx)
  model, params = chk.model, chk.params
  assert live.diagnose_blocks(fx, model, params, 1, 2e-4)["first_block"] is None
  layer = params["memory_attention_mask"]["layers_0"]["linear1"]
  layer["bias"] = layer["bias"] + 0.05
  d = live.diagnose_blocks(fx, model, params, 1, 2e-4)
  assert d["first_block"] == "memory_attention"
  failed = {r.name.split("/")[1] for r in d["rows"] if r.status == "FAIL"}
  assert failed == {"memory_attention"}, failed


# -- slow: against the real reference ---------------------------------------------------------
def _reference_or_skip():
  missing = reference_run.missing_requirements()
  if missing:
    pytest.skip(f"reference dependencies missing: {missing} ({reference_run.INSTALL_HINT})")
  repo = os.environ.get("SAM2PLUS_REPO")
  if not repo:
    pytest.skip("SAM2PLUS_REPO is not set (a checkout of github.com/MCG-NJU/SAM2-Plus)")
  try:
    if reference_run.checkout_kind(repo) != reference_run.SAM2PLUS:
      pytest.skip(f"SAM2PLUS_REPO={repo} is not a SAM2-Plus checkout")
  except reference_run.ReferenceError as e:
    pytest.skip(str(e))
  return repo


@pytest.fixture(scope="module")
def bplus_case(tmp_path_factory):
  """Deterministic B+ weights as a .pt (the released key set) and a generated 240x320 clip."""
  _reference_or_skip()
  import torch

  d = tmp_path_factory.mktemp("live_bplus")
  man = json.load(open(os.path.join(ROOT, "..", "shared", "parity", "manifest_bplus.json")))
  sd = det_state_dict({e["key"]: e["shape"] for e in man["keys"]}, 0)
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, d / "bplus_det0.pt")
  del sd
  v = generate_video(7, num_frames=3, height=240, width=320, num_objects=1)
  (d / "frames").mkdir()
  for t, f in enumerate(v["frames"]):
    cv2.imwrite(str(d / "frames" / f"{t:05d}.jpg"), f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
  m = v["masks"][0] == 1
  save_palette_png(str(d / "prompt.png"), m.astype(np.uint8))
  ys, xs = np.nonzero(m)
  prompts = {
    "mask": str(d / "prompt.png"),
    "box": f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}",
    "point": f"{xs.mean():.1f},{ys.mean():.1f}",
  }
  return d, prompts


def _run_live(d, task, prompt, *extra):
  """`python -m sam2pp_jax.parity live ...` in a subprocess (the b+ compiles and the reference
  leave with it, so the three tasks do not pile up in the test process's memory)."""
  cmd = [
    sys.executable,
    "-m",
    "sam2pp_jax.parity",
    "live",
    "--checkpoint",
    str(d / "bplus_det0.pt"),
    "--video",
    str(d / "frames"),
    "--task",
    task,
    "--prompt",
    prompt,
    "--reference-repo",
    os.environ["SAM2PLUS_REPO"],
    *extra,
  ]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  print(r.stdout[-6000:], r.stderr[-3000:])
  return r.returncode


NO_TORCH = (
  "import sys; sys.modules['torch'] = None; from sam2pp_jax.parity.__main__ import main; "
  "sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mask", "box", "point"])
def test_live_bplus_passes_and_its_fixture_checks_without_torch(bplus_case, task, tmp_path):
  d, prompts = bplus_case
  rep, fx_path = tmp_path / "r.json", tmp_path / f"{task}.npz"
  rc = _run_live(d, task, prompts[task], "--report", str(rep), "--save", str(fx_path))
  r = json.loads(rep.read_text())
  assert rc == 0 and r["ok"], json.dumps(r["paths"], indent=1)[:4000]
  assert r["image_size"] == 1024 and r["preprocessing"]["ok"]
  for p in ("predictor", "scan"):
    frames = r["paths"][p]["frames"]
    assert len(frames) == 3 and all(f["reference_score"] > 0 for f in frames)  # object present
    assert r["files"][p]["ok"]
  for mode in (["--components"], []):
    out = subprocess.run(
      [sys.executable, "-c", NO_TORCH, *mode, str(fx_path)],
      capture_output=True,
      text=True,
      cwd=ROOT,
    )
    assert out.returncode == 0 and "PARITY OK" in out.stdout, (
      out.stdout[-3000:] + out.stderr[-2000:]
    )
  fx: Fixture = load_fixture(fx_path)
  assert fx.info["weights"]["kind"] == "checkpoint"  # B+ is too large to embed by default


@pytest.mark.slow
def test_live_perturbed_memory_attention_fails_and_blocks_name_it(bplus_case, tmp_path):
  d, prompts = bplus_case
  rep = tmp_path / "r.json"
  rc = _run_live(
    d,
    "mask",
    prompts["mask"],
    "--perturb",
    "memory_attention_mask.layers.0.linear1.bias=0.05",
    "--blocks",
    "--paths",
    "predictor",
    "--report",
    str(rep),
  )
  r = json.loads(rep.read_text())
  assert rc == 1 and not r["ok"]
  assert r["first_diverging_frame"] == 1  # frame 0 reads no memory
  assert r["blocks"]["first_block"] == "memory_attention"


def test_result_files_differ_only_where_float_noise_decides(tmp_path):
  """Mask PNGs may differ only at pixels whose reference logit is within the logit tolerance of 0,
  box integers only by one at reference values within the box tolerance of an integer."""
  logits = np.full((2, 6, 8), -5.0, np.float32)
  logits[:, 2:4, 2:6] = 5.0
  logits[1, 0, 0] = 1e-4  # a float-noise pixel: the reference says object, ours may not
  ref = {"video_res_mask_logits": logits}
  names = ["a.jpg", "b.jpg"]
  rdir, odir = tmp_path / "r", tmp_path / "o"

  def write(d, lg):
    ids = [outputs.ids_from_logits(m[None], [1]) for m in lg]
    return {"masks": outputs.write_mask_dir(d, names, ids)}

  r = write(rdir, logits)
  noisy = logits.copy()
  noisy[1, 0, 0] = -1e-4
  assert live_files.compare_files("mask", r, write(odir, noisy), ref, 2e-3, 0.05)["ok"]
  wrong = noisy.copy()
  wrong[0, 2, 2] = -5.0
  c = live_files.compare_files("mask", r, write(tmp_path / "o2", wrong), ref, 2e-3, 0.05)
  assert not c["ok"] and "1 beyond" in c["detail"]

  boxes = np.asarray([[10.0, 20.0, 30.99, 40.5], [1.5, 2.5, 3.5, 4.5]], np.float32)
  rb, ob = tmp_path / "r.txt", tmp_path / "o.txt"
  outputs.write_box_txt(rb, outputs.xyxy_to_xywh_int(boxes))
  near = boxes.copy()
  near[0, 2] = 31.01  # w = 21.01 vs 20.99: reference value within 0.05 of 21
  outputs.write_box_txt(ob, outputs.xyxy_to_xywh_int(near))
  ref_b = {"pred_box_xyxy": boxes}
  assert live_files.compare_files("box", {"boxes": rb}, {"boxes": ob}, ref_b, 2e-3, 0.05)["ok"]
  far = boxes.copy()
  far[1, 0] = 2.6  # x = 2 vs 1: the reference's 1.5 is half a pixel from an integer
  outputs.write_box_txt(ob, outputs.xyxy_to_xywh_int(far))
  assert not live_files.compare_files("box", {"boxes": rb}, {"boxes": ob}, ref_b, 2e-3, 0.05)["ok"]
