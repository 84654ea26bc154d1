"""The grain input pipeline (per-clip map, batch, thread / process prefetch) gives make_batch's
batches whatever its layout, its state is the step, and train() fetches metrics on log steps
only and resumes on the same data (its loop run with a stand-in state and step: compiling the
model's init and step would take minutes)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_data import small_cfg

from sam2pp_jax.train import data as D
from sam2pp_jax.train import trainer
from sam2pp_jax.train.recipes import get_train_config

MIXED = (0.3, 0.3, 0.4)


def _assert_batches_equal(a, b):
  for k in D.CLIP_KEYS:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_stream(cfg, seed, start, n, **proc):
  """n steps of the iterator from `start` are make_batch's batches of those steps' tasks."""
  it = D.make_train_iterator(cfg, seed, start_step=start, **proc)
  try:
    for step in range(start, start + n):
      task, batch = next(it)
      assert task == D.task_for_step(seed, step, D.task_probs_at(cfg, step))
      _assert_batches_equal(batch, D.make_batch(seed, step, task, cfg, **proc))
    assert it.get_state() == {"next_step": start + n}
  finally:
    it.close()


@pytest.mark.parametrize("threads,prefetch", [(0, 0), (2, 3)])
def test_pipeline_gives_make_batch_batches(threads, prefetch):
  cfg = small_cfg(task_probs=MIXED, num_threads=threads, prefetch_buffer_size=prefetch)
  _check_stream(cfg, seed=5, start=2, n=4)
  # multi-host: each process builds only its block of clips; together they are the batch
  for i in range(2):
    _check_stream(cfg, seed=5, start=3, n=2, process_index=i, process_count=2)


def test_worker_processes_give_the_same_batches():
  cfg = small_cfg(task_probs=MIXED, num_workers=2, worker_buffer_size=1)
  _check_stream(cfg, seed=1, start=4, n=3)


def test_state_is_the_step_and_restores_across_layouts():
  threaded = small_cfg(task_probs=MIXED, num_threads=2, prefetch_buffer_size=4)
  serial = small_cfg(task_probs=MIXED, num_threads=0, prefetch_buffer_size=0)
  it = D.make_train_iterator(threaded, seed=2)
  for _ in range(3):
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(2)]
  it.close()
  assert state == {"next_step": 3} and json.loads(json.dumps(state)) == state
  # a checkpoint of grain's own state (before TrainIterator: an iterator from step 0) reads too
  for restored in (state, {"next_index": 3}):
    fresh = D.make_train_iterator(serial, seed=2)
    fresh.set_state(restored)
    for (ta, ba), (tb, bb) in zip(after, [next(fresh) for _ in range(2)]):
      assert ta == tb
      _assert_batches_equal(ba, bb)
    fresh.close()
  for bad in ({}, {"next_step": -1}, {"next_step": "3"}, None):
    with pytest.raises(ValueError, match="state"):
      fresh.set_state(bad)


@pytest.mark.parametrize(
  "fields,match",
  [
    (dict(num_threads=2, prefetch_buffer_size=0), "both must be > 0"),
    (dict(num_threads=0, prefetch_buffer_size=2), "both must be > 0"),
    (dict(num_threads=-1), "num_threads"),
    (dict(num_workers=-1), "num_workers"),
    (dict(num_workers=1, worker_buffer_size=0), "worker_buffer_size"),
  ],
)
def test_bad_pipeline_fields_are_refused(fields, match):
  cfg = small_cfg(**fields)
  with pytest.raises(ValueError, match=match):
    D.make_train_iterator(cfg, seed=0)


def test_defaults_build_ahead():
  d = D.default_data_config()
  assert d.num_threads > 0 and d.prefetch_buffer_size >= d.num_threads
  D.check_data_config(d)


# ------------------------------------------------------------------------------ train() loop
def _stand_in_state(config, model, key):
  """(state, tx, info) of a 4-number "model": the loop, not the model, is under test."""
  state = trainer.TrainState(
    step=jnp.int32(0), params={"w": jnp.zeros(4)}, opt_state={}, rng=jax.random.key_data(key)
  )
  return state, None, None


def _stand_in_step(model, tx, config, task, mesh, state_sh):
  """A jitted step without the model: its "loss" reads the batch, so the log shows the data."""

  def step(state, batch):
    loss = batch["frames"].mean() + 1e-3 * batch["masks"].sum() + state.step
    return state.replace(step=state.step + 1), {"core_loss": loss, "grad_norm": loss * 0}

  return jax.jit(step)


def _config(total, **kw):
  c = get_train_config("test")
  c.data.global_batch = jax.device_count()  # conftest's 8 CPU devices
  c.data.task_probs = MIXED
  c.total_steps = total
  c.optim.total_steps = total
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["task"], r["core_loss"]) for r in map(json.loads, f)]


def test_train_fetches_metrics_on_log_steps_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setattr(trainer, "init_state", _stand_in_state)
  monkeypatch.setattr(trainer, "make_train_step", _stand_in_step)
  monkeypatch.setattr(trainer, "export_inference_params", lambda params, lora: params)
  monkeypatch.setattr(trainer, "save_model", lambda *args, **kw: None)
  fetched = []
  device_get = jax.device_get

  def counting(x):
    if isinstance(x, dict) and "core_loss" in x:
      fetched.append(x)
    return device_get(x)

  monkeypatch.setattr(jax, "device_get", counting)
  seen = []
  ref = trainer.train(
    _config(7, log_every=3, ckpt_every=100), str(tmp_path / "ref"), quiet=True, on_step=seen.append
  )
  assert seen == list(range(1, 8))
  assert [s for s, _, _ in _logged(tmp_path / "ref")] == [3, 6, 7]
  assert len(fetched) == 4  # steps 3, 6, 7 and the summary's last metrics
  assert ref["last_metrics"]["core_loss"] == _logged(tmp_path / "ref")[-1][2]
  assert 0.0 <= ref["data_wait_seconds"] <= ref["train_seconds"]

  # a stopped run resumes on the same data: every logged loss (data + step) matches
  work = str(tmp_path / "resumed")
  trainer.train(_config(4, log_every=1, ckpt_every=2), work, quiet=True)
  trainer.train(_config(7, log_every=1, ckpt_every=2), work, quiet=True)
  straight = str(tmp_path / "straight")
  trainer.train(_config(7, log_every=1, ckpt_every=2), straight, quiet=True)
  assert _logged(work) == _logged(straight)
  assert [s for s, _, _ in _logged(work)] == list(range(1, 8))
