"""Scoring speed: 100 frames of 480p masks with 3 objects, davis2017 and sav protocols.

  python bench/eval_metrics.py [--frames 100] [--objects 3] [--repeat 3]
  python bench/eval_metrics.py --smoke     # seconds: 6 frames, one round

Writes a synthetic sequence (GT and a perturbed prediction, palette PNGs) to a temp folder, then
times our scorers end to end (PNG reading included) against a baseline in the same process: the
toolkits' procedure on full frames (per object: two full-frame boundary maps and two full-frame
dilations, IoU by boolean masks), as davis2017-evaluation does it.

It also times the palette PNG codecs on the same files (CPU time, codecs taking turns), as
ratios to the kept one, `sam2pp_jax.io.png` (numpy + zlib for 8-bit unfiltered palette PNGs,
Pillow for the other palette PNGs): Pillow alone, and OpenCV (read only: it cannot write palette
PNGs and decodes them to colours, mapped back to indices here). Every codec must decode the
same indices.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SMOKE = {"frames": 6, "repeat": 1, "codec_rounds": 1}  # --smoke defaults

from sam2pp_jax.eval import vos_metrics as vm  # noqa: E402
from sam2pp_jax.io.atomic import atomic_write_bytes  # noqa: E402
from sam2pp_jax.io.png import davis_palette, read_palette_png, save_palette_png  # noqa: E402


def make_sequence(root, frames, objects, h=480, w=854, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  centers = rng.uniform([100, 150], [h - 100, w - 150], (objects, 2))
  vel = rng.uniform(-3, 3, (objects, 2))
  radii = rng.uniform(40, 90, (objects, 2))
  for sub in ("gt/s", "pred/s"):
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


# ---------------------------------------------------------------- the other palette PNG codecs
def pillow_write(path, ids, pal):
  from PIL import Image

  im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
  im.putpalette(pal.tobytes(), "RGB")
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())


def pillow_read(path):
  from PIL import Image

  with Image.open(path) as im:
    return np.array(im), np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)


def opencv_read(path, pal):
  """OpenCV decodes a palette PNG to colours; map them back to indices (distinct palette)."""
  import cv2

  img = cv2.imread(path, cv2.IMREAD_COLOR)
  packed = (pal[:, 0].astype(np.int64) << 16) | (pal[:, 1].astype(np.int64) << 8) | pal[:, 2]
  key = (img[..., 2].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 0]
  order = np.argsort(packed)
  return order[np.searchsorted(packed[order], key)].astype(np.uint8)


def codec_timings(root, rounds):
  """{(codec, op): best CPU seconds} over the sequence's GT and prediction PNGs, the codecs
  taking turns in every round (fair under a varying machine load); checks equal indices."""
  paths = [
    os.path.join(root, d, "s", n)
    for d in ("gt", "pred")
    for n in sorted(os.listdir(os.path.join(root, "gt/s")))
  ]
  ids = [read_palette_png(p)[0] for p in paths]
  pal = davis_palette()
  for p, x in zip(paths, ids):
    assert np.array_equal(pillow_read(p)[0], x) and np.array_equal(opencv_read(p, pal), x), p
  tmp = os.path.join(root, "w")
  os.makedirs(tmp)
  targets = [os.path.join(tmp, f"{i:05d}.png") for i in range(len(paths))]
  runs = {
    ("io.png", "read"): lambda: [read_palette_png(p) for p in paths],
    ("pillow", "read"): lambda: [pillow_read(p) for p in paths],
    ("opencv", "read"): lambda: [opencv_read(p, pal) for p in paths],
    ("io.png", "write"): lambda: [save_palette_png(t, x, pal) for t, x in zip(targets, ids)],
    ("pillow", "write"): lambda: [pillow_write(t, x, pal) for t, x in zip(targets, ids)],
  }
  out = {k: float("inf") for k in runs}
  for _ in range(rounds):
    for k, fn in runs.items():
      t0 = time.process_time()
      fn()
      out[k] = min(out[k], time.process_time() - t0)
  ours = []
  for t, x in zip(targets, ids):
    save_palette_png(t, x, pal)
    ours.append(open(t, "rb").read())
  for t, x in zip(targets, ids):
    pillow_write(t, x, pal)
  out["same_bytes"] = ours == [open(t, "rb").read() for t in targets]
  return out


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
  ap.add_argument("--codec-rounds", type=int, default=7, help="interleaved codec timing rounds")
  ap.add_argument(
    "--smoke", action="store_true", help=f"seconds-long run of the same code path: {SMOKE}"
  )
  a = ap.parse_args()
  if a.smoke:  # smoke defaults; flags given explicitly still win
    ap.set_defaults(**SMOKE)
    a = ap.parse_args()
  with tempfile.TemporaryDirectory() as root:
    make_sequence(root, a.frames, a.objects)
    gt, pred = os.path.join(root, "gt"), os.path.join(root, "pred")
    t_davis, rep = best_of(lambda: vm.score_davis2017(gt, pred), a.repeat)
    t_sav, rep_sav = best_of(lambda: vm.score_sav(gt, pred), a.repeat)
    t_base, (bj, bf) = best_of(lambda: baseline_davis(root), a.repeat)
    t_read, _ = best_of(
      lambda: [
        read_palette_png(os.path.join(root, d, "s", n))
        for d in ("gt", "pred")
        for n in sorted(os.listdir(os.path.join(root, "gt/s")))
      ],
      a.repeat,
    )
    codecs = codec_timings(root, a.codec_rounds)
  print(f"sequence: {a.frames} frames 480x854, {a.objects} objects (best of {a.repeat})")
  print(f"  PNG reading alone (gt+pred):  {t_read:.3f} s")
  print(f"  davis2017 (ours):             {t_davis:.3f} s   J-Mean {rep['overall']['J-Mean']:.6f}")
  print(f"  sav (ours):                   {t_sav:.3f} s   J {rep_sav['overall']['J']:.4f}")
  print(f"  full-frame baseline:          {t_base:.3f} s   J-Mean {bj:.6f}")
  print(f"  speed-up davis2017 vs baseline: {t_base / t_davis:.2f}x")
  print(
    f"palette PNG codecs, {2 * a.frames} files, best CPU time of {a.codec_rounds} "
    "interleaved rounds (ratio to io.png, the kept codec; > 1 is slower):"
  )
  for op in ("read", "write"):
    base = codecs[("io.png", op)]
    for name in ("io.png", "pillow", "opencv"):
      if (name, op) in codecs:
        t = codecs[(name, op)]
        print(f"  {op:5} {name:13} {t:.3f} s   {t / base:.2f}x")
  print(f"  files written by io.png and by Pillow are byte-identical: {codecs['same_bytes']}")


if __name__ == "__main__":
  main()
