"""Conversion cost of the released B+ layout: wall time and peak memory vs checkpoint size.

Builds a B+ checkpoint from ../shared/parity/manifest_bplus.json with the deterministic-weights
rule (needs torch to *write* the .pt), then runs `convert_torch_weights.py` in a child process
with torch blocked and reports its wall time and peak RSS (ru_maxrss of the child) as a ratio
of the .pt size.

  python bench/convert.py [--keep DIR] [--preset bplus|tiny|t|s|b+|l|parity_small]
  python bench/convert.py --smoke     # seconds: the tiny preset's reference layout

`--preset bplus` (default) is the released layout from the manifest; any other preset takes its
reference keys from the model (`key_map.reference_keys`). Without torch it says so and exits 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from _smoke import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SMOKE = {"preset": "tiny"}  # --smoke defaults


def reference_layout(preset: str):
  """{reference key: shape} of `preset` ("bplus": the released manifest), or None."""
  if preset == "bplus":
    from sam2pp_jax.parity.fixture import parity_dir

    d = parity_dir()
    if d is None or not (d / "manifest_bplus.json").exists():
      return None
    keys = json.loads((d / "manifest_bplus.json").read_text())["keys"]
    return {e["key"]: e["shape"] for e in keys}
  from sam2pp_jax.convert import key_map
  from sam2pp_jax.model.sam2pp import build_model, param_shapes

  return key_map.reference_keys(param_shapes(build_model(preset)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--keep", default=None, help="work directory to keep (default: temp)")
  ap.add_argument("--preset", default="bplus", help="bplus (released manifest) or a preset")
  args = parse_args(ap, argv, SMOKE)
  sys.path.insert(0, ROOT)
  try:
    import torch
  except ImportError:
    print(
      "convert: skipped, torch is not installed (needed only to write the test .pt; "
      "pip install '.[torch]')"
    )
    return 0
  from sam2pp_jax.parity.det_init import det_state_dict

  man = reference_layout(args.preset)
  if man is None:
    print("manifest_bplus.json not found: set $SAM2PP_PARITY_DIR")
    return 1
  work = args.keep or tempfile.mkdtemp(prefix="bench-convert-")
  os.makedirs(work, exist_ok=True)
  pt = os.path.join(work, f"{args.preset}.pt")
  sd = det_state_dict(man, 0)
  state = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())
  torch.save({"model": state}, pt)
  del sd, state
  size_mb = os.path.getsize(pt) / 2**20
  out = os.path.join(work, "converted")
  cli = [pt, out, "--overwrite"] + ([] if args.preset == "bplus" else ["--config", args.preset])
  script = os.path.join(ROOT, "convert_torch_weights.py")
  code = (
    "import sys, runpy; sys.modules['torch'] = None; "
    f"sys.argv = ['convert_torch_weights.py'] + {cli!r}; "
    f"runpy.run_path({script!r}, run_name='__main__')"
  )
  t0 = time.time()
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  wall = time.time() - t0
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  if r.returncode:
    print(r.stderr)
    return r.returncode
  layout = "B+ release layout" if args.preset == "bplus" else f"{args.preset} reference layout"
  print(f"checkpoint      {size_mb:8.1f} MiB  ({layout}, {len(man)} tensors)")
  print(f"conversion      {wall:8.1f} s    (child process, torch blocked; incl. python+jax start)")
  print(f"peak RSS        {peak_mb:8.1f} MiB  = {peak_mb / size_mb:.2f}x the checkpoint")
  return 0


if __name__ == "__main__":
  sys.exit(main())
