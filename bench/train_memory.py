"""AOT lowering + compilation of one training step (no run) and XLA's per-device memory estimate.

  python bench/train_memory.py [--config reference] [--task box] [--batch 1] [--frames 8]
                               [--devices N] [--no-compile]
  python bench/train_memory.py --smoke     # seconds: the demo config (tiny), 2 frames, lowering

Everything is abstract (jax.eval_shape for params and optimizer state, ShapeDtypeStructs for
the batch), so the b+ model at 1024 is lowered without allocating its weights. Prints lowering
and compile times and `compiled.memory_analysis()` (arguments, outputs, temporaries, total).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _smoke import parse_args

from sam2pp_jax.model.presets import TASKS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
# --smoke defaults: lowering only (compiling even the tiny training step takes ~1 CPU-minute)
SMOKE = {"config": "demo", "frames": 2, "no_compile": True}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="reference")
  ap.add_argument("--task", default="box", choices=TASKS)
  ap.add_argument("--batch", type=int, default=1, help="global batch (clips)")
  ap.add_argument("--frames", type=int, default=8)
  ap.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS)")
  ap.add_argument("--no-compile", action="store_true", help="stop after lowering")
  ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute_dtype")
  a = parse_args(ap, argv, SMOKE)
  if a.devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.devices}"
    )
  import jax
  import jax.numpy as jnp

  from configs.train import get_config
  from sam2pp_jax.train import trainer

  cfg = get_config(a.config)
  cfg.data.global_batch = a.batch
  cfg.data.num_frames = a.frames
  mesh = trainer.make_mesh(cfg.mesh)
  if a.dtype:
    cfg.compute_dtype = a.dtype
  model = trainer.build_train_model(cfg)
  s = int(cfg.model.image_size)
  o = 1 if a.task == "box" else int(cfg.data.max_objects)

  t0 = time.time()
  holder = {}

  def make_state(key):
    st, tx, info = trainer.init_state(cfg, model, key)
    holder["tx"] = tx
    return st

  abstract_state = jax.eval_shape(make_state, jax.random.key(0))
  tx = holder["tx"]
  state_sh = trainer.state_shardings(abstract_state, mesh, cfg.mesh)
  f32, b = jnp.float32, a.batch
  sds = jax.ShapeDtypeStruct
  batch = {
    "frames": sds((b, a.frames, s, s, 3), f32),
    "masks": sds((b, a.frames, o, s, s), bool),
    "boxes": sds((b, a.frames, o, 4), f32),
    "points": sds((b, a.frames, o, 2), f32),
    "visible": sds((b, a.frames, o), bool),
    "obj_valid": sds((b, o), bool),
  }
  step = trainer.make_train_step(model, tx, cfg, a.task, mesh, state_sh)
  t_shape = time.time() - t0
  t0 = time.time()
  lowered = step.lower(abstract_state, batch)
  t_lower = time.time() - t0
  n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
  print(
    f"config {a.config} ({cfg.model.preset} at {s}px), task {a.task}, global batch {b} x "
    f"{a.frames} frames x {o} objects, {mesh.size} device(s), {n_params / 1e6:.1f}M params"
  )
  print(f"abstract state: {t_shape:.1f} s; lowering: {t_lower:.1f} s")
  if a.no_compile:
    if a.smoke:
      print("--smoke stops after lowering; run without --smoke for compile + memory analysis")
    return
  t0 = time.time()
  compiled = lowered.compile()
  print(f"compile: {time.time() - t0:.1f} s")
  m = compiled.memory_analysis()
  if m is None:
    print("memory analysis not available on this backend")
    return
  gib = 1024**3
  fields = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
  )
  for f in fields:
    v = getattr(m, f, None)
    if v is not None:
      print(f"  {f:<32} {v / gib:8.3f} GiB")
  total = (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  print(
    f"  per-device peak estimate          {total / gib:8.3f} GiB "
    "(arguments + outputs - aliased + temporaries)"
  )
  if m.argument_size_in_bytes:  # the baseline in the same run: the step's own arguments
    print(f"  peak / arguments (state + batch)  {total / m.argument_size_in_bytes:8.2f}x")


if __name__ == "__main__":
  main()
