"""`make demo`: the main job on the built-in default, end to end.

1. train the `tiny` preset from scratch on synthetic multi-granularity video (the `demo` recipe
   of sam2pp_jax/train/recipes.py, as configs/train.py:demo; at most 10 minutes of training
   steps on this CPU; compilation is not counted);
2. generate held-out synthetic videos from a different seed (`DEMO_SEED`), as hard as the
   training ones (textures, distractors, motion, scale change, deformation, occlusion);
3. track every held-out video at all three granularities with track.py's `main` (mask from the
   frame-0 masks, box from object 1's frame-0 box, points from the frame-0 keypoints), overlay
   videos for the first one;
4. score with eval.py (davis2017 J&F, OPE success AUC, TAP-Vid delta_avg) and print
   `demo: J&F=<x> AUC=<x> delta_avg=<x> train_minutes=<x>`. The point task is tracked with both
   point readouts (tracking/point_readout.py); the last line's delta_avg uses --point-readout
   (default the reference's argmax), the line above it gives both.

  python -m sam2pp_jax.demo [--seed N] [--videos K] [--workdir DIR] [--train-minutes M]
                            [--point-readout argmax|soft_argmax]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import cv2
import numpy as np

from sam2pp_jax.data import synthetic
from sam2pp_jax.eval.score import format_table, score
from sam2pp_jax.io.atomic import atomic_write_bytes
from sam2pp_jax.io.png import save_palette_png
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.tracking import cli as track_cli
from sam2pp_jax.tracking.outputs import write_points_npz
from sam2pp_jax.train.recipes import get_train_config
from sam2pp_jax.train.trainer import train

HELD_OUT_BASE = 1_000_003  # held-out videos: generate_dataset(HELD_OUT_BASE + DEMO_SEED)


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_out_videos(seed: int, count: int, frames: int = 24, size: int = 96):
  """The evaluation videos: same generator and difficulty as training, disjoint seeds."""
  return list(
    synthetic.generate_dataset(
      HELD_OUT_BASE + int(seed),
      count,
      num_frames=frames,
      height=size,
      width=size,
      difficulty="normal",
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


def other_readout(point_readout: str) -> str:
  """The point readout the demo reports beside the chosen one."""
  return "soft_argmax" if point_readout == "argmax" else "argmax"


def track_all(ckpt: str, paths: dict, out: str, quiet: bool, point_readout: str = "argmax") -> dict:
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
    b = np.loadtxt(os.path.join(paths["gt_box"], name, "groundtruth.txt"), delimiter=",")[0]
    rc = track(
      "mask", os.path.join(paths["gt_mask"], "Annotations", name, "00000.png"), "mask", *viz
    )
    rc |= track("box", f"{b[0]},{b[1]},{b[0] + b[2]},{b[1] + b[3]}", "box", *viz)
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


def score_all(paths: dict, outs: dict) -> dict:
  r_mask = score("mask", "davis2017", paths["gt_mask"], outs["mask"])
  r_box = score("box", "ope", paths["gt_box"], outs["box"])
  r_pt = score("point", "tapvid", paths["gt_point"], outs["point"])
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


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m sam2pp_jax.demo", description=__doc__.split("\n")[0])
  ap.add_argument(
    "--seed",
    type=int,
    default=int(os.environ.get("DEMO_SEED", "0")),
    help="seed of the held-out videos (env DEMO_SEED)",
  )
  ap.add_argument("--videos", type=int, default=6, help="held-out videos per task")
  ap.add_argument("--workdir", default=os.path.join(_repo_root(), ".demo"))
  ap.add_argument("--train-minutes", type=float, default=10.0)
  ap.add_argument("--quiet", action="store_true")
  ap.add_argument(
    "--point-readout",
    default=os.environ.get("DEMO_POINT_READOUT", "argmax"),
    choices=("argmax", "soft_argmax"),
    help="point readout of the delta_avg on the last line (env DEMO_POINT_READOUT;"
    " default the reference's argmax); the other one is printed above it",
  )
  args = ap.parse_args(argv)
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO

  t0 = time.time()
  if os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  cfg = get_train_config("demo")
  cfg.max_train_minutes = float(args.train_minutes)
  print(
    f"demo: training the tiny model on synthetic video for <= {args.train_minutes:g} "
    "minutes (plus compilation)",
    flush=True,
  )
  summary = train(cfg, os.path.join(args.workdir, "train"), quiet=args.quiet)
  train_minutes = summary["train_seconds"] / 60.0
  print(
    f"demo: {summary['step']} steps in {train_minutes:.2f} train minutes "
    f"(+{summary['compile_seconds']:.0f} s compile)",
    flush=True,
  )

  data = os.path.join(args.workdir, "heldout")
  paths = write_held_out(data, held_out_videos(args.seed, args.videos))
  print(
    f"demo: tracking {args.videos} held-out videos (seed {args.seed}) at three granularities",
    flush=True,
  )
  outs = track_all(
    summary["model_dir"],
    paths,
    os.path.join(args.workdir, "results"),
    args.quiet,
    args.point_readout,
  )
  scores = score_all(paths, outs)
  other = other_readout(args.point_readout)
  print(
    f"demo: point readouts: delta_avg={scores['delta_avg']:.3f} ({args.point_readout}), "
    f"{scores['delta_avg_other']:.3f} ({other}); the argmax snaps to the model's "
    f"{cfg.model.image_size // 4}x{cfg.model.image_size // 4} logit grid "
    "(bench/demo_ceiling.py: what that costs a perfect model)"
  )
  print(
    f"demo: overlays in {os.path.join(args.workdir, 'results')}/pred_*/*_overlay.mp4; "
    f"total {(time.time() - t0) / 60:.1f} min"
  )
  print(
    f"demo: J&F={scores['J&F']:.3f} AUC={scores['AUC']:.3f} "
    f"delta_avg={scores['delta_avg']:.3f} train_minutes={train_minutes:.2f}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
