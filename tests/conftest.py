"""Shared test setup: float32 parity precision and access to the reference fixtures."""

import json
import os
import pathlib
import sys

_USER_XLA_FLAGS = "XLA_FLAGS" in os.environ  # a caller's own flags are kept as they are
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from sam2pp_jax.model.presets import TASKS  # noqa: E402
from sam2pp_jax.model.random_params import random_params  # noqa: E402
from sam2pp_jax.model.sam2pp import build_model  # noqa: E402
from sam2pp_jax.parity.fixture import load_fixture, parity_dir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent  # the repository root
SHARED = REPO.parent / "shared"  # ../shared beside the clone

DEV_FIXTURES = {t: f"dev_small_seed0_{t}.npz" for t in TASKS}
FAST_SUITE_XLA_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  """The default (not-slow) suite compiles hundreds of small programs and runs each a few times:
  LLVM -O0 cuts its XLA compile time by ~40 % (suite 1100 -> 860 s on 2 cores). Numerics move
  by float32 rounding only (parity tolerances are unchanged and still hold). The slow stage,
  `make parity`, the CLIs and a caller's own XLA_FLAGS keep XLA's default optimisation."""
  if _USER_XLA_FLAGS or (config.option.markexpr or "").strip() != "not slow":
    return
  from jax._src import xla_bridge

  if xla_bridge.backends_are_initialized():  # XLA reads its flags once, at backend start
    raise RuntimeError("conftest: a JAX backend started before pytest_configure; XLA_FLAGS is late")
  os.environ["XLA_FLAGS"] += " " + FAST_SUITE_XLA_FLAG


def get_fixture(task: str):
  """The dev fixture of a task, or a pytest skip naming why it is unavailable."""
  d = parity_dir()
  if d is None:
    pytest.skip("parity fixtures not found: set $SAM2PP_PARITY_DIR or place ../shared/parity")
  p = d / DEV_FIXTURES[task]
  if not p.exists():
    pytest.skip(f"parity fixture {p} is absent")
  return load_fixture(p)


def assert_close(name, got, ref, rel=2e-4):
  """The project's parity rule: max|got-ref| <= rel * max(1, max|ref|)."""
  import numpy as np

  got = np.asarray(got, np.float64)
  ref = np.asarray(ref, np.float64)
  assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
  err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
  tol = rel * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
  assert err <= tol, f"{name}: max abs err {err:.3g} > tol {tol:.3g}"
  return err


_E2E_ROWS = {}
BF16_MEMORY = "maskmem_features_bf16"


def e2e_rows(path: str, task: str):
  """Rows of one tracking path ("scan" | "predictor") vs a dev fixture's outputs/* (cached)."""
  from sam2pp_jax.parity.end_to_end import PATHS, path_rows

  if (path, task) not in _E2E_ROWS:
    fx = get_fixture(task)
    _E2E_ROWS[path, task] = path_rows(fx, PATHS[path](fx), path)
  return _E2E_ROWS[path, task]


def assert_rows_ok(rows, bf16_memory: bool):
  """Every row of the selected group (bf16 stored memory, or everything else) is ok."""
  rows = [r for r in rows if (BF16_MEMORY in r.name) == bf16_memory]
  assert rows if bf16_memory else len(rows) >= 5
  bad = [r.line() for r in rows if r.status != "ok"]
  assert not bad, "\n".join(bad)


def tiny_with_objects_present(seed: int = 0):
  """The tiny model with `random_params` whose object-score head judges objects present
  (logit ~ +3), so tracked masks are live logits rather than the absent-object constant."""
  model = build_model("tiny")
  params = random_params(model, seed)
  head = params["sam_unified_decoder"]["pred_obj_score_head"]["layers_2"]
  head["bias"] = head["bias"] + 3.0
  return model, params


def bplus_manifest() -> dict:
  """{reference key: shape} of the released SAM2-Plus B+ checkpoint (parity/manifest_bplus.json);
  skips when the shared parity folder is absent."""
  d = parity_dir()
  if d is None or not (d / "manifest_bplus.json").exists():
    pytest.skip("manifest_bplus.json not found (set $SAM2PP_PARITY_DIR)")
  m = json.loads((d / "manifest_bplus.json").read_text())
  return {e["key"]: tuple(e["shape"]) for e in m["keys"]}


def train_command(workdir, *extra, recipe: str = "test") -> list:
  """`python train.py` on a recipe of configs/train.py, quiet, in a subprocess-ready argv."""
  cfg = os.path.join(REPO, "configs", "train.py") + f":{recipe}"
  return [sys.executable, os.path.join(REPO, "train.py"), "--config", cfg] + [
    "--workdir",
    str(workdir),
    "--quiet",
    *extra,
  ]


def train_env(devices=None) -> dict:
  """This environment on CPU with `devices` fake host devices (none: the flag removed)."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  return env
