"""Per-device memory (XLA's AOT estimate) of one training step, per task, compute dtype and
remat policy; optionally measured step time on configs small enough to run here.

  python bench/train_memory.py [--config reference] [--task box|mask|point|all]
                               [--dtype bfloat16[,float32]] [--remat frame[,none,block,...]]
                               [--batch 1] [--frames 8] [--devices N] [--no-compile]
                               [--time-steps N] [--json FILE]
  python bench/train_memory.py --smoke     # seconds: the demo config (tiny), 2 frames, lowering

Everything is abstract (jax.eval_shape for params and optimizer state, ShapeDtypeStructs for
the batch), so the b+ model at 1024 is lowered and compiled without allocating its weights. Each
row prints compile time and `compiled.memory_analysis()` (arguments + outputs - aliased +
temporaries = the per-device peak estimate). Ratios are against the first row of the same run
(the baseline). XLA's `cost_analysis()` FLOPs are not shown: they count a loop body once, so
they cannot compare a policy that loops over frames with one that batches them.
--time-steps N also initialises the state, runs N steps on the config's own data and reports
seconds per step (after one warm-up step), so only for configs that run on this machine.
The estimate comes from the backend that compiles it (CPU here): GPU/TPU buffer assignment
differs, so bench/train_device.py measures the peak on a device when one is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _smoke import parse_args

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sam2pp_jax.model.presets import TASKS  # noqa: E402
from sam2pp_jax.train.forward import REMAT_POLICIES  # noqa: E402

# --smoke defaults: lowering only (compiling even the tiny training step takes ~1 CPU-minute),
# the two named-policy wrappers (none and frame are plain jax.checkpoint or nothing)
SMOKE = {
  "config": "demo",
  "frames": 2,
  "no_compile": True,
  "remat": "block,dots_saveable",
  "dtype": "bfloat16",
}
GIB = 1024**3


def _list(text: str, allowed, what: str) -> list:
  items = [s.strip() for s in text.split(",") if s.strip()]
  bad = [s for s in items if s not in allowed]
  if bad or not items:
    raise SystemExit(f"train_memory: --{what} {text!r}: use a comma list of {tuple(allowed)}")
  return items


def _abstract_batch(b, t, o, s):
  import jax
  import jax.numpy as jnp

  sds = jax.ShapeDtypeStruct
  return {
    "frames": sds((b, t, s, s, 3), jnp.float32),
    "masks": sds((b, t, o, s, s), bool),
    "boxes": sds((b, t, o, 4), jnp.float32),
    "points": sds((b, t, o, 2), jnp.float32),
    "visible": sds((b, t, o), bool),
    "obj_valid": sds((b, o), bool),
  }


def measure(cfg, task: str, *, compile_: bool, time_steps: int) -> dict:
  """One row: lowering (and compile, memory, FLOPs, step time) of `task`'s step under cfg."""
  import jax
  import numpy as np

  from sam2pp_jax.train import data as train_data
  from sam2pp_jax.train import trainer

  mesh = trainer.make_mesh(cfg.mesh)
  model = trainer.build_train_model(cfg)
  s, b, t = int(cfg.model.image_size), int(cfg.data.global_batch), int(cfg.data.num_frames)
  o = 1 if task == "box" else int(cfg.data.max_objects)
  holder = {}

  def make_state(key):
    st, tx, _ = trainer.init_state(cfg, model, key)
    holder["tx"] = tx
    return st

  t0 = time.time()
  abstract_state = jax.eval_shape(make_state, jax.random.key(0))
  state_sh = trainer.state_shardings(abstract_state, mesh, cfg.mesh)
  step = trainer.make_train_step(model, holder["tx"], cfg, task, mesh, state_sh)
  lowered = step.lower(abstract_state, _abstract_batch(b, t, o, s))
  row = {
    "task": task,
    "dtype": str(cfg.compute_dtype),
    "remat": str(cfg.prompts.remat),
    "lower_s": time.time() - t0,
    "devices": mesh.size,
    "params_m": sum(x.size for x in jax.tree.leaves(abstract_state.params)) / 1e6,
  }
  if not compile_:
    return row
  t0 = time.time()
  compiled = lowered.compile()
  row["compile_s"] = time.time() - t0
  m = compiled.memory_analysis()
  if m is not None:
    row.update(
      arguments_gib=m.argument_size_in_bytes / GIB,
      temporaries_gib=m.temp_size_in_bytes / GIB,
      peak_gib=(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
      )
      / GIB,
    )
  if time_steps > 0:
    state, _, _ = trainer.init_state(cfg, model, jax.random.key(int(cfg.seed)))
    state = jax.device_put(state, state_sh)
    data_cfg = cfg.data.copy_and_resolve_references()
    with data_cfg.unlocked():  # every batch of this task
      data_cfg.task_probs = tuple(float(x == task) for x in TASKS)
      data_cfg.task_stages = ()
    it = train_data.make_train_iterator(data_cfg, int(cfg.seed), start_step=0)
    try:
      batches = [trainer.global_batch(next(it)[1], mesh) for _ in range(time_steps + 1)]
    finally:
      it.close()
    state, metrics = compiled(state, batches[0])  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.time()
    for bt in batches[1:]:
      state, metrics = compiled(state, bt)
    jax.block_until_ready(metrics)
    row["step_s"] = (time.time() - t0) / time_steps
    row["loss"] = float(np.asarray(jax.device_get(metrics["core_loss"])))
  return row


