"""train.py end to end (slow: each run compiles a train step): 8-device data parallel equals one
device on the same global batch, and a SIGKILLed run resumes to exactly the same losses."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import REPO, train_command, train_env

ROOT = str(REPO)
LOSS_KEYS = ("core_loss", "loss_mask", "loss_dice", "loss_iou", "loss_class", "loss_l1")

pytestmark = pytest.mark.slow


_cmd = train_command
_env = train_env


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(r["step"], r["task"], {k: r[k] for k in LOSS_KEYS if k in r}) for r in rows]


def _run(workdir, *extra, devices=None, timeout=1500):
  p = subprocess.run(
    _cmd(workdir, *extra), env=_env(devices), capture_output=True, text=True, timeout=timeout
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return _losses(workdir)


def test_eight_devices_match_one_device(tmp_path):
  # A small lr keeps both runs in the regime where float reduction-order differences (1e-7 at
  # step 1) are not amplified by training dynamics and discrete choices (at lr 1e-3 they grow
  # to ~1e-2 by step 14); the data-parallel program itself is what is compared.
  extra = (
    "--config.data.global_batch=8",
    "--config.total_steps=20",
    "--config.optim.base_lr=1e-5",
    "--config.optim.vision_lr=1e-5",
  )
  one = _run(tmp_path / "d1", *extra, devices=1)
  eight = _run(tmp_path / "d8", *extra, devices=8)
  assert [s for s, _, _ in one] == list(range(1, 21)) == [s for s, _, _ in eight]
  for (s, t1, l1), (_, t8, l8) in zip(one, eight):
    assert t1 == t8
    for k in l1:
      np.testing.assert_allclose(l8[k], l1[k], rtol=2e-4, atol=1e-5, err_msg=f"step {s} {k}")


def test_sigkill_then_resume_gives_the_same_losses(tmp_path):
  extra = ("--config.total_steps=12",)
  ref = _run(tmp_path / "ref", *extra)
  work = tmp_path / "killed"
  p = subprocess.Popen(
    _cmd(work, *extra), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  jsonl = work / "metrics.jsonl"
  deadline = time.time() + 1500
  try:
    while time.time() < deadline:
      if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 6:
        break
      if p.poll() is not None:
        pytest.fail("training finished before it could be killed")
      time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
  finally:
    p.wait()
  assert p.returncode == -signal.SIGKILL
  killed_at = len(jsonl.read_text().splitlines())
  assert 6 <= killed_at < 12
  resumed = _run(work, *extra)
  assert [s for s, _, _ in resumed] == list(range(1, 13))
  assert resumed == ref  # exact: same data, same PRNG, restored state bit for bit
