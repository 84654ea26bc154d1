"""What a PERFECT model could score on the demo's held-out videos, per model input size S.

A perfect model still writes its masks and points through the S/4 x S/4 low-res logit grid and
the reference's output formats (integer box lines). This bench builds those logits from the
ground truth and scores them with eval.py's scorers, the way `make demo` scores the trained
model:

  mask   per object, the ground truth area-averaged onto the low-res grid, logit = p - 0.5,
         upsampled like the predictor -> the davis2017 J&F ceiling;
  box    the ground-truth box, written as track.py writes it -> the OPE success AUC ceiling;
  point  a sharp peak on the low-res grid centred on the true point, read with track.py's
         `argmax` (the reference's readout: snaps to the grid) and `window_soft_argmax` (the
         demo's readout; a global `soft_argmax` gives the same on one clean peak) -> delta_avg.

  python bench/demo_ceiling.py [--seed 0] [--videos 6] [--sizes 64,96,128,256] [--suite normal]
  python bench/demo_ceiling.py --smoke     # seconds: 1 short video, S = 64 only

The demo's acceptance thresholds (J&F 0.75, AUC 0.65, delta_avg 0.65) can only be met by a
size whose ceiling is above them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile

import numpy as np
from _smoke import parse_args

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = {"videos": 1, "frames": 6, "sizes": "64"}  # --smoke defaults


def _up(low, hw, antialias=False):
  import jax.numpy as jnp

  from sam2pp_jax.model.resize import resize_bilinear

  return resize_bilinear(jnp.asarray(low, jnp.float32)[..., None], hw, antialias)[..., 0]


def _peak_logits(xy_model, s, sharp=4.0):
  """[N,L,L] logits peaking at model pixels xy [N,2] (low-res node i is model 4i + 1.5)."""
  l = s // 4
  g = (np.arange(l) + 0.5) * 4.0 - 0.5
  d2 = (g[None, None, :] - xy_model[:, 0, None, None]) ** 2 + (
    g[None, :, None] - xy_model[:, 1, None, None]
  ) ** 2
  return (-sharp * d2 / 16.0).astype(np.float32)


def write_oracle(videos, paths, out, s):
  """Prediction folders of a perfect model at input size s (see the module doc)."""
  from sam2pp_jax.tracking.outputs import (
    ids_from_logits,
    write_box_txt,
    write_mask_dir,
    write_points_npz,
    xyxy_to_xywh_int,
  )
  from sam2pp_jax.tracking.point_readout import read_points

  outs = {k: os.path.join(out, f"pred_{k}") for k in ("mask", "box", "point", "point_soft")}
  for d in outs.values():
    os.makedirs(d, exist_ok=True)
  l = s // 4
  for name, v in videos:
    t_, h, w = v["masks"].shape
    obj_ids = [int(o) for o in np.unique(v["masks"][0]) if o]
    onehot = np.stack([(v["masks"] == o) for o in obj_ids], 1).astype(np.float32)  # [T,O,H,W]
    low = np.asarray(_up(onehot.reshape(-1, h, w), (l, l), antialias=True))
    logits = np.asarray(_up(low - 0.5, (h, w))).reshape(t_, len(obj_ids), h, w)
    write_mask_dir(
      os.path.join(outs["mask"], name),
      [f"{t:05d}" for t in range(t_)],
      (ids_from_logits(logits[t], obj_ids) for t in range(t_)),
    )
    b = np.nan_to_num(v["boxes_xywh"][:, 0].astype(np.float64))
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
    write_box_txt(os.path.join(outs["box"], name + ".txt"), xyxy_to_xywh_int(xyxy))
    gt = np.load(os.path.join(paths["gt_point"], name + ".npz"))
    trajs, vis = gt["trajs_2d"], gt["visibs"]
    xy_model = trajs.reshape(-1, 2) * np.array([s / w, s / h])
    low_pt = _peak_logits(xy_model, s)
    video = _up(low_pt, (h, w))
    for key, readout in (("point", "argmax"), ("point_soft", "window_soft_argmax")):
      pts = np.asarray(read_points(readout, low_pt, video, s, (h, w)), np.float32)
      write_points_npz(
        os.path.join(outs[key], name + ".npz"), pts.reshape(trajs.shape), vis, (w, h)
      )
  return outs


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seed", type=int, default=0, help="DEMO_SEED of the held-out videos")
  ap.add_argument("--videos", type=int, default=6)
  ap.add_argument("--suite", default="normal", help="held-out suite (synthetic.SUITES)")
  ap.add_argument("--video-size", type=int, default=None, help="video side (default: suite's)")
  ap.add_argument("--sizes", default="64,96,128,256", help="model input sizes S (demo: 64)")
  ap.add_argument("--frames", type=int, default=None, help="frames per video (default: suite's)")
  args = parse_args(ap, argv, SMOKE)
  from sam2pp_jax import demo
  from sam2pp_jax.eval.score import score

  sizes = [int(x) for x in args.sizes.split(",")]
  bad = [x for x in sizes if x < 16 or x % 16]
  if bad:
    ap.error(f"--sizes {bad}: model input sizes must be multiples of 16")
  videos = demo.held_out_videos(
    args.seed, args.videos, frames=args.frames, size=args.video_size, suite=args.suite
  )
  t_, vh, vw = videos[0][1]["masks"].shape
  print(
    f"perfect-model ceilings, {args.videos} held-out {args.suite} videos of {t_} frames, "
    f"seed {args.seed}, {vw}x{vh} video"
  )
  print(
    f"{'S':>5} {'grid':>6} {'J&F':>7} {'AUC':>7} {'delta_avg argmax':>17} "
    f"{'delta_avg window_soft_argmax':>29}"
  )
  with tempfile.TemporaryDirectory() as tmp:
    paths = demo.write_held_out(os.path.join(tmp, "heldout"), videos)
    for s in sizes:
      outs = write_oracle(videos, paths, os.path.join(tmp, f"s{s}"), s)
      with contextlib.redirect_stdout(io.StringIO()):
        jf = score("mask", "davis2017", paths["gt_mask"], outs["mask"])["overall"]["J&F-Mean"]
        auc = score("box", "ope", paths["gt_box"], outs["box"])["overall"]["AUC"] / 100.0
        d_arg, d_soft = (
          score("point", "tapvid", paths["gt_point"], outs[k])["overall"][
            "average_pts_within_thresh"
          ]
          for k in ("point", "point_soft")
        )
      print(
        f"{s:>5} {s // 4:>4}^2 {jf:>7.3f} {auc:>7.3f} {d_arg:>17.3f} {d_soft:>29.3f}", flush=True
      )
  print("demo thresholds: J&F 0.75, AUC 0.65, delta_avg 0.65 (the demo's model: S = 64)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
