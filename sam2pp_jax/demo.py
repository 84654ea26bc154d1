"""`make demo`: the main job on the built-in default, end to end, in a few minutes of CPU.

1. fine-tune the shipped small checkpoint (checkpoints/tiny, trained from scratch by
   `configs/train.py:pretrain_tiny`) for a few minutes on synthetic video with
   `train.py --config configs/train.py:finetune_tiny --config.init_from=checkpoints/tiny`
   (a subprocess: the same command a user runs);
2. generate held-out synthetic videos of a new seed (`DEMO_SEED`, suite "normal" by default);
3. track every held-out video at all three granularities with track.py's `main` (mask from the
   frame-0 masks, box from object 1's frame-0 box, points from the frame-0 keypoints), overlay
   videos for the first one;
4. score with eval.py (davis2017 J&F, OPE success AUC, TAP-Vid delta_avg) beside the
   copy-first-frame baseline (the frame-0 prompt repeated on every frame) and print
   `demo: J&F=<x> AUC=<x> delta_avg=<x> train_minutes=<x>`. Points are read with
   `--point-readout` (default window_soft_argmax, sub-pixel); the reference's argmax is printed
   too.

`--scratch` (make demo-scratch) trains the `demo` recipe from scratch instead (10 minutes) for
those who want to watch it learn.

  python -m sam2pp_jax.demo [--seed N] [--videos K] [--suite normal|hard] [--workdir DIR]
                            [--checkpoint DIR] [--train-minutes M] [--scratch | --no-train]
                            [--point-readout argmax|soft_argmax|window_soft_argmax]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np

from sam2pp_jax.data import synthetic
from sam2pp_jax.eval.score import format_table, score
from sam2pp_jax.io.atomic import atomic_write_bytes
from sam2pp_jax.io.png import read_palette_png, save_palette_png
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.tracking import cli as track_cli
from sam2pp_jax.tracking.outputs import write_box_results, write_mask_dir, write_points_npz
from sam2pp_jax.tracking.point_readout import READOUTS
from sam2pp_jax.train.recipes import SHIPPED_CHECKPOINT, get_train_config
from sam2pp_jax.train.trainer import train

HELD_OUT_BASE = 1_000_003  # held-out videos: generate_dataset(HELD_OUT_BASE + DEMO_SEED)
DEFAULT_READOUT = "window_soft_argmax"


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_out_videos(seed: int, count: int, frames: int = None, size: int = None, suite="normal"):
  """The evaluation videos of a suite (synthetic.SUITES; frames / size override it), from
  seeds disjoint from training's."""
  if suite not in synthetic.SUITES:
    raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(synthetic.SUITES)}")
  spec = synthetic.SUITES[suite]
  size = int(size or spec["size"])
  return list(
    synthetic.generate_dataset(
      HELD_OUT_BASE + int(seed),
      count,
      num_frames=int(frames or spec["num_frames"]),
      height=size,
      width=size,
      difficulty=spec["difficulty"],
    )
  )


