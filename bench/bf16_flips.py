"""How many stored-memory bf16 elements differ from the reference: float32 vs float64 runs.

The end-to-end rule "one-ulp bf16 flips on at most 0.1 % of the stored memory" is judged
against the reference's own float32 rounding. Running the same scan path in float64 (near-exact
arithmetic) shows how far the reference itself is from exact math; a float32 reimplementation
cannot be expected to be closer to the reference than that.

  python bench/bf16_flips.py ../shared/parity/dev_small_seed0_{mask,box,point}.npz
"""

from __future__ import annotations

import sys


def flips(fx, dtype_name: str):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from sam2pp_jax.parity.end_to_end import fixture_prompt
  from sam2pp_jax.parity.model_from_fixture import model_and_params
  from sam2pp_jax.tracking.propagate import track_video
  dt = {"float32": jnp.float32, "float64": jnp.float64}[dtype_name]
  model, params = model_and_params(fx)
  params = jax.tree.map(lambda a: jnp.asarray(a, dt), params)
  frames = fx.frames().transpose(0, 2, 3, 1).astype(np.dtype(dt))
  hw = tuple(int(v) for v in fx["inputs/video_hw"])
  r = track_video(model, params, frames, hw, fx.task, fixture_prompt(fx), chunk=4)
  got = np.asarray(r["maskmem_features_bf16"][:, 0], np.float32).transpose(0, 3, 1, 2)
  d = got != fx["outputs/maskmem_features_bf16"]
  return [int(d[t].sum()) for t in range(d.shape[0])], float(d.mean())


def main(argv) -> int:
  import jax
  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_default_matmul_precision", "highest")
  from sam2pp_jax.parity.fixture import load_fixture
  for path in argv:
    fx = load_fixture(path)
    for dt in ("float32", "float64"):
      per, frac = flips(fx, dt)
      print(f"{fx.path.name:28s} {dt}: flips per frame {per}  overall {100 * frac:.3f} %")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
