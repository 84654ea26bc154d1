"""Conversion cost of the released B+ layout: wall time and peak memory vs checkpoint size.

Builds a B+ checkpoint from ../shared/parity/manifest_bplus.json with the deterministic-weights
rule (needs torch to *write* the .pt), then runs `convert_torch_weights.py` in a child process
with torch blocked and reports its wall time and peak RSS (ru_maxrss of the child) as a ratio
of the .pt size. Usage: python bench/convert.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--keep", default=None, help="work directory to keep (default: temp)")
  args = ap.parse_args()
  sys.path.insert(0, ROOT)
  import numpy as np
  import torch
  from sam2pp_jax.parity.det_init import det_state_dict
  from sam2pp_jax.parity.fixture import parity_dir
  d = parity_dir()
  if d is None:
    print("manifest_bplus.json not found: set $SAM2PP_PARITY_DIR")
    return 1
  man = {e["key"]: e["shape"] for e in json.loads((d / "manifest_bplus.json").read_text())["keys"]}
  work = args.keep or tempfile.mkdtemp(prefix="bench-convert-")
  os.makedirs(work, exist_ok=True)
  pt = os.path.join(work, "bplus.pt")
  sd = det_state_dict(man, 0)
  torch.save({"model": collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())}, pt)
  del sd
  size_mb = os.path.getsize(pt) / 2**20
  out = os.path.join(work, "converted")
  code = ("import sys, runpy; sys.modules['torch'] = None; "
          f"sys.argv = ['convert_torch_weights.py', {pt!r}, {out!r}, '--overwrite']; "
          f"runpy.run_path({os.path.join(ROOT, 'convert_torch_weights.py')!r}, run_name='__main__')")
  t0 = time.time()
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  wall = time.time() - t0
  peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  if r.returncode:
    print(r.stderr)
    return r.returncode
  print(f"checkpoint      {size_mb:8.1f} MiB  (B+ release layout, 1119 tensors)")
  print(f"conversion      {wall:8.1f} s    (child process, torch blocked; incl. python+jax start)")
  print(f"peak RSS        {peak_mb:8.1f} MiB  = {peak_mb / size_mb:.2f}x the checkpoint")
  return 0


if __name__ == "__main__":
  sys.exit(main())