def write_held_out(root: str, videos) -> dict:
  """Frames as JPEG folders plus each task's prompt and ground truth in the scorers' layouts."""
  paths = {
    "videos": [],
    "gt_mask": os.path.join(root, "gt_mask"),
    "gt_box": os.path.join(root, "gt_box"),
    "gt_point": os.path.join(root, "gt_point"),
  }
  for name, v in videos:
    vd = os.path.join(root, "videos", name)
    os.makedirs(vd, exist_ok=True)
    for t, f in enumerate(v["frames"]):
      cv2.imwrite(os.path.join(vd, f"{t:05d}.jpg"), f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    paths["videos"].append((name, vd))
    t_, h, w = v["masks"].shape
    # mask: palette PNGs of visible objects; the prompt is frame 0
    md = os.path.join(paths["gt_mask"], "Annotations", name)
    os.makedirs(md, exist_ok=True)
    for t in range(t_):
      save_palette_png(os.path.join(md, f"{t:05d}.png"), v["masks"][t].astype(np.uint8))
    # box: object 1, GOT-10k layout (absent frames 0,0,0,0 + absence/cover labels)
    bd = os.path.join(paths["gt_box"], name)
    os.makedirs(bd, exist_ok=True)
    b = v["boxes_xywh"][:, 0].astype(np.float64)
    vis = v["visible"][:, 0] & np.isfinite(b).all(1)
    b = np.where(vis[:, None], b, 0.0)
    atomic_write_bytes(
      os.path.join(bd, "groundtruth.txt"),
      "".join(",".join(f"{x:.4f}" for x in row) + "\n" for row in b).encode(),
    )
    atomic_write_bytes(
      os.path.join(bd, "absence.label"), "".join(f"{int(not x)}\n" for x in vis).encode()
    )
    atomic_write_bytes(
      os.path.join(bd, "cover.label"), "".join(f"{8 if x else 0}\n" for x in vis).encode()
    )
    atomic_write_bytes(os.path.join(bd, "cut_by_image.label"), ("0\n" * t_).encode())
    atomic_write_bytes(
      os.path.join(bd, "meta_info.ini"), f"[METAINFO]\nresolution: ({w}, {h})\n".encode()
    )
    # point: every keypoint of the objects, TAP-Vid npz (query = first visible frame)
    pts = v["points_xy"].reshape(t_, -1, 2)
    pvis = v["point_visible"].reshape(t_, -1)
    keep = pvis[0]  # tracks queried on frame 0 (online protocol)
    os.makedirs(paths["gt_point"], exist_ok=True)
    write_points_npz(
      os.path.join(paths["gt_point"], name + ".npz"), pts[:, keep], pvis[:, keep], (w, h)
    )
  names = [n for n, _ in videos]
  atomic_write_bytes(
    os.path.join(paths["gt_box"], "list.txt"), "".join(n + "\n" for n in names).encode()
  )
  return paths


def _first_box_xyxy(paths: dict, name: str) -> np.ndarray:
  b = np.loadtxt(os.path.join(paths["gt_box"], name, "groundtruth.txt"), delimiter=",")[0]
  return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], np.float64)


def write_copy_baseline(paths: dict, out: str) -> dict:
  """The copy-first-frame baseline in the trackers' output layouts: every frame's prediction
  is the frame-0 prompt (mask PNG, box, keypoints, all points visible)."""
  outs = {t: os.path.join(out, f"copy_{t}") for t in TASKS}
  for name, vd in paths["videos"]:
    frames = sorted(f for f in os.listdir(vd) if f.endswith(".jpg"))
    first, _ = read_palette_png(os.path.join(paths["gt_mask"], "Annotations", name, "00000.png"))
    write_mask_dir(os.path.join(outs["mask"], name), frames, (first for _ in frames))
    os.makedirs(outs["box"], exist_ok=True)
    box = _first_box_xyxy(paths, name)
    write_box_results(os.path.join(outs["box"], name + ".txt"), np.tile(box, (len(frames), 1)))
    gt = np.load(os.path.join(paths["gt_point"], name + ".npz"))
    trajs = np.broadcast_to(gt["trajs_2d"][:1], gt["trajs_2d"].shape)
    os.makedirs(outs["point"], exist_ok=True)
    write_points_npz(
      os.path.join(outs["point"], name + ".npz"),
      trajs,
      np.ones(gt["visibs"].shape, bool),
      gt["size"],
    )
  return outs


def other_readout(point_readout: str) -> str:
  """The point readout the demo reports beside the chosen one (the reference's argmax)."""
  return "soft_argmax" if point_readout == "argmax" else "argmax"


def track_all(ckpt: str, paths: dict, out: str, quiet: bool, point_readout: str) -> dict:
  """track.py's `main` (in-process, so compiled functions are reused) for every video and task;
  the point task twice: `point` with `point_readout`, `point_other` with the other readout."""
  other = other_readout(point_readout)
  outs = {t: os.path.join(out, f"pred_{t}") for t in TASKS}
  outs["point_other"] = os.path.join(out, f"pred_point_{other}")
  for i, (name, vd) in enumerate(paths["videos"]):
    viz = ["--viz"] if i == 0 else []
    common = ["--checkpoint", ckpt, "--video", vd] + (["--quiet"] if quiet else [])
    track = lambda task, prompt, key, *extra, common=common: track_cli.main(
      [*common, "--task", task, "--prompt", prompt, "--out", outs[key], *extra]
    )
    b = _first_box_xyxy(paths, name)
    rc = track(
      "mask", os.path.join(paths["gt_mask"], "Annotations", name, "00000.png"), "mask", *viz
    )
    rc |= track("box", ",".join(f"{x}" for x in b), "box", *viz)
    for key, readout in (("point", point_readout), ("point_other", other)):
      rc |= track(
        "point",
        os.path.join(paths["gt_point"], name + ".npz"),
        key,
        "--point-readout",
        readout,
        *(viz if key == "point" else []),
      )
    if rc:
      raise RuntimeError(f"track.py failed on {name}")
  return outs


