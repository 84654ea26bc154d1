"""Peak host memory of the scan tracker (`track_video`) vs video length, one subprocess each.

    python bench/memory.py --frames 100,1000 --preset parity_small --task box
    python bench/memory.py --smoke     # seconds: tiny preset, 4 and 8 frames, same code path

Each setting runs in a fresh Python process (CPU backend: device buffers live in host memory,
so the process's peak RSS is the peak of everything): build the model, fill random params,
record VmRSS, run `track_video` once (compile included) on a lazy frame source (`LazyFrames`:
frame i is generated as uint8 and normalised to float32 only when `track_video` asks for it,
chunk by chunk, so no [T,S,S,3] array exists), then record the peak (VmHWM from
/proc/self/status) and the bytes of the returned arrays.  Reported per setting:

  peak      VmHWM of the whole process (model, params, JAX runtime, compile, outputs)
  before    VmRSS just before the call (model, params, runtime; the video is lazy)
  outputs   bytes of the returned numpy arrays (O(T) by the API: per-frame logits, pointers,
            memories; video-res logits unless --no-video-res). They belong to the caller.
  working   peak - before - outputs: what tracking itself needs on top of its outputs
            (one chunk of frames and features, memory bank, scan buffers, compile)

The goal (issue: memory flat in video length) concerns `working`; `peak` grows only by the
returned outputs. Ratios 1000/100 of both are printed. The 2 CPU cores of the benchmark
machine are shared, so the long setting can take several minutes; --max-seconds bounds the
estimated run time (from the shorter setting) and falls back to the longest feasible length,
saying so.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

from _smoke import parse_args

HERE = os.path.dirname(os.path.abspath(__file__))
SMOKE = {"frames": "4,8", "preset": "tiny", "chunk": 2}  # --smoke defaults (run side by side)


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as fh:
    for line in fh:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise KeyError(field)


def _frame(rng_bg, t: int, size: int):
  """One uint8 [S,S,3] frame: a bright ellipse drifting over a panning textured background."""
  import numpy as np

  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  cx = size * (0.4 + 0.15 * np.sin(t / 25.0))
  cy = size * (0.45 + 0.1 * np.cos(t / 31.0))
  m = ((xx - cx) / (0.18 * size)) ** 2 + ((yy - cy) / (0.12 * size)) ** 2 <= 1
  img = np.roll(rng_bg, t % size, axis=1).copy()
  img[m] = (230, 200, 60)
  return img.astype(np.uint8), m


class LazyFrames:
  """A T-frame video generated on demand: frame i -> uint8 [S,S,3] -> normalised float32.

  Sequence-like (`__len__`, `__getitem__`), as `track_video` accepts: only the frames of the
  chunk being tracked exist at once, so host memory for the input does not grow with T.
  """

  def __init__(self, T: int, size: int):
    import numpy as np

    from sam2pp_jax.io.video import normalize_u8

    self.T, self.size, self._norm = T, size, normalize_u8
    self.bg = (np.random.default_rng(0).random((size, size, 3)) * 80 + 40).astype(np.float32)
    self.calls = 0

  def __len__(self):
    return self.T

  def __getitem__(self, i):
    if not 0 <= i < self.T:
      raise IndexError(i)
    self.calls += 1
    return self._norm(_frame(self.bg, int(i), self.size)[0])

  def mask0(self):
    return _frame(self.bg, 0, self.size)[1]


def child(a) -> int:
  """Run one setting and print a JSON line."""
  import inspect

  import jax
  import numpy as np

  from sam2pp_jax.model.random_params import random_params
  from sam2pp_jax.model.sam2pp import build_model
  from sam2pp_jax.tracking.propagate import track_video

  sys.path.insert(0, HERE)
  from propagate import batched_prompt, prompts_from_mask

  t0 = time.perf_counter()
  model = build_model(a.preset)
  s = int(model.config.image_size)
  params = random_params(model, 0)
  jax.block_until_ready(params)
  rss_model = _status_kb("VmRSS")
  frames = LazyFrames(a.T, s)  # frames produced lazily, chunk by chunk, by track_video
  prompt = batched_prompt(a.task, prompts_from_mask(frames.mask0())[a.task])
  kw = {"chunk": a.chunk}
  if "video_res" in inspect.signature(track_video).parameters:
    kw["video_res"] = not a.no_video_res
  rss_before = _status_kb("VmRSS")
  t1 = time.perf_counter()
  res = track_video(model, params, frames, (s, s), a.task, prompt, **kw)
  jax.block_until_ready(res)
  t2 = time.perf_counter()
  out = {
    "T": a.T,
    "preset": a.preset,
    "task": a.task,
    "image_size": s,
    "chunk": a.chunk,
    "video_res": kw.get("video_res", True),
    "peak_kb": _status_kb("VmHWM"),
    "rss_after_kb": _status_kb("VmRSS"),
    "rss_model_kb": rss_model,
    "rss_before_kb": rss_before,
    "inputs_bytes": 0,  # lazy: no host array of the video
    "float32_video_bytes": int(a.T * s * s * 3 * 4),  # what an in-memory input would be
    "frames_read": frames.calls,
    "outputs_bytes": int(sum(np.asarray(v).nbytes for v in res.values() if hasattr(v, "nbytes"))),
    "call_s": t2 - t1,
    "setup_s": t1 - t0,
    "visible_frac": float(np.mean(res["visible"])),
  }
  print("RESULT " + json.dumps(out), flush=True)
  return 0


def run_setting(a, T: int) -> dict:
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--child",
    "--T",
    str(T),
    "--preset",
    a.preset,
    "--task",
    a.task,
    "--chunk",
    str(a.chunk),
  ]
  if a.no_video_res:
    cmd.append("--no-video-res")
  if a.smoke:
    cmd.append("--smoke")
  t0 = time.perf_counter()
  p = subprocess.run(cmd, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if p.returncode != 0:
    raise RuntimeError(f"T={T} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
  r = json.loads(line[len("RESULT ") :])
  r["wall_s"] = wall
  return r


def mib(kb_or_bytes, kb=True):
  return kb_or_bytes / 1024 if kb else kb_or_bytes / 2**20


def show(r):
  working = r["peak_kb"] * 1024 - r["rss_before_kb"] * 1024 - r["outputs_bytes"]
  r["working_bytes"] = working
  print(
    f"T={r['T']:5d}: peak {mib(r['peak_kb']):8.1f} MiB | before call "
    f"{mib(r['rss_before_kb']):8.1f} MiB (model+params+runtime {mib(r['rss_model_kb']):.1f}; "
    f"frames lazy, "
    f"{r['frames_read']} read, {mib(r['float32_video_bytes'], False):.0f} MiB as a float32 "
    f"array) | outputs {mib(r['outputs_bytes'], False):7.1f} MiB"
    f" | working {mib(working, False):8.1f} MiB | call {r['call_s']:.1f}s "
    f"(compile included), wall {r['wall_s']:.1f}s",
    flush=True,
  )


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--frames", default="100,1000", help="comma-separated video lengths")
  ap.add_argument("--preset", default="parity_small")
  ap.add_argument("--task", default="box", choices=("mask", "box", "point"))
  ap.add_argument("--chunk", type=int, default=4)
  ap.add_argument(
    "--no-video-res",
    action="store_true",
    help="track_video(video_res=False): skip the [T,B,H,W] video-size logits",
  )
  ap.add_argument(
    "--max-seconds",
    type=float,
    default=1800.0,
    help="skip (and shorten) a setting whose estimated run time exceeds this",
  )
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--T", type=int, default=0, help=argparse.SUPPRESS)
  a = parse_args(ap, argv, SMOKE)
  if a.child:
    return child(a)

  lengths = sorted(int(x) for x in a.frames.split(","))
  import datetime
  import platform

  print(
    f"# bench/memory.py {datetime.datetime.now().isoformat(timespec='seconds')} "
    f"{platform.node()} {os.cpu_count()} cpus; preset {a.preset}, task {a.task}, chunk "
    f"{a.chunk}, video_res {not a.no_video_res}; one fresh subprocess per length",
    flush=True,
  )
  results = []
  if a.smoke:  # the lengths side by side (separate processes, so peaks stay separate)
    with concurrent.futures.ThreadPoolExecutor(len(lengths)) as pool:
      results = list(pool.map(lambda T: run_setting(a, T), lengths))
    for r in results:
      show(r)
  for T in [] if a.smoke else lengths:
    if results:
      prev = results[-1]
      # per-frame rate from the previous setting; its fixed cost (setup + compile) is an upper
      # bound on this one's, so this slightly overestimates
      est = prev["wall_s"] * T / prev["T"]
      if est > a.max_seconds:
        feasible = int(prev["T"] * a.max_seconds / prev["wall_s"])
        print(
          f"T={T}: estimated {est:.0f}s > --max-seconds {a.max_seconds:.0f}; "
          f"measuring T={feasible} instead",
          flush=True,
        )
        if feasible <= prev["T"]:
          break
        T = feasible
      else:
        print(f"T={T}: estimated {est:.0f}s", flush=True)
    r = run_setting(a, T)
    show(r)
    results.append(r)
  if len(results) >= 2:
    lo, hi = results[0], results[-1]
    net = lambda r: r["peak_kb"] * 1024 - r["outputs_bytes"]
    print(
      f"ratio T={hi['T']}/T={lo['T']}: peak {hi['peak_kb'] / lo['peak_kb']:.3f}x, "
      f"working (peak - before - outputs) {hi['working_bytes'] / lo['working_bytes']:.3f}x, "
      f"peak - outputs {net(hi) / net(lo):.3f}x"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
