"""How many stored-memory bf16 elements differ from the reference: float32 vs float64 runs.

The end-to-end rule "one-ulp bf16 flips on at most 0.1 % of the stored memory" is judged
against the reference's own float32 rounding. Running the same scan path in float64 (near-exact
arithmetic) shows how far the reference itself is from exact math; a float32 reimplementation
cannot be expected to be closer to the reference than that.

  python bench/bf16_flips.py ../shared/parity/dev_small_seed0_{mask,box,point}.npz
  python bench/bf16_flips.py            # the dev fixtures found by parity_dir()
  python bench/bf16_flips.py --smoke    # seconds: the box fixture's first 2 frames

The float32/float64 ratio of the flip fractions is printed per fixture. Without fixtures (set
$SAM2PP_PARITY_DIR or place ../shared/parity) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

from _smoke import parse_args

SMOKE = {"frames": 2, "tasks": "box"}  # --smoke defaults


def flips(fx, dtype_name: str, frames: int = 0, model_params=None):
  """(flips per frame, overall flip fraction) of the first `frames` frames (0: all).
  `model_params`: the fixture's (model, params) when already built."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from sam2pp_jax.parity.end_to_end import fixture_prompt
  from sam2pp_jax.parity.model_from_fixture import model_and_params
  from sam2pp_jax.tracking.propagate import track_video

  dt = {"float32": jnp.float32, "float64": jnp.float64}[dtype_name]
  model, params = model_params or model_and_params(fx)
  params = jax.tree.map(lambda a: jnp.asarray(a, dt), params)
  video = fx.frames().transpose(0, 2, 3, 1).astype(np.dtype(dt))
  total = len(video)
  n = min(frames, total) if frames else total
  hw = tuple(int(v) for v in fx["inputs/video_hw"])
  # tracking is causal: the first n frames with the whole video's length = the full run's first n
  r = track_video(
    model, params, video[:n], hw, fx.task, fixture_prompt(fx), chunk=4, num_frames=total
  )
  got = np.asarray(r["maskmem_features_bf16"][:, 0], np.float32).transpose(0, 3, 1, 2)
  d = got != fx["outputs/maskmem_features_bf16"][:n]
  return [int(d[t].sum()) for t in range(d.shape[0])], float(d.mean())


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("fixtures", nargs="*", help="fixture .npz files (default: the dev fixtures)")
  ap.add_argument("--tasks", default="mask,box,point", help="dev fixtures used by default")
  ap.add_argument("--frames", type=int, default=0, help="only the first N frames (0: all)")
  a = parse_args(ap, argv, SMOKE)
  import jax

  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_default_matmul_precision", "highest")
  from sam2pp_jax.parity.fixture import load_fixture, parity_dir
  from sam2pp_jax.parity.model_from_fixture import model_and_params

  paths = list(a.fixtures)
  if not paths:
    d = parity_dir()
    paths = [d / f"dev_small_seed0_{t}.npz" for t in a.tasks.split(",") if t] if d else []
    paths = [p for p in paths if p.exists()]
    if not paths:
      print(
        "bf16_flips: skipped, no parity fixtures found (set $SAM2PP_PARITY_DIR or place "
        "../shared/parity)"
      )
      return 0
  for path in paths:
    fx = load_fixture(path)
    mp = model_and_params(fx)
    frac = {}
    for dt in ("float32", "float64"):
      per, frac[dt] = flips(fx, dt, a.frames, mp)
      print(
        f"{fx.path.name:28s} {dt}: flips per frame {per}  overall {100 * frac[dt]:.3f} %",
        flush=True,
      )
    ratio = frac["float32"] / frac["float64"] if frac["float64"] else float("nan")
    print(f"{fx.path.name:28s} flips float32/float64: {ratio:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
