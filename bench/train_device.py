"""Device check of the training step: a few steps of b+ at 1024 on a GPU/TPU, one short script.

  python bench/train_device.py [--config reference] [--task box] [--frames 8] [--batch-per-device 1]
                               [--dtype bfloat16] [--remat frame] [--steps 5] [--warmup 2]
  python bench/train_device.py --smoke     # the demo config (tiny), 2 frames, 2 steps, CPU

Prints compile time, steps/s (after warm-up, each step blocked on), the device's peak memory
(`memory_stats()["peak_bytes_in_use"]`), and MFU = model FLOPs per second / the chip's dense bf16
peak. Model FLOPs per step: for b+ at 1024 the analytic 3 x 350 GFLOPs per frame (forward +
backward = 3x the forward; remat's recomputation is not useful work and is not counted), else
XLA's `cost_analysis()` of the compiled step (it counts a loop body once: a lower bound for the
scanned frames). The weights are random (no init_from): speed and memory do not depend on their
values. A lent GPU gives <= 15 minutes
per task: the default run (compile ~1-3 min, 7 steps) fits with room for a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _smoke import parse_args

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
# (point task: no corrective clicks, the smallest step to compile)
SMOKE = {
  "config": "demo",
  "task": "point",
  "frames": 2,
  "steps": 2,
  "warmup": 1,
  "dtype": "float32",
}
# Dense bf16 peak FLOP/s per chip (vendor data sheets; SXM parts for NVIDIA).
PEAK_BF16 = {
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
  "L4": 121e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
}
BPLUS_1024_FWD_FLOPS_PER_FRAME = 350e9


def chip_peak(device) -> tuple[str, float | None]:
  kind = getattr(device, "device_kind", str(device))
  for name, peak in PEAK_BF16.items():
    if name.lower() in kind.lower():
      return kind, peak
  return kind, None


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="reference")
  ap.add_argument("--task", default="box", choices=("mask", "box", "point"))
  ap.add_argument("--frames", type=int, default=8)
  ap.add_argument("--batch-per-device", type=int, default=1)
  ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  ap.add_argument("--remat", default=None, help="prompts.remat override (policy name or bool)")
  ap.add_argument("--steps", type=int, default=5, help="timed steps")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  ap.add_argument("--json", default=None, help="also write the figures here")
  a = parse_args(ap, argv, SMOKE)

  import jax
  import numpy as np

  from configs.train import get_config
  from sam2pp_jax.train import data as train_data
  from sam2pp_jax.train import losses, trainer

  cfg = get_config(a.config)
  n_dev = jax.device_count()
  cfg.data.global_batch = a.batch_per_device * n_dev
  cfg.data.num_frames = a.frames
  cfg.init_from = ""
  cfg.compute_dtype = a.dtype
  if a.remat is not None:
    cfg.prompts.remat = {"true": "frame", "false": "none"}.get(a.remat.lower(), a.remat)
  mesh = trainer.make_mesh(cfg.mesh)
  model = trainer.build_train_model(cfg)
  state, tx, _ = trainer.init_state(cfg, model, jax.random.key(0))
  state_sh = trainer.state_shardings(state, mesh, cfg.mesh)
  state = jax.device_put(state, state_sh)
  step_fn = trainer.make_train_step(model, tx, cfg, a.task, mesh, state_sh)
  local = train_data.make_batch(0, 0, a.task, cfg.data)
  batch = trainer.global_batch(local, mesh)

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  t_compile = time.perf_counter() - t0
  flops = None
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    flops = float(ca.get("flops", 0.0)) or None
  except Exception:  # cost analysis is optional per backend
    pass
  for _ in range(a.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  dev = jax.devices()[0]
  kind, peak = chip_peak(dev)
  stats = dev.memory_stats() or {}
  sec = float(np.median(times))
  analytic = 3 * BPLUS_1024_FWD_FLOPS_PER_FRAME * a.frames * cfg.data.global_batch
  is_bplus = cfg.model.preset == "b+" and int(cfg.model.image_size) == 1024
  model_flops = analytic if is_bplus else flops
  out = {
    "device": kind,
    "devices": n_dev,
    "config": a.config,
    "preset": cfg.model.preset,
    "image_size": int(cfg.model.image_size),
    "task": a.task,
    "frames": a.frames,
    "global_batch": int(cfg.data.global_batch),
    "dtype": a.dtype,
    "remat": str(cfg.prompts.get("remat")),
    "compile_s": round(t_compile, 1),
    "step_s_median": sec,
    "steps_per_s": 1.0 / sec,
    "peak_memory_gib": (stats.get("peak_bytes_in_use", 0) / 1024**3) if stats else None,
    "xla_flops_per_step": flops,
    "model_flops_per_step": model_flops,
    "mfu": (model_flops / sec / (peak * n_dev)) if (model_flops and peak) else None,
    "loss": float(np.asarray(jax.device_get(metrics[losses.CORE_LOSS_KEY]))),
  }
  for k, v in out.items():
    print(f"{k:>22}: {v}")
  if a.json:  # temp name, then rename: never a half-written file
    with open(a.json + ".tmp", "w") as f:
      json.dump(out, f, indent=1)
    os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
  main()
