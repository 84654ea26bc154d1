#!/usr/bin/env python3
"""Score tracking results with the official toolkits' exact rules, or run a benchmark end to end.

  python eval.py score --task mask|box|point --gt GT_DIR --pred PRED_DIR [--protocol P]
                       [--sequences a,b] [--json OUT.json]
  python eval.py run --checkpoint DIR --dataset NAME --root PATH --task mask|box|point --out DIR
                     [--split S] [--protocol P] [--chunk K] [--sequences a,b]

Protocols (metric names and units follow the reference toolkits):
  mask   davis2017 (default; davis2017-evaluation: J/F Mean, Recall, Decay, J&F-Mean; fractions)
         sav       (SAM 2 sav_benchmark --strict: J, F, J&F per object and global; percent)
  box    ope       (default; SAM2-Plus sot_benchmark: AUC, OP50, OP75, Precision@20px,
                    Norm Precision@0.20; percent)
         ope-visibility (the same with the Tracking-Any-Granularity visibility loader)
         got10k    (got10k toolkit: AO, SR@0.50, SR@0.75; fractions)
  point  tapvid    (default; tapnet 'query first': AJ, delta_avg, OA; fractions)
         sam2plus  (SAM2-Plus variant that truncates coordinates; percent)
         pck       (BADJA-style PCK; percent)

`score` prints a table and writes JSON {"task", "protocol", "overall", "per_sequence",
"per_object", ...} atomically. `run` tracks every sequence of a dataset from its first-frame
ground truth (online), writes predictions under OUT/pred in the layout the scorer reads and the
ground truth under OUT/gt, then scores them into OUT/scores_<protocol>.json. A second `run`
skips sequences whose predictions are already written (each is written atomically).

Exit status: 0 ok, 2 bad input (one line naming the file and the problem).
"""

from __future__ import annotations

import argparse
import os
import sys


def _sequences(text):
  return None if not text else [s for s in text.split(",") if s]


def build_parser():
  from sam2pp_jax.eval import score as sc

  epilog = (
    "Inputs the reference toolkits refuse are refused here (exit 2); where a toolkit "
    "returns a documented value for a degenerate input, that value is reproduced:\n\n"
    + sc.refusal_notes()
  )
  p = argparse.ArgumentParser(
    prog="eval.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=epilog,
  )
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser(
    "score",
    help="score predictions against ground truth",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=epilog,
  )
  s.add_argument("--task", required=True, choices=("mask", "box", "point"))
  s.add_argument(
    "--gt", required=True, help="ground-truth folder (see ../shared/metrics/README.md)"
  )
  s.add_argument("--pred", required=True, help="prediction folder")
  s.add_argument("--protocol", default=None, help="see above; default per task")
  s.add_argument("--sequences", default=None, help="comma-separated subset (default: all)")
  s.add_argument("--json", default=None, help="write the report here (atomically)")
  r = sub.add_parser("run", help="track a dataset with a checkpoint, then score it")
  r.add_argument("--checkpoint", required=True)
  r.add_argument(
    "--dataset", required=True, help="reader name, e.g. davis2017, got10k, tapvid_davis"
  )
  r.add_argument("--root", required=True, help="dataset root folder")
  r.add_argument("--task", required=True, choices=("mask", "box", "point"))
  r.add_argument("--out", required=True)
  r.add_argument("--split", default=None)
  r.add_argument("--protocol", default=None)
  r.add_argument("--chunk", type=int, default=4, help="frames encoded at once (default 4)")
  r.add_argument("--sequences", default=None, help="comma-separated subset (default: all)")
  r.add_argument("--quiet", action="store_true", help="no progress bars")
  r.add_argument(
    "--memory",
    default="sam2",
    help="memory policy: sam2 (default), samurai, sam2long or dam4sam (track.py --help)",
  )
  r.add_argument(
    "--memory-opt",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="an option of the memory policy (repeatable)",
  )
  return p


def _write_json(path, report):
  from sam2pp_jax.eval.score import dumps
  from sam2pp_jax.io.atomic import atomic_write_bytes

  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  atomic_write_bytes(path, (dumps(report) + "\n").encode())


def cmd_score(args) -> int:
  from sam2pp_jax.eval.score import format_table, score

  report = score(args.task, args.protocol, args.gt, args.pred, _sequences(args.sequences))
  print(format_table(report))
  if args.json:
    _write_json(args.json, report)
    print(f"wrote {args.json}")
  return 0


def cmd_run(args) -> int:
  from sam2pp_jax.eval.common import MetricInputError
  from sam2pp_jax.eval.runner import run_benchmark
  from sam2pp_jax.eval.score import format_table
  from sam2pp_jax.tracking.memory import get_policy, parse_options

  try:
    memory = get_policy(args.memory, **parse_options(args.memory_opt))
  except ValueError as e:
    raise MetricInputError(f"--memory / --memory-opt: {e}") from None
  report = run_benchmark(
    args.checkpoint,
    args.dataset,
    args.root,
    args.task,
    args.out,
    split=args.split,
    protocol=args.protocol,
    chunk=args.chunk,
    sequences=_sequences(args.sequences),
    quiet=args.quiet,
    memory=memory,
  )
  print(format_table(report))
  return 0


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  from sam2pp_jax.checkpoint import CheckpointError
  from sam2pp_jax.eval.common import MetricInputError
  from sam2pp_jax.io.video import VideoError

  errors = (MetricInputError, VideoError, CheckpointError, OSError)
  try:
    from sam2pp_jax.data.formats.base import DatasetError

    errors = errors + (DatasetError,)
  except ImportError:
    pass
  try:
    return cmd_score(args) if args.command == "score" else cmd_run(args)
  except errors as e:
    print(f"eval.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
