#!/usr/bin/env python3
"""Train SAM 2++ (mask / box / point multi-task) with a sharded, resumable JAX loop.

  python train.py --config configs/train.py:demo --workdir DIR [--config.total_steps=N ...]

Configs: configs/train.py:reference (the released recipe; set --config.init_from to a converted
SAM 2 / SAM 2++ checkpoint), :pretrain_tiny (the shipped checkpoints/tiny, from scratch),
:finetune_tiny (make demo's fine-tune of it), :demo (tiny from scratch, 10 minutes), :test.
Re-running the same command resumes from DIR/checkpoints exactly (params, optimizer, step,
PRNG, data position). Writes DIR/metrics.jsonl, DIR/tb (TensorBoard events), DIR/summary.json
and DIR/model (the inference checkpoint, per-task memory attention merged). Multi-host:
launched with the usual JAX / SLURM / TPU environment, each process reads its own data shard.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "train.py:demo"),
  "training config file (path.py:name)",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, model)")
_QUIET = flags.DEFINE_bool("quiet", False, "no per-step lines or progress bar")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    print("train.py: error: --workdir is required", file=sys.stderr)
    return 2
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  from sam2pp_jax.train.trainer import train

  try:
    summary = train(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  except (ValueError, RuntimeError, OSError) as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    return 2
  print(
    f"train: {summary['step']} steps, {summary['train_seconds'] / 60:.2f} train minutes "
    f"(+{summary['compile_seconds']:.0f} s compile), model in {summary['model_dir']}"
  )
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