def score_all(paths: dict, outs: dict, verbose: bool = True) -> dict:
  """J&F (davis2017), success AUC (OPE) and delta_avg (TAP-Vid) of one set of predictions."""
  r_mask = score("mask", "davis2017", paths["gt_mask"], outs["mask"])
  r_box = score("box", "ope", paths["gt_box"], outs["box"])
  r_pt = score("point", "tapvid", paths["gt_point"], outs["point"])
  if verbose:
    for r in (r_mask, r_box, r_pt):
      print(format_table(r, max_rows=8))
      print()
  res = {
    "J&F": r_mask["overall"]["J&F-Mean"],
    "AUC": r_box["overall"]["AUC"] / 100.0,
    "delta_avg": r_pt["overall"]["average_pts_within_thresh"],
  }
  if "point_other" in outs:
    r_other = score("point", "tapvid", paths["gt_point"], outs["point_other"])
    res["delta_avg_other"] = r_other["overall"]["average_pts_within_thresh"]
  return res


def comparison_table(model: dict, copy: dict) -> str:
  """The demo's summary: the model, the copy-first-frame baseline and their ratio."""
  keys = ("J&F", "AUC", "delta_avg")
  rows = [f"{'':<24}" + "".join(f"{k:>11}" for k in keys)]
  rows.append(f"{'copy first frame':<24}" + "".join(f"{copy[k]:>11.3f}" for k in keys))
  rows.append(f"{'sam2pp_jax (tiny)':<24}" + "".join(f"{model[k]:>11.3f}" for k in keys))
  ratio = lambda k: model[k] / copy[k] if copy[k] > 0 else float("inf")
  rows.append(f"{'x copy':<24}" + "".join(f"{ratio(k):>10.2f}x" for k in keys))
  return "\n".join(rows)


def finetune_command(ckpt: str, workdir: str, minutes: float, quiet: bool) -> list:
  """train.py's command line for the demo's fine-tune of `ckpt`."""
  root = _repo_root()
  cmd = [
    sys.executable,
    os.path.join(root, "train.py"),
    "--config",
    os.path.join(root, "configs", "train.py") + ":finetune_tiny",
    f"--config.init_from={ckpt}",
    f"--config.max_train_minutes={minutes:g}",
    f"--workdir={workdir}",
  ]
  return cmd + (["--quiet"] if quiet else [])