def _print_row(row: dict, base: dict | None) -> None:
  def ratio(k):
    if base is None or k not in row or not base.get(k):
      return ""
    return f" ({row[k] / base[k]:.2f}x)"

  parts = [f"{row['task']:<5} {row['dtype']:<8} remat {row['remat']:<13}"]
  parts.append(f"lower {row['lower_s']:6.1f} s")
  if "compile_s" in row:
    parts.append(f"compile {row['compile_s']:6.1f} s")
  if "peak_gib" in row:
    parts.append(f"peak {row['peak_gib']:8.3f} GiB{ratio('peak_gib')}")
    parts.append(f"(args {row['arguments_gib']:.3f}, temp {row['temporaries_gib']:.3f})")
  if "step_s" in row:
    parts.append(f"step {row['step_s']:.3f} s{ratio('step_s')}")
  print("  ".join(parts), flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="reference")
  ap.add_argument("--task", default="box", help="box, mask, point or all (comma list)")
  ap.add_argument("--batch", type=int, default=1, help="global batch (clips)")
  ap.add_argument("--frames", type=int, default=8)
  ap.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS)")
  ap.add_argument("--no-compile", action="store_true", help="stop after lowering")
  ap.add_argument("--dtype", default=None, help="compute_dtype(s): float32, bfloat16 (comma list)")
  ap.add_argument("--remat", default=None, help=f"remat policies (comma list of {REMAT_POLICIES})")
  ap.add_argument("--time-steps", type=int, default=0, help="also run N steps and time them")
  ap.add_argument("--json", default=None, help="write the rows to this JSON file")
  a = parse_args(ap, argv, SMOKE)
  if a.devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.devices}"
    )
  from configs.train import get_config

  tasks = list(TASKS) if a.task == "all" else _list(a.task, TASKS, "task")
  base_cfg = get_config(a.config)
  dtypes = _list(a.dtype or str(base_cfg.compute_dtype), ("float32", "bfloat16"), "dtype")
  remats = _list(a.remat or str(base_cfg.prompts.remat), REMAT_POLICIES, "remat")
  if a.time_steps and a.no_compile:
    raise SystemExit("train_memory: --time-steps needs the compiled step (drop --no-compile)")
  rows, base = [], None
  print(
    f"config {a.config} ({base_cfg.model.preset} at {base_cfg.model.image_size}px), global "
    f"batch {a.batch} x {a.frames} frames; rows: task x dtype x remat",
    flush=True,
  )
  for dtype in dtypes:
    for remat in remats:
      for task in tasks:
        cfg = get_config(a.config)
        cfg.data.global_batch = a.batch
        cfg.data.num_frames = a.frames
        cfg.compute_dtype = dtype
        cfg.prompts.remat = remat
        row = measure(cfg, task, compile_=not a.no_compile, time_steps=a.time_steps)
        rows.append(row)
        base = base or row
        _print_row(row, base)
  if a.smoke:
    print("--smoke stops after lowering; run without --smoke for compile + memory analysis")
  if a.json:
    tmp = a.json + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(
        {"config": a.config, "batch": a.batch, "frames": a.frames, "rows": rows}, f, indent=1
      )
    os.replace(tmp, a.json)


if __name__ == "__main__":
  main()
