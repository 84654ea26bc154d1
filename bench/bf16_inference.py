"""bf16 inference against float32 on trained weights: quality and frame-by-frame agreement.

    python bench/bf16_inference.py [--videos 8] [--seed 0] [--suite normal]
    python bench/bf16_inference.py --smoke     # seconds: 1 short video

The shipped checkpoint (checkpoints/tiny, or --checkpoint) tracks the demo's held-out synthetic
videos (`sam2pp_jax.demo.held_out_videos`, seeds disjoint from training's) with track.py in
process, once with `--dtype float32` and once with `--dtype bfloat16` (bf16 matmuls and
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

SMOKE = {"videos": 1, "frames": 4}  # --smoke defaults


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


def _summary(values: list[float], agree) -> dict:
  v = np.asarray(values, np.float64)
  worst = v.min() if agree(1.0) else v.max()  # IoU: the smallest; distance: the largest
  return {
    "mean": float(v.mean()),
    "worst": float(worst),
    "agree_fraction": float(np.mean([agree(x) for x in v])),
    "n": len(v),
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--videos", type=int, default=8)
  ap.add_argument("--frames", type=int, default=None, help="frames per video (suite default)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--suite", default="normal")
  ap.add_argument("--checkpoint", default=None, help="default: the shipped checkpoints/tiny")
  ap.add_argument("--json", default=None, help="also write all numbers to this file")
  a = parse_args(ap, argv, SMOKE)

  from sam2pp_jax import demo
  from sam2pp_jax.tracking.outputs import box_float_path

  ckpt = a.checkpoint or os.path.join(demo._repo_root(), demo.SHIPPED_CHECKPOINT)
  if not os.path.isfile(os.path.join(ckpt, "config.json")):
    print(f"bf16_inference: error: no checkpoint at {ckpt} (config.json missing)", file=sys.stderr)
    return 2
  videos = demo.held_out_videos(a.seed, a.videos, frames=a.frames, suite=a.suite)
  res = {"checkpoint": os.path.abspath(ckpt), "videos": a.videos, "seed": a.seed}
  with tempfile.TemporaryDirectory(prefix="sam2pp_bf16_") as root:
    paths = demo.write_held_out(root, videos)
    outs = {}
    for dtype in ("float32", "bfloat16"):
      outs[dtype] = demo.track_all(
        ckpt, paths, os.path.join(root, dtype), True, demo.DEFAULT_READOUT, dtype=dtype
      )
      res[dtype] = demo.score_all(paths, outs[dtype], verbose=False)
    f32, b16 = outs["float32"], outs["bfloat16"]
    names = [n for n, _ in paths["videos"]]
    ious = sum(
      (_mask_ious(os.path.join(f32["mask"], n), os.path.join(b16["mask"], n)) for n in names), []
    )
    box = sum(
      (
        _box_ious(
          box_float_path(os.path.join(f32["box"], n + ".txt")),
          box_float_path(os.path.join(b16["box"], n + ".txt")),
        )
        for n in names
      ),
      [],
    )
    pts = sum(
      (
        _point_dists(os.path.join(f32["point"], n + ".npz"), os.path.join(b16["point"], n + ".npz"))
        for n in names
      ),
      [],
    )
  res["agreement"] = {
    "mask_iou": _summary(ious, lambda x: x >= 0.99),
    "box_iou": _summary(box, lambda x: x >= 0.99),
    "point_px": _summary(pts, lambda x: x <= 1.0),
  }
  print(f"# bench/bf16_inference.py: {a.videos} held-out videos (seed {a.seed}, suite {a.suite})")
  print(f"{'':10s} {'J&F':>7s} {'AUC':>7s} {'delta':>7s}")
  for dtype in ("float32", "bfloat16"):
    r = res[dtype]
    print(f"{dtype:10s} {r['J&F']:7.3f} {r['AUC']:7.3f} {r['delta_avg']:7.3f}")
  print("bf16 vs float32, frame by frame:")
  for k, s in res["agreement"].items():
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