def _train_summary(workdir: str) -> tuple:
  """(steps, train minutes) of a finished run (train.py writes summary.json last)."""
  with open(os.path.join(workdir, "summary.json")) as f:
    s = json.load(f)
  return int(s["step"]), float(s["train_seconds"]) / 60.0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m sam2pp_jax.demo", description=__doc__.split("\n")[0])
  ap.add_argument(
    "--seed",
    type=int,
    default=int(os.environ.get("DEMO_SEED", "0")),
    help="seed of the held-out videos (env DEMO_SEED)",
  )
  ap.add_argument("--videos", type=int, default=6, help="held-out videos per task")
  ap.add_argument("--suite", default="normal", choices=tuple(synthetic.SUITES))
  ap.add_argument("--workdir", default=os.path.join(_repo_root(), ".demo"))
  ap.add_argument(
    "--checkpoint",
    default=os.path.join(_repo_root(), SHIPPED_CHECKPOINT),
    help="the checkpoint to fine-tune (default the shipped checkpoints/tiny)",
  )
  ap.add_argument(
    "--train-minutes",
    type=float,
    default=None,
    help="training budget (default 2 for the fine-tune, 10 with --scratch)",
  )
  ap.add_argument("--scratch", action="store_true", help="train the demo recipe from scratch")
  ap.add_argument(
    "--no-train",
    action="store_true",
    help="evaluate --checkpoint as it is (e.g. the shipped one, or a pretrain run's model/)",
  )
  ap.add_argument("--quiet", action="store_true")
  ap.add_argument(
    "--point-readout",
    default=os.environ.get("DEMO_POINT_READOUT", DEFAULT_READOUT),
    choices=READOUTS,
    help="point readout of the delta_avg on the last line (env DEMO_POINT_READOUT; default "
    f"{DEFAULT_READOUT}); the reference's argmax is printed above it",
  )
  args = ap.parse_args(argv)
  if args.videos < 1:
    ap.error("--videos must be >= 1")
  minutes = (
    args.train_minutes if args.train_minutes is not None else (10.0 if args.scratch else 2.0)
  )
  if minutes <= 0:
    ap.error("--train-minutes must be > 0")
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO

  t0 = time.time()
  if os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  train_dir = os.path.join(args.workdir, "train")
  model_dir = os.path.join(train_dir, "model")
  if args.no_train and args.scratch:
    ap.error("--no-train and --scratch exclude each other")
  if args.no_train:
    model_dir = os.path.abspath(args.checkpoint)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
      print(f"demo: error: no checkpoint at {model_dir} (config.json missing)", file=sys.stderr)
      return 2
    steps, train_minutes = 0, 0.0
    print(f"demo: evaluating {model_dir} without training", flush=True)
  elif args.scratch:
    cfg = get_train_config("demo")
    cfg.max_train_minutes = float(minutes)
    print(f"demo: training the tiny model from scratch for <= {minutes:g} minutes", flush=True)
    summary = train(cfg, train_dir, quiet=args.quiet)
    steps, train_minutes = summary["step"], summary["train_seconds"] / 60.0
  else:
    ckpt = os.path.abspath(args.checkpoint)
    if not os.path.isfile(os.path.join(ckpt, "config.json")):
      print(
        f"demo: error: no checkpoint at {ckpt} (config.json missing). The shipped one is "
        f"{SHIPPED_CHECKPOINT} in the repository (git lfs is not used; a clean clone has "
        "it); pass --checkpoint DIR or run with --scratch",
        file=sys.stderr,
      )
      return 2
    cmd = finetune_command(ckpt, train_dir, minutes, args.quiet)
    print(f"demo: fine-tuning {os.path.relpath(ckpt)} for <= {minutes:g} minutes:", flush=True)
    print("  " + " ".join(os.path.relpath(c) if os.path.isabs(c) else c for c in cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc:
      print(f"demo: error: train.py exited with {rc}", file=sys.stderr)
      return 2
    steps, train_minutes = _train_summary(train_dir)
  if not args.no_train:
    print(f"demo: {steps} steps in {train_minutes:.2f} train minutes", flush=True)

  data = os.path.join(args.workdir, "heldout")
  paths = write_held_out(data, held_out_videos(args.seed, args.videos, suite=args.suite))
  print(
    f"demo: tracking {args.videos} held-out {args.suite} videos (seed {args.seed}) at three "
    "granularities",
    flush=True,
  )
  results = os.path.join(args.workdir, "results")
  outs = track_all(model_dir, paths, results, args.quiet, args.point_readout)
  scores = score_all(paths, outs, verbose=not args.quiet)
  copy = score_all(paths, write_copy_baseline(paths, results), verbose=False)
  other = other_readout(args.point_readout)
  print(comparison_table(scores, copy))
  print(
    f"demo: point readouts: delta_avg={scores['delta_avg']:.3f} ({args.point_readout}), "
    f"{scores['delta_avg_other']:.3f} ({other}; the argmax snaps to the model's "
    "S/4 logit grid, see bench/demo_ceiling.py)"
  )
  print(
    f"demo: overlays in {results}/pred_*/*_overlay.mp4; total {(time.time() - t0) / 60:.1f} min"
  )
  print(
    f"demo: J&F={scores['J&F']:.3f} AUC={scores['AUC']:.3f} "
    f"delta_avg={scores['delta_avg']:.3f} train_minutes={train_minutes:.2f}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
