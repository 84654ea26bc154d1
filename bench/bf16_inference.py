"""bf16 inference against float32 on trained weights: quality and frame-by-frame agreement.

    python bench/bf16_inference.py [--videos 8] [--seed 0] [--suite normal]
    python bench/bf16_inference.py --smoke     # seconds: 1 short video

The shipped checkpoint (checkpoints/tiny, or --checkpoint) tracks the demo's held-out synthetic
videos (`sam2pp_jax.demo.held_out_videos`, seeds disjoint from training's) with track.py in
process (`--tasks`, default all three), once with `--dtype float32` and once with
`--dtype bfloat16` (bf16 matmuls and
activations, float32 params, softmax and statistics: the reference README's autocast
inference). Printed per dtype: the scores eval.py gives (J&F, success AUC, delta_avg); and bf16
against float32 frame by frame: mask IoU per object (mask task), box IoU (box task), point
distance in pixels (point task), as mean / worst / fraction of frames that agree (IoU >= 0.99,
distance <= 1 px). Speed of bf16 inference is bench/propagate.py --bf16 (same run as float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
from _smoke import parse_args

SMOKE = {"videos": 1, "frames": 4, "tasks": "box"}  # --smoke defaults


def _mask_ious(dir_a: str, dir_b: str) -> list[float]:
  """Per frame and object id present in either: IoU of the two palette-PNG folders."""
  from sam2pp_jax.io.png import read_palette_png

  ious = []
  for name in sorted(os.listdir(dir_a)):
    a, _ = read_palette_png(os.path.join(dir_a, name))
    b, _ = read_palette_png(os.path.join(dir_b, name))
    for obj in sorted(set(np.unique(a)) | set(np.unique(b)) - {0}):
      union = np.logical_or(a == obj, b == obj).sum()
      ious.append(float(np.logical_and(a == obj, b == obj).sum() / union) if union else 1.0)
  return ious


def _box_ious(npz_a: str, npz_b: str) -> list[float]:
  a, b = np.load(npz_a)["boxes_xyxy"], np.load(npz_b)["boxes_xyxy"]
  out = []
  for x, y in zip(a, b):
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
      out.append(1.0 if np.isfinite(x).all() == np.isfinite(y).all() else 0.0)
      continue
    iw = max(0.0, min(x[2], y[2]) - max(x[0], y[0]))
    ih = max(0.0, min(x[3], y[3]) - max(x[1], y[1]))
    inter = iw * ih
    union = (x[2] - x[0]) * (x[3] - x[1]) + (y[2] - y[0]) * (y[3] - y[1]) - inter
    out.append(float(inter / union) if union > 0 else 1.0)
  return out


def _point_dists(npz_a: str, npz_b: str) -> list[float]:
  a, b = np.load(npz_a)["trajs_2d"], np.load(npz_b)["trajs_2d"]
  return [float(d) for d in np.linalg.norm(a - b, axis=-1).ravel()]


def _summary(values: list[float], agree, higher_is_better: bool) -> dict:
  v = np.asarray(values, np.float64)
  return {
    "mean": float(v.mean()),
    "worst": float(v.min() if higher_is_better else v.max()),
    "agree_fraction": float(np.mean([agree(x) for x in v])),
    "n": len(v),
  }


def track_task(ckpt, paths, out, task, dtype) -> str:
  """track.py (in process, --quiet, its file list silenced) on every video for one task."""
  import contextlib
  import io

  from sam2pp_jax import demo
  from sam2pp_jax.tracking import cli as track_cli

  out_dir = os.path.join(out, f"pred_{task}")
  for name, vd in paths["videos"]:
    if task == "mask":
      prompt = os.path.join(paths["gt_mask"], "Annotations", name, "00000.png")
    elif task == "box":
      prompt = ",".join(f"{x}" for x in demo._first_box_xyxy(paths, name))
    else:
      prompt = os.path.join(paths["gt_point"], name + ".npz")
    argv = ["--checkpoint", ckpt, "--video", vd, "--dtype", dtype, "--quiet", "--task", task]
    argv += ["--prompt", prompt, "--out", out_dir]
    if task == "point":
      argv += ["--point-readout", demo.DEFAULT_READOUT]
    with contextlib.redirect_stdout(io.StringIO()):
      rc = track_cli.main(argv)
    if rc:
      raise RuntimeError(f"track.py --task {task} --dtype {dtype} failed on {name} (exit {rc})")
  return out_dir


SCORERS = {"mask": ("davis2017", "J&F-Mean", 1.0), "box": ("ope", "AUC", 0.01)}
SCORERS["point"] = ("tapvid", "average_pts_within_thresh", 1.0)
METRIC = {"mask": "J&F", "box": "AUC", "point": "delta_avg"}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--videos", type=int, default=8)
  ap.add_argument("--frames", type=int, default=None, help="frames per video (suite default)")
  ap.add_argument("--tasks", default="mask,box,point")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--suite", default="normal")
  ap.add_argument("--checkpoint", default=None, help="default: the shipped checkpoints/tiny")
  ap.add_argument("--json", default=None, help="also write all numbers to this file")
  a = parse_args(ap, argv, SMOKE)

  from sam2pp_jax import demo
  from sam2pp_jax.eval.score import score
  from sam2pp_jax.tracking.outputs import box_float_path

  tasks = [t for t in a.tasks.split(",") if t]
  if not tasks or any(t not in METRIC for t in tasks):
    ap.error(f"--tasks: a comma-separated subset of {', '.join(METRIC)}, got {a.tasks!r}")
  ckpt = a.checkpoint or os.path.join(demo._repo_root(), demo.SHIPPED_CHECKPOINT)
  if not os.path.isfile(os.path.join(ckpt, "config.json")):
    print(f"bf16_inference: error: no checkpoint at {ckpt} (config.json missing)", file=sys.stderr)
    return 2
  videos = demo.held_out_videos(a.seed, a.videos, frames=a.frames, suite=a.suite)
  res = {"checkpoint": os.path.abspath(ckpt), "videos": a.videos, "seed": a.seed}
  agreement = {}
  with tempfile.TemporaryDirectory(prefix="sam2pp_bf16_") as root:
    paths = demo.write_held_out(root, videos)
    names = [n for n, _ in paths["videos"]]
    for task in tasks:
      outs = {}
      for dtype in ("float32", "bfloat16"):
        outs[dtype] = track_task(ckpt, paths, os.path.join(root, dtype), task, dtype)
        metric, key, scale = SCORERS[task]
        r = score(task, metric, paths[f"gt_{task}"], outs[dtype])
        res.setdefault(dtype, {})[METRIC[task]] = r["overall"][key] * scale
      f32, b16 = outs["float32"], outs["bfloat16"]
      if task == "mask":
        v = sum((_mask_ious(os.path.join(f32, n), os.path.join(b16, n)) for n in names), [])
        agreement["mask_iou"] = _summary(v, lambda x: x >= 0.99, True)
      elif task == "box":
        box = lambda d, n: box_float_path(os.path.join(d, n + ".txt"))
        v = sum((_box_ious(box(f32, n), box(b16, n)) for n in names), [])
        agreement["box_iou"] = _summary(v, lambda x: x >= 0.99, True)
      else:
        pt = lambda d, n: os.path.join(d, n + ".npz")
        v = sum((_point_dists(pt(f32, n), pt(b16, n)) for n in names), [])
        agreement["point_px"] = _summary(v, lambda x: x <= 1.0, False)
  res["agreement"] = agreement
  print(f"# bench/bf16_inference.py: {a.videos} held-out videos (seed {a.seed}, suite {a.suite})")
  print(f"{'':10s}" + "".join(f"{METRIC[t]:>10s}" for t in tasks))
  for dtype in ("float32", "bfloat16"):
    print(f"{dtype:10s}" + "".join(f"{res[dtype][METRIC[t]]:10.3f}" for t in tasks))
  print("bf16 vs float32, frame by frame (agree: IoU >= 0.99 / distance <= 1 px):")
  for k, s in agreement.items():
    print(
      f"  {k:9s} mean {s['mean']:.4f}  worst {s['worst']:.4f}  "
      f"agree {100 * s['agree_fraction']:.1f}% of {s['n']}"
    )
  if a.json:
    tmp = a.json + ".tmp"  # whole file, then rename
    with open(tmp, "w") as fh:
      json.dump(res, fh, indent=1)
    os.replace(tmp, a.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
