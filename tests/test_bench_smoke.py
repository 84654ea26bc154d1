"""Every bench/ script runs its `--smoke` mode (tiny sizes, seconds) to completion.

Only the exit status is checked: benchmarks report speed and memory as ratios against a
baseline in the same run, and timings are never asserted. Helper modules of bench/ (no
`__main__` block, e.g. `_reference.py`) are not scripts and are not run.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TIMEOUT_S = 300  # a smoke run takes seconds; this only stops a hang on a crowded machine


def _scripts():
  return sorted(
    p.name
    for p in BENCH.glob("*.py")
    if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")
  )


def _env():
  """The caller's environment minus the fake-device flag conftest.py sets for this process."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(flags)
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def test_helpers_are_not_scripts():
  assert "_reference.py" not in _scripts() and "propagate.py" in _scripts()


def test_train_input_is_a_smoke_script():
  """bench/train_input.py (input pipeline: steps/s and data wait) is collected with --smoke."""
  assert "train_input.py" in _scripts()
  assert "--smoke" in (BENCH / "train_input.py").read_text(encoding="utf-8")


# Smoke runs of a minute or more on 2 CPU cores (they compile several models or train): in the
# slow set, which CI runs after the default suite, so `make test` stays near 15 minutes.
HEAVY = {
  "memory_policies.py",
  "train_input.py",
  "train_device.py",
  "propagate.py",
  "bf16_inference.py",
  "memory.py",
  "bf16_flips.py",
  "train_memory.py",
  "app_click.py",  # tests/app/test_session.py covers its warm-up path in the default suite
  "engine_intervals.py",  # ~30 s (3 tasks compiled); tests/test_engine.py covers fill_video
}


@pytest.mark.parametrize(
  "script", [pytest.param(s, marks=pytest.mark.slow) if s in HEAVY else s for s in _scripts()]
)
def test_smoke(script):
  path = BENCH / script
  if "--smoke" not in path.read_text(encoding="utf-8"):
    pytest.skip(f"bench/{script} has no --smoke mode yet")
  r = subprocess.run(
    [sys.executable, str(path), "--smoke"],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  out = (r.stdout + r.stderr)[-4000:]
  assert r.returncode == 0, f"bench/{script} --smoke exited {r.returncode}:\n{out}"
