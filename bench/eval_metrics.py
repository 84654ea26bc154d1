"""Scoring speed: 100 frames of 480p masks with 3 objects, davis2017 and sav protocols.

  python bench/eval_metrics.py [--frames 100] [--objects 3] [--repeat 3]

Writes a synthetic sequence (GT and a perturbed prediction, palette PNGs) to a temp folder, then
times our scorers end to end (PNG reading included) against a baseline in the same process: the
toolkits' procedure on full frames (per object: two full-frame boundary maps and two full-frame
dilations, IoU by boolean masks), as davis2017-evaluation does it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sam2pp_jax.data.video_io import read_palette_png, save_palette_png  # noqa: E402
from sam2pp_jax.eval import vos_metrics as vm  # noqa: E402


def make_sequence(root, frames, objects, h=480, w=854, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  centers = rng.uniform([100, 150], [h - 100, w - 150], (objects, 2))
  vel = rng.uniform(-3, 3, (objects, 2))
  radii = rng.uniform(40, 90, (objects, 2))
  for sub, jitter in (("gt/s", 0.0), ("pred/s", 4.0)):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  for t in range(frames):
    gt = np.zeros((h, w), np.uint8)
    pred = np.zeros((h, w), np.uint8)
    for k in range(objects):
      c = centers[k] + vel[k] * t
      gt[((yy - c[0]) / radii[k, 0]) ** 2 + ((xx - c[1]) / radii[k, 1]) ** 2 <= 1] = k + 1
      c2 = c + rng.normal(0, 4.0, 2)
      pred[((yy - c2[0]) / radii[k, 0]) ** 2 + ((xx - c2[1]) / radii[k, 1]) ** 2 <= 1] = k + 1
    save_palette_png(os.path.join(root, "gt/s", f"{t:05d}.png"), gt)
    save_palette_png(os.path.join(root, "pred/s", f"{t:05d}.png"), pred)


def baseline_davis(root):
  """Full-frame per-object J and F (the toolkits' way), same frames and objects."""
  import cv2
  names = sorted(os.listdir(os.path.join(root, "gt/s")))
  k = int(read_palette_png(os.path.join(root, "gt/s", names[0]))[0].max())
  js, fs = [], []
  for n in names[1:-1]:
    g = read_palette_png(os.path.join(root, "gt/s", n))[0]
    p = read_palette_png(os.path.join(root, "pred/s", n))[0]
    kernel = vm.disk(vm.boundary_radius(g.shape))
    for obj in range(1, k + 1):
      gm, pm = g == obj, p == obj
      union = np.sum(gm | pm)
      js.append(1.0 if union == 0 else np.sum(gm & pm) / union)
      bg, bp = vm.boundary_map(gm), vm.boundary_map(pm)
      dg = cv2.dilate(bg.astype(np.uint8), kernel)
      dp = cv2.dilate(bp.astype(np.uint8), kernel)
      prec = np.sum(bp * dg) / max(bp.sum(), 1)
      rec = np.sum(bg * dp) / max(bg.sum(), 1)
      fs.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
  return float(np.mean(js)), float(np.mean(fs))


def best_of(fn, repeat):
  times = []
  out = None
  for _ in range(repeat):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return min(times), out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--frames", type=int, default=100)
  ap.add_argument("--objects", type=int, default=3)
  ap.add_argument("--repeat", type=int, default=3)
  a = ap.parse_args()
  with tempfile.TemporaryDirectory() as root:
    make_sequence(root, a.frames, a.objects)
    gt, pred = os.path.join(root, "gt"), os.path.join(root, "pred")
    t_davis, rep = best_of(lambda: vm.score_davis2017(gt, pred), a.repeat)
    t_sav, rep_sav = best_of(lambda: vm.score_sav(gt, pred), a.repeat)
    t_base, (bj, bf) = best_of(lambda: baseline_davis(root), a.repeat)
    t_read, _ = best_of(lambda: [read_palette_png(os.path.join(root, d, "s", n))
                                 for d in ("gt", "pred")
                                 for n in sorted(os.listdir(os.path.join(root, "gt/s")))],
                        a.repeat)
  print(f"sequence: {a.frames} frames 480x854, {a.objects} objects (best of {a.repeat})")
  print(f"  PNG reading alone (gt+pred):  {t_read:.3f} s")
  print(f"  davis2017 (ours):             {t_davis:.3f} s   J-Mean {rep['overall']['J-Mean']:.6f}")
  print(f"  sav (ours):                   {t_sav:.3f} s   J {rep_sav['overall']['J']:.4f}")
  print(f"  full-frame baseline:          {t_base:.3f} s   J-Mean {bj:.6f}")
  print(f"  speed-up davis2017 vs baseline: {t_base / t_davis:.2f}x")


if __name__ == "__main__":
  main()
