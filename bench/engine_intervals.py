"""The data engine (sam2pp_jax/engine.py) against the key-frame interval, on synthetic videos.

    python bench/engine_intervals.py [--videos 3] [--frames 81] [--size 64]
                                     [--intervals 5,10,20,40] [--json OUT.json]
    python bench/engine_intervals.py --smoke     # seconds: 1 short video, one interval

Videos: the demo's held-out synthetic videos (`sam2pp_jax.demo.held_out_videos`, suite
"normal", seeds disjoint from training's) written with `write_held_out` (JPEG frames, GT in the
scorers' layouts). For each interval I the key frames are 0, I, 2I, ... and the last frame;
each key frame carries its ground truth (mask: every object's id map; box: object 1's box, a
key frame where it is absent is dropped from the box keys; point: every keypoint visible on
frame 0, `--key-every` style). The other frames are filled by
  engine nearest / engine score: `engine.fill_video` with the shipped checkpoint (one pair of
    passes per gap, fused by both rules; points read with --point-readout);
  copy nearest: the nearest key frame's annotation repeated (ties: the earlier key frame).
Only the filled frames are scored, with the scorers of eval.py:
  J&F   davis2017 on a GT folder holding frame 0, the filled frames and the last frame (the
        toolkit scores names[1:-1], i.e. exactly the filled frames);
  AUC   OPE success AUC (fraction) of the OPE per-frame IoUs (after its repairs) of the filled
        frames, averaged over videos as OPE does;
  delta TAP-Vid delta_avg (tapnet 'query first') on sequences cut to frame 0 (the query frame,
        not scored) + the filled frames.
Prints a markdown table interval x {engine nearest, engine score, copy nearest} x metric.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from _smoke import parse_args

SMOKE = {"videos": 1, "frames": 9, "intervals": "4"}  # --smoke defaults
METHODS = ("nearest", "score", "copy")
METHOD_NAMES = {"nearest": "engine nearest", "score": "engine score", "copy": "copy nearest"}


def key_schedule(num_frames: int, interval: int) -> list:
  """0, I, 2I, ... and the last frame."""
  return sorted(set(range(0, num_frames, interval)) | {num_frames - 1})


def video_keys(engine, task: str, video: dict, gt_point: str, keys: list):
  """The KeyFrames of one task from the ground truth on the scheduled key frames."""
  t_total, h, w = video["masks"].shape
  if task == "mask":
    ann = {k: video["masks"][k].astype(np.uint8) for k in keys}
    ids = sorted({int(v) for a in ann.values() for v in np.unique(a) if v})
    return engine.KeyFrames("mask", t_total, tuple(ids), ann)
  if task == "box":
    b, vis = video["boxes_xywh"][:, 0], video["visible"][:, 0]
    ann = {
      k: np.array([b[k, 0], b[k, 1], b[k, 0] + b[k, 2], b[k, 1] + b[k, 3]], np.float32)
      for k in keys
      if vis[k] and np.isfinite(b[k]).all() and (b[k, 2:] > 0).all()
    }
    return engine.KeyFrames("box", t_total, (1,), ann)
  return engine.read_point_keys(gt_point, t_total, (h, w), keys)


def filled_gt(paths: dict, names: list, scored: list, t_total: int, root: str) -> dict:
  """Ground truth restricted to the filled frames: mask folders of frames 0 + scored + last;
  point npz of frames 0 + scored."""
  out = {"mask": os.path.join(root, "gt_mask"), "point": os.path.join(root, "gt_point")}
  os.makedirs(out["point"], exist_ok=True)
  for name in names:
    src = os.path.join(paths["gt_mask"], "Annotations", name)
    dst = os.path.join(out["mask"], "Annotations", name)
    os.makedirs(dst, exist_ok=True)
    for t in [0] + scored + [t_total - 1]:
      shutil.copy(os.path.join(src, f"{t:05d}.png"), dst)
    subset_npz(os.path.join(paths["gt_point"], name + ".npz"), out["point"], [0] + scored)
  return out


def subset_npz(path: str, out_dir: str, frames: list) -> None:
  """A TAP-Vid npz cut to `frames` (same name under out_dir)."""
  from sam2pp_jax.tracking.outputs import write_points_npz

  with np.load(path) as z:
    write_points_npz(
      os.path.join(out_dir, os.path.basename(path)),
      z["trajs_2d"][frames],
      z["visibs"][frames],
      z["size"],
    )


def filled_auc(report: dict, scored: list) -> float:
  """OPE success AUC (fraction) over the filled frames only, from the report's per-frame IoUs."""
  from sam2pp_jax.eval.sot_metrics import OVERLAP_THRESHOLDS

  curves = []
  for pf in report["per_frame"].values():
    iou = np.asarray(pf["iou"], np.float64)[scored]
    curves.append((iou[:, None] > OVERLAP_THRESHOLDS[None]).mean(0))
  return float(np.mean(curves))


