"""Tracking throughput: the `lax.scan` path, the interactive predictor, and the PyTorch reference.

    python bench/propagate.py --presets parity_small,b+ --tasks mask,box,point --frames 8 \
        --repeats 2

    python bench/propagate.py --smoke     # seconds: tiny preset, box task, 3 frames, 1 repeat

For each preset and task, on a synthetic S x S video (`sam2pp_jax.data.synthetic`, one object,
written to a temporary folder of PNGs, so every side reads identical pixels and the resize to
S x S is the identity), with random weights (`sam2pp_jax.model.random_params`; the reference,
when timed, gets the *same* weights through `convert.key_map.flax_to_torch`):

* scan   : `sam2pp_jax.tracking.propagate.track_video` on the in-memory preprocessed frames.
           Call 1 = compile + run; calls 2..R+1 = steady state (best of them; the median is
           printed too). "compile" is call 1 minus the steady-state time. Frame loading (PNG
           decode + resize) is timed separately ("load") and added for the end-to-end
           comparison with the reference.
* scan16 : with --bf16, the scan path with bf16 compute (`build_model(preset, "bfloat16")`, the
           same float32 weights; track.py --dtype bfloat16), its fps ratio to float32's and the
           agreement of their logits.
* pred   : `sam2pp_jax.tracking.predictor.VideoPredictor` (SAM 2 API: init_state on the PNG
           folder + add_new_mask / add_new_points_or_box + propagate_in_video), if the module
           exists; otherwise a "not available" line.
* ref    : the reference `SAM2VideoPredictor_Plus` (torch CPU float32, 2 threads) via
           bench/_reference.py when $SAM2PLUS_REPO points at a checkout: init_state on the same
           PNG folder + the prompt call + propagate_in_video. No compile step; its first call is
           reported too (allocator / one-time warm-up).

After each side's first call, the steady-state calls are interleaved (scan, pred, ref, scan,
...) so that all sides see similar load on a shared machine. fps = frames / seconds. Ratios
are computed from the same run of this script: pred/scan always (when the predictor ran), and
ours/ref when the reference was timed:
  e2e  : (load + scan) and (pred) vs ref (init_state + prompt + propagate), all incl. PNG loading.
  model: scan (in-memory frames) vs ref minus the reference's own frame-loading time (measured
         separately with `sam2.utils.misc.load_video_frames` on the same folder).
With `--blocks`, each preset also gets a per-block table of one tracked frame (Hiera's
global and windowed blocks, neck, memory attention, decoder, memory encoder; ours and the
reference's; bench/profile_frame.py), stored under "blocks_s" in the JSON.

A sanity line compares our and the reference's video-resolution logits (same weights, same
frames): max |diff| and the IoU of the binarised masks over all frames.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from _smoke import parse_args

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TASKS = ("mask", "box", "point")
SMOKE = {  # --smoke
  "presets": "tiny",
  "tasks": "box",
  "frames": 3,
  "repeats": 1,
  "chunk": 2,
  "blocks": True,
  "bf16": True,
  "block_repeats": 1,
}


# -- inputs ------------------------------------------------------------------------------------
def make_video(seed: int, frames: int, size: int):
  """uint8 [T,S,S,3] video and bool [T,S,S] masks of its one object (`data.synthetic`)."""
  from sam2pp_jax.data.synthetic import generate_video

  v = generate_video(seed, num_frames=frames, height=size, width=size, num_objects=1)
  return v["frames"], v["masks"] == 1


def write_pngs(video_u8, folder: str) -> list[str]:
  from PIL import Image

  names = []
  for t, img in enumerate(video_u8):
    name = f"{t:05d}.png"
    Image.fromarray(img).save(os.path.join(folder, name), compress_level=1)
    names.append(name)
  return names


def prompts_from_mask(mask0: np.ndarray) -> dict:
  """Per-task prompts for one object from its frame-0 mask (video pixels)."""
  ys, xs = np.nonzero(mask0)
  box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
  # a point inside the object, away from integer truncation boundaries
  pt = np.array([[float(np.median(xs)) + 0.37, float(np.median(ys)) + 0.41]], np.float32)
  return {
    "mask": {"mask": mask0},
    "box": {"box_xyxy": box},
    "point": {"points_xy": pt, "point_labels": np.ones(1, np.int32)},
  }


def batched_prompt(task: str, p: dict) -> dict:
  """Our track_video prompt (object axis 1)."""
  if task == "mask":
    return {"mask": p["mask"][None]}
  if task == "box":
    return {"box_xyxy": p["box_xyxy"][None]}
  return {"points_xy": p["points_xy"][None], "point_labels": p["point_labels"][None]}


def _median(xs):
  return statistics.median(xs) if xs else float("nan")


# -- our scan path -----------------------------------------------------------------------------
def scan_run_once(model, params, frames, hw, task, prompt, chunk, encode="auto"):
  """One track_video call (returns numpy, i.e. synchronised): ({"total_s"}, logits [T,H,W])."""
  import jax

  from sam2pp_jax.tracking.propagate import track_video

  t0 = time.perf_counter()
  res = track_video(
    model, params, frames, hw, task, batched_prompt(task, prompt), chunk=chunk, encode=encode
  )
  jax.block_until_ready(res)
  return {"total_s": time.perf_counter() - t0}, res["video_res_mask_logits"][:, 0]


def time_load(folder, size, repeats):
  from sam2pp_jax.io.video import load_video_for_model

  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    load_video_for_model(folder, size)
    times.append(time.perf_counter() - t0)
  return _median(times)


# -- our interactive predictor ------------------------------------------------------------------
def predictor_class():
  """(VideoPredictor class or None, reason)."""
  try:
    from sam2pp_jax.tracking import predictor as pmod
  except ImportError as e:
    return None, f"sam2pp_jax.tracking.predictor not importable ({e})"
  cls = getattr(pmod, "VideoPredictor", None)
  if cls is None:
    return None, "sam2pp_jax.tracking.predictor has no VideoPredictor"
  return cls, ""


def make_predictor(cls, model, params, task):
  """Construct VideoPredictor with whichever of the usual signatures it accepts."""
  errors = []
  for args, kw in (
    ((model, params, task), {}),
    ((model, params), {"task": task}),
    ((model, params), {}),
  ):
    try:
      return cls(*args, **kw)
    except TypeError as e:
      errors.append(str(e))
  raise TypeError("cannot construct VideoPredictor: " + " | ".join(errors))


def predictor_run_once(pred, folder, task, prompt):
  t0 = time.perf_counter()
  state = pred.init_state(folder)
  t1 = time.perf_counter()
  if task == "mask":
    pred.add_new_mask(state, frame_idx=0, obj_id=1, mask=prompt["mask"])
  elif task == "box":
    pred.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=prompt["box_xyxy"])
  else:  # the point task's API (as the reference): click + its Gaussian heatmap
    pred.add_new_points_and_generate_gaussian_mask(
      state,
      frame_idx=0,
      obj_id=1,
      points=prompt["points_xy"],
      labels=prompt["point_labels"],
      radius=prompt["radius"],
      sigma=prompt["sigma"],
    )
  t2 = time.perf_counter()
  logits = {}
  for item in pred.propagate_in_video(state):
    frame_idx, masks = item[0], item[2]
    logits[int(frame_idx)] = np.asarray(masks).reshape((-1,) + np.shape(masks)[-2:])[0]
  t3 = time.perf_counter()
  return {
    "init_state_s": t1 - t0,
    "prompt_s": t2 - t1,
    "propagate_s": t3 - t2,
    "total_s": t3 - t0,
  }, np.stack([logits[i] for i in sorted(logits)])


# -- the PyTorch reference ---------------------------------------------------------------------
def ref_run_once(ref_pred, folder, names, task, prompt):
  import _reference

  ref_pred.task = task  # build_sam sets this attribute after construction: same effect
  o = _reference.run_once(ref_pred, folder, names, task, prompt)
  return o, o.pop("video_res_logits")


# -- reporting ---------------------------------------------------------------------------------
def fps(n, s):
  return n / s if s and s > 0 else float("nan")


def mask_agreement(a, b):
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return f"shape {a.shape} vs {b.shape}"
  ma, mb = a > 0, b > 0
  union = np.logical_or(ma, mb).sum()
  iou = np.logical_and(ma, mb).sum() / union if union else 1.0
  return f"max|dlogit| {np.abs(a - b).max():.3g}, mask IoU {iou:.4f}"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="parity_small,b+")
  ap.add_argument("--tasks", default="mask,box,point")
  ap.add_argument("--frames", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=2, help="steady-state calls after the first")
  ap.add_argument("--chunk", type=int, default=4, help="track_video's chunk of frames")
  ap.add_argument(
    "--encode",
    default="auto",
    choices=("auto", "batch", "frame"),
    help="track_video's encoding: per frame inside the scan, batched per chunk, or by backend",
  )
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--no-reference", action="store_true", help="skip the torch reference")
  ap.add_argument("--no-predictor", action="store_true", help="skip our interactive predictor")
  ap.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
  ap.add_argument("--json", default=None, help="also write all numbers to this file")
  ap.add_argument(
    "--bf16",
    action="store_true",
    help="also time the scan path in bf16 compute (same weights) against float32's",
  )
  ap.add_argument(
    "--blocks",
    action="store_true",
    help="also time one frame block by block, ours and the reference (bench/profile_frame.py)",
  )
  ap.add_argument("--block-repeats", type=int, default=3, help="timed calls per block")
  a = parse_args(ap, argv, SMOKE)

  import jax

  from sam2pp_jax.model.random_params import random_params
  from sam2pp_jax.model.sam2pp import build_model

  presets = [p for p in a.presets.split(",") if p]
  tasks = [t for t in a.tasks.split(",") if t]
  for t in tasks:
    if t not in TASKS:
      ap.error(f"unknown task {t!r}")
  T = a.frames
  print(
    f"# bench/propagate.py  {datetime.datetime.now().isoformat(timespec='seconds')}  "
    f"{platform.node()}  {os.cpu_count()} cpus  jax {jax.__version__} "
    f"({jax.default_backend()}: {jax.devices()[0].device_kind})  frames={T} "
    f"repeats={a.repeats} chunk={a.chunk} encode={a.encode}",
    flush=True,
  )
  if a.smoke:
    print("# --smoke: XLA optimisations mostly off; the numbers say nothing about speed")

  ref_ok, ref_why = (False, "--no-reference") if a.no_reference else (None, "")
  if ref_ok is None:
    import _reference

    ref_ok, ref_why = _reference.available()
  pcls, p_why = (None, "--no-predictor") if a.no_predictor else predictor_class()
  if not ref_ok:
    print(f"# reference: not timed ({ref_why})")
  if pcls is None:
    print(f"# predictor: not available ({p_why})")

  results = []
  for preset in presets:
    model = build_model(preset)
    model16 = build_model(preset, "bfloat16") if a.bf16 else None
    s = int(model.config.image_size)
    t0 = time.perf_counter()
    params = random_params(model, a.seed)
    jax.block_until_ready(params)
    print(
      f"\n## preset {preset}: S={s}, params filled in {time.perf_counter() - t0:.1f}s", flush=True
    )
    video, masks = make_video(a.seed, T, s)
    hw = (s, s)
    from sam2pp_jax.io.video import normalize_u8

    frames = normalize_u8(video)
    prompts = prompts_from_mask(masks[0])
    tmp = tempfile.TemporaryDirectory(prefix="sam2pp_bench_")
    names = write_pngs(video, tmp.name)
    load_s = time_load(tmp.name, s, a.repeats)
    print(f"ours: load {T} PNG frames + preprocess: {load_s:.3f}s", flush=True)

    ref_pred = ref_load_s = None
    if ref_ok and preset not in ("parity_small", "b+"):
      print(f"ref : not timed (no reference structure for preset {preset!r})")
    elif ref_ok:
      import _reference

      from sam2pp_jax.convert.key_map import flax_to_torch

      t0 = time.perf_counter()
      ref_pred = _reference.build_predictor(preset, tasks[0], threads=a.threads)
      sd = flax_to_torch(jax.tree.map(np.asarray, params), _reference.state_dict_shapes(ref_pred))
      import torch

      ref_pred.load_state_dict(
        {k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}, strict=True
      )
      del sd
      from sam2.utils.misc import load_video_frames

      lt = []
      for _ in range(max(1, a.repeats)):
        t1 = time.perf_counter()
        load_video_frames(tmp.name, s, False, compute_device=torch.device("cpu"), frame_names=names)
        lt.append(time.perf_counter() - t1)
      ref_load_s = _median(lt)
      print(
        f"ref : built + same weights loaded in {time.perf_counter() - t0:.1f}s; "
        f"its frame loading: {ref_load_s:.3f}s",
        flush=True,
      )

    for task in tasks:
      r = {"preset": preset, "task": task, "frames": T, "image_size": s, "load_s": load_s}
      p = dict(
        prompts[task],
        radius=int(model.config.point_gaussian_radius),
        sigma=float(model.config.point_gaussian_sigma),
      )
      # runners: each returns (phase seconds dict with "total_s", video-res logits [T,H,W])
      # (functools.partial binds this iteration's values, not the loop variables)
      runners = {
        "scan": functools.partial(
          scan_run_once, model, params, frames, hw, task, p, a.chunk, a.encode
        )
      }
      if model16 is not None:  # the same weights, bf16 compute (track.py --dtype bfloat16)
        runners["scan16"] = functools.partial(
          scan_run_once, model16, params, frames, hw, task, p, a.chunk, a.encode
        )
      if pcls is not None:
        try:
          pred = make_predictor(pcls, model, params, task)
          runners["pred"] = functools.partial(predictor_run_once, pred, tmp.name, task, p)
        except Exception as e:
          r["pred_error"] = f"construction: {type(e).__name__}: {e}"
          print(f"[{preset}/{task}] pred: FAILED to construct ({type(e).__name__}: {e})")
      else:
        print(f"[{preset}/{task}] pred: not available ({p_why})")
      if ref_pred is not None:
        runners["ref"] = functools.partial(ref_run_once, ref_pred, tmp.name, names, task, p)
      # call 1 of each (compile / warm-up), then the steady-state calls interleaved
      # (scan, pred, ref, scan, pred, ref, ...) so that all sides see similar machine load
      runs = {k: [] for k in runners}
      logits = {}
      for rep in range(a.repeats + 1):
        for k in list(runners):
          try:
            ph, lg = runners[k]()
          except Exception as e:  # the predictor is being written concurrently: report, go on
            r[f"{k}_error"] = f"{type(e).__name__}: {e}"
            print(f"[{preset}/{task}] {k}: FAILED ({r[f'{k}_error'][:400]})", flush=True)
            del runners[k]
            continue
          runs[k].append(ph)
          logits[k] = lg
          if rep == 0:
            print(f"[{preset}/{task}] {k}: first call {ph['total_s']:.2f}s", flush=True)
      for k, lst in runs.items():
        if not lst:
          continue
        tot = [x["total_s"] for x in lst]
        later = tot[1:] or tot[:1]
        best, med = min(later), _median(later)
        r[f"{k}_first_s"], r[f"{k}_steady_s"], r[f"{k}_steady_median_s"] = tot[0], best, med
        r[f"{k}_compile_s"] = tot[0] - best
        r[f"{k}_fps"] = fps(T, best)
        r[f"{k}_phases"] = lst
        phases = {q: min(x[q] for x in (lst[1:] or lst)) for q in lst[0] if q != "total_s"}
        extra = ""
        if k == "scan":
          r["scan_e2e_fps"] = fps(T, best + load_s)
          extra = f"; +PNG loading {load_s:.3f}s -> {r['scan_e2e_fps']:.2f} fps"
        if k == "ref" and ref_load_s is not None:
          r["ref_model_fps"] = fps(T, best - ref_load_s)
          extra = f"; without its frame loading {r['ref_model_fps']:.2f} fps"
        ph_txt = " + ".join(f"{q[:-2]} {v:.3f}" for q, v in phases.items())
        print(
          f"[{preset}/{task}] {k:4s}: first {tot[0]:.2f}s (compile/warm-up "
          f"~{tot[0] - best:.2f}s), steady best {best:.3f}s / median {med:.3f}s ({ph_txt}) "
          f"-> {r[f'{k}_fps']:.2f} fps{extra}",
          flush=True,
        )
      if "scan16_fps" in r:  # bf16 inference against float32's scan, same run
        r["ratio_scan16_scan"] = r["scan16_fps"] / r["scan_fps"]
        r["scan16_vs_scan"] = mask_agreement(logits["scan16"], logits["scan"])
        print(
          f"[{preset}/{task}] bf16/f32 scan fps: {r['ratio_scan16_scan']:.2f}x; outputs bf16 vs "
          f"f32: {r['scan16_vs_scan']}",
          flush=True,
        )
      if "pred_fps" in r and "scan_e2e_fps" in r:  # baseline in the same run: our scan path
        r["ratio_pred_scan"] = r["pred_fps"] / r["scan_e2e_fps"]
        print(
          f"[{preset}/{task}] pred/scan fps (both incl. PNG loading): "
          f"{r['ratio_pred_scan']:.2f}x; outputs pred vs scan: "
          f"{mask_agreement(logits['pred'], logits['scan'])}",
          flush=True,
        )
      if "ref" in runs and runs["ref"]:
        r["ratio_scan_e2e"] = r["scan_e2e_fps"] / r["ref_fps"]
        r["ratio_scan_model"] = r["scan_fps"] / r["ref_model_fps"]
        line = (
          f"[{preset}/{task}] ours/ref fps: scan e2e {r['ratio_scan_e2e']:.2f}x, "
          f"scan model-only {r['ratio_scan_model']:.2f}x"
        )
        if "pred_fps" in r:
          r["ratio_pred_e2e"] = r["pred_fps"] / r["ref_fps"]
          line += f", predictor e2e {r['ratio_pred_e2e']:.2f}x"
        print(
          line + f"; outputs scan vs ref: {mask_agreement(logits['scan'], logits['ref'])}",
          flush=True,
        )
      results.append(r)
    tmp.cleanup()
    if a.blocks:  # where one frame's time goes, ours vs the reference, same weights
      import profile_frame

      del ref_pred
      res = profile_frame.block_table(
        preset, tasks[0], a.block_repeats, reference=bool(ref_ok), threads=a.threads
      )
      profile_frame.print_block_table(preset, s, tasks[0], res)
      results.append({"preset": preset, "task": tasks[0], "blocks_s": res})

  print("\n# summary (fps = frames / steady-state seconds; compile = first call - steady)")
  hdr = (
    f"{'preset':13s} {'task':5s} {'scan fps':>8s} {'compile s':>9s} {'pred fps':>8s} "
    f"{'pred cmp s':>10s} {'ref fps':>8s} {'scan/ref e2e':>12s} {'scan/ref model':>14s} "
    f"{'pred/ref':>8s} {'pred/scan':>9s}"
  )
  print(hdr)
  f = lambda r, k, fmt: format(r[k], fmt) if k in r else "-"
  for r in results:
    if "blocks_s" in r:
      continue
    print(
      f"{r['preset']:13s} {r['task']:5s} {f(r, 'scan_fps', '8.2f'):>8s} "
      f"{f(r, 'scan_compile_s', '9.1f'):>9s} {f(r, 'pred_fps', '8.2f'):>8s} "
      f"{f(r, 'pred_compile_s', '10.1f'):>10s} {f(r, 'ref_fps', '8.2f'):>8s} "
      f"{f(r, 'ratio_scan_e2e', '12.2f'):>12s} {f(r, 'ratio_scan_model', '14.2f'):>14s} "
      f"{f(r, 'ratio_pred_e2e', '8.2f'):>8s} {f(r, 'ratio_pred_scan', '9.2f'):>9s}"
    )
  if a.json:
    tmp_json = a.json + ".tmp"  # written whole, then renamed: never a half-written file
    with open(tmp_json, "w") as fh:
      json.dump(results, fh, indent=1, default=float)
    os.replace(tmp_json, a.json)
  failed = [
    f"{r['preset']}/{r['task']} {k[: -len('_error')]}"
    for r in results
    for k in r
    if k.endswith("_error")
  ]
  if failed:
    print(f"# FAILED: {', '.join(failed)} (see above)")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
