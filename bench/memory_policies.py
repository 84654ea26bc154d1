"""Memory policies: what each costs (time, memory) and what it buys (quality on the hard suite).

    python bench/memory_policies.py --cost-presets parity_small,b+ --quality-checkpoint \
        checkpoints/tiny --suite hard --videos 6
    python bench/memory_policies.py --smoke     # seconds: tiny preset, 2 short videos

Cost (random weights, one synthetic video of --frames frames, 2 objects, mask task): per
policy, the steady-state time per tracked frame of `track_video` (best of --repeats calls after
a compile call) and the XLA temp bytes of the compiled chunk step (`memory_analysis()` of the
scan's one compiled function: what the policy's extra state and candidate work add), both as
ratios to `sam2` measured in the same run, calls interleaved policy by policy.

Quality (a trained checkpoint; the demo's held-out videos of `--suite` from `--seed`): every
policy tracks every video at all three granularities with track.py's `main --memory NAME`;
J&F (davis2017), success AUC (OPE) and delta_avg (TAP-Vid, argmax readout) from eval's
scorers, plus the re-detection rate: of the target's reappearances after >= 3 frames fully
hidden (ground truth), the fraction where the mask task's prediction reaches IoU >= 0.5 within
5 frames of the reappearance. The copy-first-frame baseline is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from _smoke import parse_args

from sam2pp_jax import demo
from sam2pp_jax.checkpoint import save_model
from sam2pp_jax.io.atomic import atomic_write_text
from sam2pp_jax.io.png import read_palette_png
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.tracking import cli as track_cli
from sam2pp_jax.tracking import propagate
from sam2pp_jax.tracking.memory import POLICIES, get_policy, parse_options
from sam2pp_jax.tracking.step import new_bank

SMOKE = {
  "cost_presets": "tiny",
  "frames": 5,
  "repeats": 1,
  "quality_checkpoint": "",
  "videos": 2,
  "quality_frames": 6,
  "tasks": "mask",
  "memory_opt": ["dam4sam.max_ram=1", "dam4sam.max_drm=1"],  # the tiny model's ring: 2 slots
}
REDETECT_HIDDEN = 3  # frames fully hidden before a reappearance counts
REDETECT_WITHIN = 5  # frames after the reappearance in which IoU >= 0.5 must be reached


def _video(size: int, frames: int):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((frames, size, size, 3)).astype(np.float32)
  masks = np.zeros((2, size, size), bool)
  masks[0, size // 8 : size // 2, size // 8 : size // 2] = True
  masks[1, size // 2 :, size // 3 :] = True
  return x, masks


def cost(presets, policies, frames: int, repeats: int) -> list:
  """Per preset and policy: seconds per frame, XLA temp bytes of the chunk step."""
  rows = []
  for preset in presets:
    model = build_model(preset)
    params = random_params(model, 0)
    s = int(model.config.image_size)
    x, masks = _video(s, frames)
    run = lambda p, model=model, params=params, x=x, s=s, masks=masks: propagate.track_video(
      model, params, x, (s, s), "mask", {"mask": masks}, memory=p, video_res=False
    )
    times = {p.name: [] for p in policies}
    for p in policies:  # compile call
      run(p)
    for _ in range(repeats):
      for p in policies:  # interleaved steady-state calls
        t0 = time.perf_counter()
        jax.block_until_ready(run(p)["low_res_mask_logits"])
        times[p.name].append((time.perf_counter() - t0) / frames)
    for p in policies:
      bank = new_bank(model, 2 * p.rows_per_object, 2, p)  # SAM2Long: K rows per object
      chunk = min(4, frames - 1)
      lowered = propagate._chunk_step.lower(
        model,
        params,
        bank,
        jnp.asarray(x[:chunk]),
        jnp.arange(1, chunk + 1, dtype=jnp.int32),
        jnp.ones((chunk,), bool),
        task="mask",
        num_frames=frames,
        encoded=False,
        memory=p,
      )
      mem = lowered.compile().memory_analysis()
      temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
      rows.append(
        {"preset": preset, "policy": p.name, "s_per_frame": min(times[p.name]), "temp": temp}
      )
  base = {r["preset"]: r for r in rows if r["policy"] == "sam2"}
  for r in rows:
    b = base[r["preset"]]
    r["time_ratio"] = r["s_per_frame"] / b["s_per_frame"]
    r["temp_ratio"] = r["temp"] / b["temp"] if b["temp"] else float("nan")
  return rows


def _iou(a, b) -> float:
  u = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / u) if u else 1.0


def redetection(paths: dict, pred_mask_dir: str, videos) -> tuple:
  """(re-detected, reappearances) of object 1 over the videos (see the module docstring)."""
  hit = total = 0
  for name, v in videos:
    vis = v["visible"][:, 0]
    t_total = len(vis)
    hidden = 0
    for t in range(t_total):
      if not vis[t]:
        hidden += 1
        continue
      if hidden >= REDETECT_HIDDEN and t > hidden:  # a reappearance (not the start)
        total += 1
        for u in range(t, min(t + REDETECT_WITHIN, t_total)):
          gt = v["masks"][u] == 1
          pred, _ = read_palette_png(os.path.join(pred_mask_dir, name, f"{u:05d}.png"))
          if _iou(pred == 1, gt) >= 0.5:
            hit += 1
            break
      hidden = 0
  return hit, total


def _track(ckpt, paths, out, policy, tasks, options=None) -> dict:
  """Every video at the granularities `tasks` with track.py --memory (argmax point readout);
  the other tasks get the copy-first-frame predictions."""
  outs = {t: os.path.join(out, f"{policy}_{t}") for t in tasks}
  opts = [a for k, v in (options or {}).items() for a in ("--memory-opt", f"{k}={v}")]
  for name, vd in paths["videos"]:
    common = ["--checkpoint", ckpt, "--video", vd, "--quiet", "--memory", policy, *opts]
    b = demo._first_box_xyxy(paths, name)
    prompts = {
      "mask": os.path.join(paths["gt_mask"], "Annotations", name, "00000.png"),
      "box": ",".join(f"{x}" for x in b),
      "point": os.path.join(paths["gt_point"], name + ".npz"),
    }
    for task in tasks:
      prompt = prompts[task]
      rc = track_cli.main([*common, "--task", task, "--prompt", prompt, "--out", outs[task]])
      if rc:
        raise RuntimeError(f"track.py --memory {policy} failed on {name} ({task})")
  return outs


def quality(
  ckpt: str, policies, suite: str, seed: int, count: int, frames=None, tasks=None, options=None
):
  videos = demo.held_out_videos(seed, count, frames=frames, suite=suite)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    paths = demo.write_held_out(os.path.join(tmp, "data"), videos)
    copy_outs = demo.write_copy_baseline(paths, tmp)
    copy = demo.score_all(paths, copy_outs, verbose=False)
    hit, tot = redetection(paths, os.path.join(tmp, "copy_mask"), videos)
    rows.append(dict(policy="copy-first-frame", **copy, redetect=hit / tot if tot else None, n=tot))
    for p in policies:
      pred = os.path.join(tmp, "pred")
      outs = dict(copy_outs, **_track(ckpt, paths, pred, p, tasks, (options or {}).get(p)))
      res = demo.score_all(paths, outs, verbose=False)
      for task, key in (("mask", "J&F"), ("box", "AUC"), ("point", "delta_avg")):
        if task not in tasks:
          res[key] = float("nan")
      hit, tot = redetection(paths, outs["mask"], videos) if "mask" in tasks else (0, 0)
      rows.append(dict(policy=p, **res, redetect=hit / tot if tot else None, n=tot))
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policy names")
  ap.add_argument("--cost-presets", default="parity_small", help="'' skips the cost table")
  ap.add_argument("--frames", type=int, default=9, help="frames of the cost video")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--quality-checkpoint", default="checkpoints/tiny", help="'' skips quality")
  ap.add_argument("--suite", default="hard")
  ap.add_argument("--seed", type=int, default=0, help="held-out seed (as make demo's)")
  ap.add_argument("--videos", type=int, default=6)
  ap.add_argument("--quality-frames", type=int, default=None, help="override the suite's")
  ap.add_argument("--tasks", default="mask,box,point", help="quality: tasks to track")
  ap.add_argument(
    "--memory-opt",
    action="append",
    default=[],
    metavar="POLICY.KEY=VALUE",
    help="a policy option for both tables (repeatable), e.g. dam4sam.max_ram=1 for a model "
    "whose ring has 2 slots",
  )
  ap.add_argument("--json", default=None, help="also write the tables here")
  args = parse_args(ap, argv, SMOKE)
  names = [n for n in args.policies.split(",") if n]
  options = {}
  for item in args.memory_opt:
    policy, dot, kv = item.partition(".")
    if not dot or "=" not in kv:
      print(f"error: --memory-opt {item!r}: write it as POLICY.KEY=VALUE", file=sys.stderr)
      return 2
    options.setdefault(policy, {}).update(parse_options([kv]))
  stray = sorted(set(options) - set(names))
  if stray:
    print(f"error: --memory-opt for {stray}, not among --policies {names}", file=sys.stderr)
    return 2
  try:
    policies = [get_policy(n, **options.get(n, {})) for n in names]
  except ValueError as e:
    print(f"error: --policies / --memory-opt: {e}", file=sys.stderr)
    return 2
  if "sam2" not in names:
    print("error: --policies must include sam2 (the baseline of every ratio)", file=sys.stderr)
    return 2
  report = {}
  presets = [p for p in args.cost_presets.split(",") if p]
  if presets:
    rows = cost(presets, policies, args.frames, args.repeats)
    report["cost"] = rows
    print(f"cost: mask task, 2 objects, {args.frames} frames, best of {args.repeats}")
    print(f"{'preset':<14}{'policy':<10}{'ms/frame':>10}{'x sam2':>8}{'temp MiB':>10}{'x sam2':>8}")
    for r in rows:
      print(
        f"{r['preset']:<14}{r['policy']:<10}{1e3 * r['s_per_frame']:>10.1f}"
        f"{r['time_ratio']:>8.2f}{r['temp'] / 2**20:>10.1f}{r['temp_ratio']:>8.2f}"
      )
  smoke_ckpt = None
  ckpt = args.quality_checkpoint
  if args.smoke and not ckpt:
    smoke_ckpt = tempfile.mkdtemp()
    model = build_model("tiny")
    save_model(os.path.join(smoke_ckpt, "m"), random_params(model, 0), model.config)
    ckpt = os.path.join(smoke_ckpt, "m")
  if ckpt:
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or not set(tasks) <= {"mask", "box", "point"}:
      print(f"error: --tasks {args.tasks!r}: choose from mask, box, point", file=sys.stderr)
      return 2
    rows = quality(
      ckpt,
      names,
      args.suite,
      args.seed,
      args.videos,
      args.quality_frames,
      tasks=tasks,
      options=options,
    )
    report["quality"] = rows
    print(f"\nquality: suite {args.suite}, seed {args.seed}, {args.videos} videos, {ckpt}")
    print(f"{'policy':<18}{'J&F':>7}{'AUC':>7}{'d_avg':>7}{'re-detect':>14}")
    for r in rows:
      red = "n/a" if r["redetect"] is None else f"{r['redetect']:.2f} ({r['n']})"
      print(f"{r['policy']:<18}{r['J&F']:>7.3f}{r['AUC']:>7.3f}{r['delta_avg']:>7.3f}{red:>14}")
  if smoke_ckpt is not None:
    shutil.rmtree(smoke_ckpt, ignore_errors=True)
  if args.json:
    atomic_write_text(args.json, json.dumps(report, indent=1, default=float) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
