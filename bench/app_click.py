"""Interactive latency of the app core (`sam2pp_jax.app.session.Session`), as the UI sees it.

    python bench/app_click.py                       # parity_small, 480x854, 40 frames
    python bench/app_click.py --json out.json
    python bench/app_click.py --smoke               # seconds: tiny preset, 64x96, 4 frames

A synthetic video (`sam2pp_jax.data.synthetic.generate_video`, one object) is written as a JPEG
folder; the session opens it with the preset's random weights (`Session.open(None, ...,
model_preset=...)`, i.e. `build_model(preset)` + `random_params(model, 0)`). Every timed call is
what a UI event runs, render of the shown frame included. With the session's background warm-up
(default; --no-warmup: off, every first click of a kind compiles) the script waits for the
warm-up to finish before each click (`Session.wait_warm`, a user thinking), and reports those
waits separately:

* open          : Session.open (model build + params, video open, frame 0 encoded);
* warm-up       : wait_warm right after open (compiles clicks of 1..--warmup-points points,
                  with and without memory, the one-frame tracking step, boxes, masks);
* click 1/2/3   : three clicks on frame 0 of the first object (1, 2, 3 points; the 2nd and 3rd
                  carry the previous mask as a dense prompt);
* propagate     : propagate(direction="forward") from frame 0 over the whole video (each frame
                  encoded once and tracked); per frame = total / frames, and the median interval
                  between progress callbacks (steady state, compiles excluded);
* correct first : the first correction click on a tracked frame (decoder with memory);
* correct       : --clicks more correction clicks, each on another tracked (already encoded)
                  frame: median / max;
* correct 2nd / 3rd : a 2nd and 3rd click on the last corrected frame (2, 3 points, memory);
* new object    : --clicks clicks that each start a new object on an encoded frame (a new
                  object count for the output post-processing each time): median / max.
* prompted frame: one more click on frame 0 of the first object after the propagation (the
                  session rebuilds the predictor from its prompt log: every prompt is decoded
                  again, the corrections as new conditioning frames).

--compile-cache DIR turns on JAX's persistent compilation cache as the app does
(`sam2pp_jax.app.session.enable_compile_cache`): a second run with the same folder shows an app
restart (compiled executables loaded from disk).

Timings are wall-clock seconds on whatever runs the script (the table names the JAX backend).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _smoke import parse_args  # noqa: E402

SMOKE = {
  "preset": "tiny",
  "height": 64,
  "width": 96,
  "frames": 4,
  "clicks": 2,
  "warmup_points": 2,
}


def _centre(mask) -> tuple:
  m = np.asarray(mask, np.uint8)
  if not m.any():
    return m.shape[1] / 2, m.shape[0] / 2
  d = cv2.distanceTransform(m, cv2.DIST_L2, 5)
  y, x = np.unravel_index(np.argmax(d), d.shape)
  return float(x), float(y)


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def run(args) -> dict:
  import jax

  from sam2pp_jax.app.session import Session, enable_compile_cache
  from sam2pp_jax.data.synthetic import generate_video

  cache = enable_compile_cache(args.compile_cache) if args.compile_cache else None

  tmp = tempfile.mkdtemp(prefix="app_click-")
  v = generate_video(
    args.seed, num_frames=args.frames, height=args.height, width=args.width, num_objects=1
  )
  vd = os.path.join(tmp, "video")
  os.makedirs(vd)
  for t, f in enumerate(v["frames"]):
    cv2.imwrite(os.path.join(vd, f"{t:05d}.jpg"), f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
  r = {
    "preset": args.preset,
    "video": [args.frames, args.height, args.width],
    "backend": jax.default_backend(),
    "machine": platform.machine(),
    "cpus": os.cpu_count(),
    "warmup": args.warmup,
    "warmup_points": args.warmup_points,
    "wait": args.wait,
    "waits_s": {},
    "compile_cache": cache,
  }
  r["open_s"], s = _timed(
    lambda: Session.open(
      None,
      vd,
      os.path.join(tmp, "session"),
      model_preset=args.preset,
      warmup=args.warmup,
      warmup_points=args.warmup_points,
    )
  )

  def click(name, t, o, x, y, positive=True):
    """One timed click, after waiting for the warm-up (the wait is recorded apart)."""
    w, _ = _timed(s.wait_warm) if args.wait else (0.0, None)
    r["waits_s"][name] = r["waits_s"].get(name, 0.0) + w
    return _timed(lambda: s.add_click(t, o, x, y, positive=positive))[0]

  r["warmup_open_s"], _ = _timed(s.wait_warm) if args.wait else (0.0, None)
  obj = s.new_object()
  x0, y0 = _centre(v["masks"][0] == 1)
  r["click_s"] = [
    click("click", 0, obj, x0, y0),
    click("click", 0, obj, x0 + 2, y0 + 2, positive=False),
    click("click", 0, obj, x0 - 2, y0 + 1),
  ]
  stamps = []
  r["propagate_s"], _ = _timed(
    lambda: s.propagate(
      direction="forward", progress=lambda d, n: stamps.append(time.perf_counter())
    )
  )
  r["propagate_per_frame_s"] = r["propagate_s"] / args.frames
  gaps = np.diff(stamps[1:]) if len(stamps) > 2 else np.array([r["propagate_per_frame_s"]])
  r["propagate_steady_per_frame_s"] = float(np.median(gaps))
  r["warmup_propagate_s"], _ = _timed(s.wait_warm) if args.wait else (0.0, None)
  tracked = list(range(1, args.frames))
  picks = [tracked[i % len(tracked)] for i in range(args.clicks + 1)]
  corr = []
  for i, t in enumerate(picks):
    x, y = _centre(v["masks"][t] == 1)
    corr.append(click("correct", t, obj, x, y, positive=i % 2 == 0))
  r["correct_first_s"] = corr[0]
  r["correct_s"] = corr[1:]
  t = picks[-1]
  x, y = _centre(v["masks"][t] == 1)
  r["correct_more_s"] = [
    click("correct", t, obj, x + 2, y, positive=False),
    click("correct", t, obj, x, y + 2),
  ]
  new = []
  h, w = s.video_hw
  for t in picks[1:]:
    new.append(click("new object", t, s.new_object(), w * 0.25, h * 0.25))
  r["new_object_s"] = new
  # a click on the first object's conditioning frame after the propagation: the session rebuilds
  # the predictor from its prompt log (every prompt decoded again, the corrections as new
  # conditioning frames without memory)
  r["rebuild_click_s"] = click("click", 0, obj, x0 + 1, y0 - 2)
  r["prompts"] = len(s._effective_events())
  r["warm_errors"] = list(s.warm_errors)
  r["status"] = s.status()
  return r


def table(r: dict) -> str:
  med = lambda xs: statistics.median(xs) if xs else float("nan")
  mm = lambda xs: f"{med(xs):.3f} / {max(xs, default=float('nan')):.3f}"
  c1, c2, c3 = r["click_s"]
  rows = [
    ("open (model + video + frame 0)", f"{r['open_s']:.3f}"),
    ("warm-up after open (background; waited)", f"{r['warmup_open_s']:.3f}"),
    ("click 1 (new object, 1 point)", f"{c1:.3f}"),
    ("click 2, same frame + object (2 points + mask)", f"{c2:.3f}"),
    ("click 3, same frame + object (3 points + mask)", f"{c3:.3f}"),
    ("propagate, total", f"{r['propagate_s']:.3f}"),
    ("propagate, per frame (total / T)", f"{r['propagate_per_frame_s']:.3f}"),
    ("propagate, per frame (steady median)", f"{r['propagate_steady_per_frame_s']:.3f}"),
    ("warm-up after propagate (background; waited)", f"{r['warmup_propagate_s']:.3f}"),
    ("correction click, first", f"{r['correct_first_s']:.3f}"),
    (
      f"correction click on encoded frame (median / max of {len(r['correct_s'])})",
      mm(r["correct_s"]),
    ),
    (
      "correction, 2nd / 3rd click on the frame",
      " / ".join(f"{x:.3f}" for x in r["correct_more_s"]),
    ),
    (
      f"new-object click on encoded frame (median / max of {len(r['new_object_s'])})",
      mm(r["new_object_s"]),
    ),
    (
      f"click on a prompted frame after propagate (replays {r['prompts']} prompts)",
      f"{r['rebuild_click_s']:.3f}",
    ),
    (
      "waited for the warm-up before clicks (click / correct / new object)",
      " / ".join(f"{r['waits_s'].get(k, 0.0):.3f}" for k in ("click", "correct", "new object")),
    ),
  ]
  w = max(len(a) for a, _ in rows)
  t, h, wd = r["video"]
  head = f"app click latency: {r['preset']}, {t} frames {wd}x{h}, backend {r['backend']}"
  head += f" ({r['cpus']} CPUs), warm-up "
  head += f"on (points 1..{r['warmup_points']})" if r["warmup"] else "off"
  if r["warmup"] and not r.get("wait", True):
    head += ", clicks not waiting for it"
  if r.get("compile_cache"):
    head += ", persistent compile cache"
  head += "; seconds"
  lines = [head] + [f"  {a:<{w}}  {b}" for a, b in rows]
  if r.get("warm_errors"):
    lines.append(f"  warm-up errors: {r['warm_errors']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="parity_small")
  ap.add_argument("--height", type=int, default=480)
  ap.add_argument("--width", type=int, default=854)
  ap.add_argument("--frames", type=int, default=40)
  ap.add_argument("--clicks", type=int, default=10)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="no background warm-up")
  ap.add_argument("--warmup-points", type=int, default=4, help="warm-up: point counts 1..K")
  ap.add_argument(
    "--no-wait",
    dest="wait",
    action="store_false",
    help="click without waiting for the warm-up (a user clicking at once: clicks and warm-up "
    "share the CPUs, a click may compile a shape the warm-up has not reached)",
  )
  ap.add_argument(
    "--compile-cache",
    default=None,
    help="JAX's persistent compilation cache in this folder, as the app uses it (run twice: "
    "the second run is an app restart); default: off",
  )
  ap.add_argument("--json", default=None, help="also write the numbers here")
  args = parse_args(ap, argv, SMOKE)
  r = run(args)
  print(table(r))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(r, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