def predictions(engine, predictor, vf, keys, rules) -> dict:
  """{method: [per-frame result]} of the engine (both rules, one pair of passes) and the copy."""
  state = predictor.init_state(vf.frames)
  out = {r: [] for r in rules}
  for _, res in engine.fill_video(predictor, state, keys, rules):
    for r in rules:
      out[r].append(res[r])
  out["copy"] = [r for _, r in engine.copy_nearest(keys)]
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", default="checkpoints/tiny")
  ap.add_argument("--videos", type=int, default=3)
  ap.add_argument("--frames", type=int, default=81)
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--intervals", default="5,10,20,40")
  ap.add_argument("--point-readout", default="window_soft_argmax")
  ap.add_argument("--json", default=None, help="write the results here")
  ap.add_argument("--workdir", default=None, help="keep the videos and outputs here")
  args = parse_args(ap, argv, SMOKE)

  from sam2pp_jax import engine
  from sam2pp_jax.checkpoint import load_model
  from sam2pp_jax.demo import held_out_videos, write_held_out
  from sam2pp_jax.eval.score import score
  from sam2pp_jax.io.video import load_video
  from sam2pp_jax.model.presets import TASKS
  from sam2pp_jax.model.sam2pp import build_model
  from sam2pp_jax.tracking.predictor.video_predictor import VideoPredictor

  t_start = time.time()
  intervals = [int(v) for v in args.intervals.split(",") if v]
  root = args.workdir or tempfile.mkdtemp(prefix="engine_intervals_")
  videos = held_out_videos(args.seed, args.videos, args.frames, args.size, "normal")
  paths = write_held_out(os.path.join(root, "data"), videos)
  names = [n for n, _ in videos]
  config, params = load_model(args.checkpoint)
  model = build_model(config)
  predictors = {
    t: VideoPredictor(model, params, t, point_readout=args.point_readout) for t in TASKS
  }
  frames = {name: load_video(vd) for name, vd in paths["videos"]}
  t_total = args.frames
  rules = engine.FUSE_RULES
  results = {}
  for interval in intervals:
    keys_sched = key_schedule(t_total, interval)
    scored = [t for t in range(t_total) if t not in keys_sched]
    base = os.path.join(root, f"i{interval}")
    gt = filled_gt(paths, names, scored, t_total, os.path.join(base, "gt"))
    preds = {m: {t: os.path.join(base, m, t) for t in TASKS} for m in METHODS}
    for name, video in videos:
      vf = frames[name]
      hw = (vf.height, vf.width)
      gt_point = os.path.join(paths["gt_point"], name + ".npz")
      for task in TASKS:
        keys = video_keys(engine, task, video, gt_point, keys_sched)
        out = predictions(engine, predictors[task], vf, keys, rules)
        for m in METHODS:
          engine.write_dense(task, preds[m][task], name, vf.frame_names, hw, out[m])
          if task == "point":
            cut = preds[m]["point"] + "_filled"
            os.makedirs(cut, exist_ok=True)
            subset_npz(os.path.join(preds[m]["point"], name + ".npz"), cut, [0] + scored)
    row = {}
    for m in METHODS:
      r_mask = score("mask", "davis2017", gt["mask"], preds[m]["mask"])
      r_box = score("box", "ope", paths["gt_box"], preds[m]["box"])
      r_pt = score("point", "tapvid", gt["point"], preds[m]["point"] + "_filled")
      row[m] = {
        "J&F": r_mask["overall"]["J&F-Mean"],
        "AUC": filled_auc(r_box, scored),
        "delta_avg": r_pt["overall"]["average_pts_within_thresh"],
      }
    results[interval] = {"filled_frames": len(scored), "scores": row}
    print(f"interval {interval}: {json.dumps(row)}", file=sys.stderr)
  seconds = time.time() - t_start
  print(table(results))
  print(f"\n{len(names)} videos x {t_total} frames at {args.size} px, {seconds:.0f} s")
  if args.json:
    from sam2pp_jax.io.atomic import atomic_write_text

    doc = {
      "args": vars(args),
      "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
      "seconds": seconds,
      "results": {str(k): v for k, v in results.items()},
    }
    atomic_write_text(args.json, json.dumps(doc, indent=1))
  if args.workdir is None:
    shutil.rmtree(root, ignore_errors=True)
  return 0


def table(results: dict) -> str:
  """Markdown: one row per interval, metric x method columns."""
  metrics = ("J&F", "AUC", "delta_avg")
  head = ["interval", "filled"] + [f"{k} {METHOD_NAMES[m]}" for k in metrics for m in METHODS]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for interval, r in results.items():
    cells = [str(interval), str(r["filled_frames"])]
    for k in metrics:
      best = max(r["scores"][m][k] for m in METHODS)
      for m in METHODS:
        v = r["scores"][m][k]
        cells.append(f"**{v:.3f}**" if v == best else f"{v:.3f}")
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


if __name__ == "__main__":
  sys.exit(main())
