"""The `--smoke` switch every bench script shares: tiny defaults, the same code path, seconds."""

from __future__ import annotations

import argparse


def parse_args(ap: argparse.ArgumentParser, argv, smoke_defaults: dict) -> argparse.Namespace:
  """Add --smoke to `ap` and parse; with --smoke, `smoke_defaults` replace the defaults (flags
  given explicitly still win). Smoke runs also switch most XLA optimisations off: they check
  the code path, and their timings say nothing about speed."""
  ap.add_argument(
    "--smoke",
    action="store_true",
    help=f"seconds-long run of the same code path: defaults {smoke_defaults}",
  )
  args = ap.parse_args(argv)
  if args.smoke:
    ap.set_defaults(**smoke_defaults)
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
  return args
