"""`python -m sam2pp_jax.parity [--components] FIXTURE.npz [...]`: parity against PyTorch.
`python -m sam2pp_jax.parity live --checkpoint X.pt --video PATH --task T --prompt P ...`: the
same checks live against the official predictor on your checkpoint and video (`live --help`).

--components: recompute every frame0/* and frame1/* dump block by block (one line per array).
Without it: the end-to-end tracker comparison of outputs/* (provided by the tracker).
Exit 0 only if every checked array is within tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from sam2pp_jax.parity import live
from sam2pp_jax.parity.components import NEEDS_TRACKER, ComponentChecker
from sam2pp_jax.parity.end_to_end import check_end_to_end
from sam2pp_jax.parity.fixture import load_fixture


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["live"]:
    return live.main(argv[1:])
  ap = argparse.ArgumentParser(
    prog="python -m sam2pp_jax.parity",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("fixtures", nargs="+", help="parity fixture .npz files")
  ap.add_argument("--components", action="store_true", help="block-by-block component check")
  ap.add_argument(
    "--rel-tol",
    type=float,
    default=2e-4,
    help="max|jax-ref| <= rel_tol * max(1, max|ref|) (default 2e-4)",
  )
  args = ap.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", "highest")

  all_ok = True
  for path in args.fixtures:
    try:
      fx = load_fixture(path)
    except (FileNotFoundError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      all_ok = False
      continue
    t0 = time.time()
    print(f"== {fx.path.name}: task={fx.task} S={fx.image_size} seed={fx.base_seed}")
    if args.components:
      rows = ComponentChecker(fx, args.rel_tol).rows()
      for r in rows:
        print(r.line())
      bad = [r for r in rows if r.status == "FAIL"]
      n_ok = sum(r.status == "ok" for r in rows)
      n_skip = sum(r.status == NEEDS_TRACKER for r in rows)
      print(
        f"-- {fx.path.name}: {n_ok} ok, {len(bad)} failed, {n_skip} need the tracker "
        f"({time.time() - t0:.1f}s)"
      )
    else:
      ok = check_end_to_end(fx, args)
      bad = [] if ok else [fx.path.name]
    all_ok &= not bad
  print("PARITY OK" if all_ok else "PARITY FAILED")
  return 0 if all_ok else 1


if __name__ == "__main__":
  sys.exit(main())
