"""Input pipeline: training steps/s and the fraction of each step spent waiting for data, for the
old serial loop and the grain pipeline, in one run (ratios against the baseline of this run).

  python bench/train_input.py [--config demo] [--steps 60] [--warmup 5] [--start-step 0]
                              [--frames T] [--threads N] [--prefetch N] [--workers N] [--rounds 1]
                              [--variants baseline,lazy_fetch,prefetch,pipeline] [--json FILE]
  python bench/train_input.py --smoke     # the test config at 1 frame, 3 steps (~1-2 min)

Variants (data path x when the loop reads metrics), all on one compiled step per task and the
same steps (each variant's iterator starts at --start-step):
  baseline    num_threads 0, no prefetch, jax.device_get(metrics) every step (train() before);
  lazy_fetch  the same data path, metrics fetched on log steps only, host <= 1 step ahead;
  prefetch    grain threads / workers building batches ahead, metrics fetched every step;
  pipeline    both: what train() now does (config.data's pipeline fields, or the flags).
Per variant: --warmup untimed steps (fills the prefetch buffer, starts workers), then --steps
timed ones; steps/s = steps / wall time (ending when the last step is done), data wait = time
blocked in next(iterator) / wall time, cpu s/step = the process's CPU time (user + system,
workers included) per step. "vs baseline" is the median over rounds of steps/s over the same
round's baseline. The timed loop mirrors train()'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
from _smoke import parse_args

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs.train import get_config  # noqa: E402
from sam2pp_jax.model.sam2pp import build_model  # noqa: E402
from sam2pp_jax.train import data as train_data  # noqa: E402
from sam2pp_jax.train import trainer  # noqa: E402

# --smoke: the test config at 1 frame (compiling its step is most of the smoke run's time)
SMOKE = {"config": "test", "frames": 1, "steps": 3, "warmup": 1}
VARIANTS = ("baseline", "lazy_fetch", "prefetch", "pipeline")


def _variant_data(cfg_data, variant: str, a):
  """config.data of a variant: the serial data path, or the pipeline (flags over config)."""
  d = cfg_data.copy_and_resolve_references()
  if variant in ("baseline", "lazy_fetch"):
    d.num_threads, d.prefetch_buffer_size, d.num_workers = 0, 0, 0
  else:
    for flag, field in (
      ("threads", "num_threads"),
      ("prefetch", "prefetch_buffer_size"),
      ("workers", "num_workers"),
    ):
      if getattr(a, flag) is not None:
        d[field] = getattr(a, flag)
  return d


def run_variant(variant, cfg, a, state, steps, mesh):
  """(state, result dict) of --warmup then --steps training steps of one variant."""
  data_cfg = _variant_data(cfg.data, variant, a)
  lazy = variant in ("lazy_fetch", "pipeline")
  log_every = int(cfg.log_every)
  it = train_data.make_train_iterator(data_cfg, int(cfg.seed), start_step=a.start_step)
  try:
    for _ in range(a.warmup):
      task, local = next(it)
      state, metrics = steps[task](state, trainer.global_batch(local, mesh))
      jax.device_get(metrics)
    wait, previous = 0.0, None
    cpu_start = sum(os.times()[:4])  # this process's (and its workers') CPU seconds
    t_start = time.perf_counter()
    for i in range(a.steps):
      t0 = time.perf_counter()
      task, local = next(it)
      wait += time.perf_counter() - t0
      state, metrics = steps[task](state, trainer.global_batch(local, mesh))
      if lazy:  # train(): wait for the previous step only, fetch on log steps
        jax.block_until_ready(previous if previous is not None else metrics)
        previous = metrics
        if (i + 1) % log_every == 0:
          jax.device_get(metrics)
      else:
        jax.device_get(metrics)
    jax.block_until_ready((state, metrics))
    wall = time.perf_counter() - t_start
    cpu = sum(os.times()[:4]) - cpu_start
  finally:
    it.close()
  res = {
    "variant": variant,
    "num_threads": int(data_cfg.num_threads),
    "prefetch_buffer_size": int(data_cfg.prefetch_buffer_size),
    "num_workers": int(data_cfg.num_workers),
    "fetch": "log steps" if lazy else "every step",
    "steps": a.steps,
    "wall_s": wall,
    "steps_per_s": a.steps / wall,
    "data_wait_fraction": wait / wall,
    "cpu_s_per_step": cpu / a.steps,
  }
  return state, res


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="demo", help="a training recipe (configs/train.py)")
  ap.add_argument("--frames", type=int, default=None, help="clip length (config's by default)")
  ap.add_argument("--steps", type=int, default=60, help="timed steps per variant and round")
  ap.add_argument("--warmup", type=int, default=5, help="untimed steps per variant, after compile")
  ap.add_argument("--start-step", type=int, default=0, help="the first data step of each variant")
  ap.add_argument("--threads", type=int, default=None, help="pipeline num_threads (config's)")
  ap.add_argument("--prefetch", type=int, default=None, help="pipeline prefetch_buffer_size")
  ap.add_argument("--workers", type=int, default=None, help="pipeline num_workers (processes)")
  ap.add_argument("--rounds", type=int, default=1, help="repeat all variants; medians reported")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--json", default=None, help="write every number to this file")
  a = parse_args(ap, argv, SMOKE)
  variants = [v for v in a.variants.split(",") if v]
  bad = sorted(set(variants) - set(VARIANTS))
  if bad or "baseline" not in variants:
    ap.error(f"--variants must include baseline and name only {VARIANTS}, got {a.variants!r}")
  if a.steps < 1 or a.warmup < 0 or a.rounds < 1 or a.start_step < 0:
    ap.error("--steps and --rounds must be >= 1, --warmup and --start-step >= 0")

  cfg = get_config(a.config)
  if a.frames is not None:
    cfg.data.num_frames = a.frames
  for v in variants:  # bad pipeline flags fail before the compile
    train_data.check_data_config(_variant_data(cfg.data, v, a))
  mesh = trainer.make_mesh(cfg.mesh)
  model = build_model(cfg.model)
  state, tx, _ = trainer.init_state(cfg, model, jax.random.key(int(cfg.seed)))
  state_sh = trainer.state_shardings(state, mesh, cfg.mesh)
  state = jax.device_put(state, state_sh)

  # one compiled step per task of the window, compiled (and run once) before any timing
  window = range(a.start_step, a.start_step + a.warmup + a.steps)
  tasks = sorted(
    {
      train_data.task_for_step(int(cfg.seed), s, train_data.task_probs_at(cfg.data, s))
      for s in window
    }
  )
  steps = {}
  t0 = time.perf_counter()
  for task in tasks:
    steps[task] = trainer.make_train_step(model, tx, cfg, task, mesh, state_sh)
    batch = train_data.make_batch(int(cfg.seed), a.start_step, task, cfg.data)
    state, metrics = steps[task](state, trainer.global_batch(batch, mesh))
    jax.device_get(metrics)
  compile_s = time.perf_counter() - t0
  print(
    f"config {a.config} ({cfg.model.preset} at {cfg.data.image_size}px, global batch "
    f"{cfg.data.global_batch} x {cfg.data.num_frames} frames), tasks {tasks}, "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs; "
    f"compile {compile_s:.1f} s; {a.warmup} warm-up + {a.steps} timed steps per variant, "
    f"{a.rounds} round(s)",
    flush=True,
  )

  runs = []
  for r in range(a.rounds):
    for v in variants:
      state, res = run_variant(v, cfg, a, state, steps, mesh)
      res["round"] = r
      runs.append(res)
      print(
        f"  round {r} {v:<10} {res['steps_per_s']:6.3f} steps/s  "
        f"data wait {100 * res['data_wait_fraction']:5.1f}%",
        flush=True,
      )

  def median(v, key):
    return statistics.median(x[key] for x in runs if x["variant"] == v)

  def paired(v):
    """Per round: this variant's steps/s over the baseline's of the same round (the machine's
    load drifts between rounds; within a round the variants run back to back)."""
    base = {x["round"]: x["steps_per_s"] for x in runs if x["variant"] == "baseline"}
    return [x["steps_per_s"] / base[x["round"]] for x in runs if x["variant"] == v]

  print(
    f"\n{'variant':<11} {'threads':>7} {'prefetch':>8} {'workers':>7} {'fetch':>10} "
    f"{'steps/s':>8} {'s/step':>7} {'cpu s/step':>10} {'data wait':>9} {'vs baseline':>11} "
    "(min-max over rounds)"
  )
  summary = []
  for v in variants:
    first = next(x for x in runs if x["variant"] == v)
    sps, wait = median(v, "steps_per_s"), median(v, "data_wait_fraction")
    cpu, ratios = median(v, "cpu_s_per_step"), paired(v)
    summary.append(
      {
        **first,
        "steps_per_s": sps,
        "data_wait_fraction": wait,
        "cpu_s_per_step": cpu,
        "vs_baseline": statistics.median(ratios),
        "vs_baseline_rounds": ratios,
      }
    )
    print(
      f"{v:<11} {first['num_threads']:>7} {first['prefetch_buffer_size']:>8} "
      f"{first['num_workers']:>7} {first['fetch']:>10} {sps:>8.3f} {1 / sps:>7.3f} {cpu:>10.3f} "
      f"{100 * wait:>8.1f}% {summary[-1]['vs_baseline']:>10.2f}x "
      f"({min(ratios):.2f}-{max(ratios):.2f})"
    )
  if a.smoke:
    print("(--smoke: most XLA optimisations off; the timings say nothing about speed)")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(
        {"args": vars(a), "compile_s": compile_s, "runs": runs, "summary": summary}, f, indent=1
      )


if __name__ == "__main__":
  main()
