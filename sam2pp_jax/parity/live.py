"""`python -m sam2pp_jax.parity live`: parity against the official PyTorch predictor on the user's
own checkpoint and video, per frame, with a block-level diagnosis and fixture export.

Both sides get the same weights (the reference loads the .pt with its own builder; ours converts
the same file in-process, torch-free), the same frames (what the reference's loader produced;
our loader's frames are compared with them as the first check) and the same prompt on frame 0.
Per frame, per tracking path of ours (the interactive predictor and the scan tracker), every
output is compared with the fixture checker's rules; the first frame out of tolerance is the
first diverging frame. `--blocks` feeds each of our blocks the reference's recorded inputs of
that frame (forward hooks) and names the first block out of tolerance. `--save` writes the run
as a parity fixture that `python -m sam2pp_jax.parity` checks without torch.

Exit: 0 all within tolerance; 1 parity failed; 2 bad input or the reference cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from sam2pp_jax.convert.sources import SourceError, detect_preset, detect_source
from sam2pp_jax.convert.torch_reader import (
  CheckpointReadError,
  extract_state_dict,
  read_torch_checkpoint,
)
from sam2pp_jax.io.atomic import atomic_write_text
from sam2pp_jax.io.video import VideoError, load_video, natural_sort_key, preprocess
from sam2pp_jax.parity import live_files, reference_run
from sam2pp_jax.parity.components import NEEDS_TRACKER, ComponentChecker, Row, compare
from sam2pp_jax.parity.end_to_end import (
  BF16_FLIP_FRACTION,
  BOX_PX_TOL,
  LOGIT_REL_TOL,
  MASK_IOU_MIN,
  compare_array,
  path_rows,
  predictor_path,
  scan_path,
)
from sam2pp_jax.parity.fixture import WEIGHTS_PREFIX, Fixture, file_sha256, save_fixture
from sam2pp_jax.parity.model_from_fixture import config_from_overrides, model_and_params
from sam2pp_jax.progress import Progress
from sam2pp_jax.tracking import cli as track_cli
from sam2pp_jax.tracking import prompts

PATH_PRODUCERS = {"predictor": predictor_path, "scan": scan_path}
# Block order along one frame: the first of these out of tolerance is "the first diverging block".
BLOCK_ORDER = (
  "image_encoder",
  "forward_image",
  "prompt_encoder",
  "mask_downsample",
  "memory_attention",
  "unified_decoder",
  "memory_encoder",
)
EMBED_AUTO_BYTES = 64 << 20  # --save embeds weights up to this size unless told otherwise
# Reference under torch.autocast(bfloat16) vs our float32: bf16 keeps 8 significant bits and its
# rounding runs through every block. Logits, scores, pointers and stored memory are compared at
# 5% of max(1, max|ref|), boxes at 1% of the longer video side (measured on B+ det weights at 256:
# <= 2% and 0.5%); binarised masks are not required to match (they move wherever logits are near
# 0); object presence, point argmax and visibility stay exact.
BF16_LOGIT_REL_TOL = 5e-2
BF16_BOX_FRACTION = 1e-2


class LiveError(ValueError):
  """Bad input for `parity live`; the message names the argument and what to do."""


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
    prog="python -m sam2pp_jax.parity live",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("--checkpoint", required=True, help="PyTorch .pt ({'model': state_dict})")
  ap.add_argument("--video", required=True, help="folder of JPEG/PNG frames, or a video file")
  ap.add_argument("--task", required=True, choices=("mask", "box", "point"))
  ap.add_argument(
    "--prompt",
    required=True,
    help="frame 0's prompt: mask -> index/palette PNG (object = --object-id, default the lowest "
    "id); box -> 'x0,y0,x1,y1' or a GOT-10k groundtruth txt; point -> 'x,y'",
  )
  ap.add_argument("--object-id", type=int, default=None, help="which id of a mask PNG to track")
  ap.add_argument("--frames", type=int, default=None, help="use the first N frames (default all)")
  ap.add_argument(
    "--reference-repo",
    default=os.environ.get("SAM2PLUS_REPO"),
    help="checkout of MCG-NJU/SAM2-Plus (or facebookresearch/sam2 for SAM 2.x checkpoints; a "
    "SAM2-Plus checkout also runs them with its vendored sam2); default $SAM2PLUS_REPO",
  )
  ap.add_argument(
    "--config-file",
    default=None,
    help="the reference's config for this checkpoint (default: SAM2-Plus's B+ MAME config; "
    "SAM 2.1: sam2.1_hiera_{t,s,b+,l}.yaml by the trunk)",
  )
  ap.add_argument(
    "--image-size", type=int, default=None, help="run both at this image size (multiple of 16)"
  )
  ap.add_argument("--threads", type=int, default=2, help="torch threads of the reference")
  ap.add_argument(
    "--reference-dtype",
    choices=("float32", "bfloat16"),
    default="float32",
    help="bfloat16: the reference under torch.autocast(cpu, bfloat16) (its scripts' mode on "
    f"GPU); tolerances widen to logits {BF16_LOGIT_REL_TOL:g} x scale, decisions stay exact",
  )
  ap.add_argument(
    "--paths",
    default="predictor,scan",
    help="our tracking paths to compare: predictor (interactive), scan (track.py's); default both",
  )
  ap.add_argument(
    "--blocks", action="store_true", help="on the first diverging frame, name the first block"
  )
  ap.add_argument("--save", default=None, help="write the run as a parity fixture (.npz)")
  ap.add_argument(
    "--embed-weights",
    choices=("auto", "yes", "no"),
    default="auto",
    help="--save: put the weights inside the fixture (auto: when under 64 MiB), else the fixture "
    "names the checkpoint by path and sha256",
  )
  ap.add_argument("--report", default=None, help="write the JSON report here")
  ap.add_argument(
    "--out", default=None, help="keep both sides' benchmark result files under this folder"
  )
  ap.add_argument(
    "--perturb",
    default=None,
    metavar="KEY=DELTA",
    help="self-test of the diagnosis: add DELTA to every element of the state-dict tensor KEY "
    "in OUR copy only (the run must then fail where KEY acts)",
  )
  ap.add_argument("--rel-tol", type=float, default=2e-4, help="block tolerance for --blocks")
  return ap


# -- inputs ------------------------------------------------------------------------------------
def _read_checkpoint(path):
  if not os.path.isfile(path):
    raise LiveError(f"--checkpoint {path!r}: no such file")
  try:
    sd = extract_state_dict(read_torch_checkpoint(path), path)
    kind = detect_source(sd.keys())
    preset = detect_preset(sd)
  except (CheckpointReadError, SourceError) as e:
    raise LiveError(f"--checkpoint {path}: {e}") from None
  if kind == "sam2" and not any(k.startswith("obj_ptr_tpos_proj.") for k in sd):
    raise LiveError(
      f"--checkpoint {path}: a SAM 2.0 checkpoint (no obj_ptr_tpos_proj); parity live runs "
      "SAM 2.1 and SAM2-Plus checkpoints (SAM 2.0's memory semantics are not ours)"
    )
  return sd, kind, preset


def _frame_dir(video, n, work):
  """(folder of numbered links the reference loader accepts, names, (H,W)): the user's first n
  frames unchanged (a video file is decoded once to lossless PNGs)."""
  if not os.path.exists(video):
    raise LiveError(f"--video {video!r}: no such file or folder")
  src = os.path.join(work, "frames")
  os.makedirs(src)
  if os.path.isdir(video):
    try:
      names = sorted(
        (
          p
          for p in os.listdir(video)
          if os.path.splitext(p)[1].lower() in (".jpg", ".jpeg", ".png")
        ),
        key=natural_sort_key,
      )
    except OSError as e:
      raise LiveError(f"--video {video}: {e}") from None
    if not names:
      raise LiveError(f"--video {video}: no .jpg/.jpeg/.png frames in the folder")
    names = names[:n] if n else names
    files = [os.path.abspath(os.path.join(video, p)) for p in names]
  else:
    import cv2

    try:
      vf = load_video(video)
    except VideoError as e:
      raise LiveError(f"--video: {e}") from None
    names = [f"{i:05d}.png" for i in range(vf.num_frames)][: n or None]
    files = []
    for i, name in enumerate(names):
      p = os.path.join(work, "decoded_" + name)
      cv2.imwrite(p, vf.frames[i][..., ::-1])
      files.append(p)
  # The reference loaders sort '<int>.jpg' names (Meta's: JPEG only); PIL reads by content.
  for i, f in enumerate(files):
    os.symlink(f, os.path.join(src, f"{i:05d}.jpg"))
  if len(files) < 2:
    raise LiveError(f"--video {video}: {len(files)} frame(s); parity live needs at least 2")
  return src, names


def _parse_prompt(args, hw, model_cfg):
  task = args.task
  try:
    if task == "mask":
      masks, ids, _ = track_cli.parse_mask_prompt(args.prompt, hw)
      want = int(ids.min()) if args.object_id is None else args.object_id
      if want not in ids.tolist():
        raise LiveError(f"--object-id {want}: the mask has ids {ids.tolist()}")
      m = masks[ids.tolist().index(want)]
      return {"mask": m}, {"inputs/prompt_mask": m}
    if task == "box":
      box = np.asarray(track_cli.parse_box_prompt(args.prompt, hw)[0], np.float32)
      return {"box_xyxy": box}, {"inputs/prompt_box_xyxy": box}
    xy = _point_prompt(args, hw)
  except track_cli.InputError as e:
    raise LiveError(str(e)) from None
  radius, sigma = int(model_cfg.point_gaussian_radius), float(model_cfg.point_gaussian_sigma)
  ref = {"points_xy": xy[None], "point_labels": np.ones(1, np.int32), "radius": radius}
  ref["sigma"] = sigma
  arrays = {
    "inputs/prompt_point_xy": xy,
    "inputs/prompt_point_label": np.ones(1, np.int32),
    "inputs/point_radius": np.asarray(radius, np.int64),
    "inputs/point_sigma": np.asarray(sigma, np.float64),
  }
  return ref, arrays


def _point_prompt(args, hw):
  """'x,y', or track --object-id (default 0) of a TAP-Vid npz at frame 0 -> float32 [2]."""
  text = args.prompt
  if not text.lower().endswith(".npz"):
    groups, n = track_cli.parse_point_prompt(text, hw, 1, None)
    if n != 1:
      raise LiveError(f"--prompt {text!r}: give one point x,y (one object)")
    return np.asarray(groups[0][2][0], np.float32)
  if not os.path.isfile(text):
    raise LiveError(f"--prompt {text!r}: point file does not exist")
  try:
    with np.load(text) as z:
      trajs, vis = np.asarray(z["trajs_2d"], np.float64), np.asarray(z["visibs"], bool)
  except (KeyError, OSError, ValueError) as e:
    raise LiveError(f"--prompt {text!r}: not a TAP-Vid npz with trajs_2d/visibs ({e})") from None
  k = 0 if args.object_id is None else args.object_id
  if trajs.ndim != 3 or not 0 <= k < trajs.shape[1]:
    raise LiveError(f"--prompt {text!r}: no track {k} in trajs_2d {trajs.shape}")
  if not vis[0, k]:
    raise LiveError(f"--prompt {text!r}: track {k} is not visible on frame 0; pick another")
  xy = trajs[0, k]
  track_cli._check(prompts.check_points, xy[None], None, hw)
  return xy.astype(np.float32)


def _overrides(args):
  if args.image_size is None:
    return []
  s = int(args.image_size)
  if s <= 0 or s % 16:
    raise LiveError(f"--image-size {s}: must be a positive multiple of 16")
  f = s // 16
  return [
    f"++model.image_size={s}",
    f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
    f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
  ]


def _perturb(params_sd, spec):
  key, _, delta = spec.partition("=")
  if key not in params_sd:
    raise LiveError(f"--perturb {spec!r}: no tensor {key!r} in the checkpoint")
  try:
    d = float(delta)
  except ValueError:
    raise LiveError(f"--perturb {spec!r}: DELTA must be a number") from None
  out = dict(params_sd)
  out[key] = (np.asarray(params_sd[key], np.float32) + np.float32(d)).astype(np.float32)
  return out


def _git_commit(repo):
  try:
    r = subprocess.run(
      ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
    )
    return r.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


# -- per-frame comparison -----------------------------------------------------------------------
def _frame_rows(fx, ref_frame: dict, produced: dict, t: int, logit_tol=None):
  """Rows for frame t: every per-frame output (the stored position encoding is video-wide)."""
  rows = {}
  for leaf, ref in ref_frame.items():
    if leaf == "maskmem_pos_enc":
      continue
    name = f"outputs/{leaf}"
    if name not in produced:
      rows[leaf] = Row(name, "FAIL", note="not produced by this path")
      continue
    got = np.asarray(produced[name][t])[None]
    r = compare_array(fx, name, got, np.asarray(ref)[None])
    if logit_tol is not None and r.status == "FAIL" and leaf not in ("point_xy", "point_visible"):
      r = _bf16_mode_row(fx, name, leaf, got, np.asarray(ref)[None], r)
    rows[leaf] = r
  return rows


def _bf16_mode_row(fx, name, leaf, got, ref, row):
  """Re-judge a float32-rule failure under the bf16-reference tolerances (`BF16_*`); the object
  presence stays exact (point and visibility rows are never re-judged)."""
  if leaf == "object_score_logits" and not np.array_equal(got > 0, ref > 0):
    return row
  if leaf == "pred_box_xyxy":
    tol = BF16_BOX_FRACTION * max(int(v) for v in fx["inputs/video_hw"])
    return Row(name, "ok" if row.max_abs <= tol else "FAIL", row.max_abs, row.rel, tol, "px")
  if leaf == "pred_box_xyxy_norm":
    return compare(name, got, ref, BF16_BOX_FRACTION)
  return compare(name, got, ref, BF16_LOGIT_REL_TOL)


def _our_choice(low, frame: reference_run.Frame):
  """Which of the reference's decoder candidates our chosen low-res logits are (nearest)."""
  c = frame.candidates
  if c is None or c.shape[-2:] != low.shape[-2:]:
    return None
  return int(np.argmin([np.abs(low - ci).max() for ci in c]))


def _summary(frame: reference_run.Frame, rows: dict, produced: dict, t: int) -> dict:
  out = frame.outputs
  s = {
    "frame": t,
    "ok": all(r.status == "ok" for r in rows.values()),
    "reference_score": float(out["object_score_logits"]),
    "our_score": float(produced["outputs/object_score_logits"][t]),
  }
  if frame.candidates is not None and bool(frame.dumps.get("unified_decoder/multimask_output")):
    s["reference_choice"] = frame.choice
    s["choice_margin"] = frame.choice_margin
    if float(out["object_score_logits"]) > 0:
      s["our_choice"] = _our_choice(produced["outputs/low_res_mask_logits"][t], frame)
  lg = rows.get("video_res_mask_logits")
  if lg is not None:
    s["logits_rel"] = lg.rel
    s["mask_iou"] = float(lg.note.split("=")[1]) if lg.note.startswith("min_iou=") else None
  for leaf in ("pred_box_xyxy",):
    if leaf in rows:
      s["box_px"] = rows[leaf].max_abs
  if "point_xy" in out:
    s["reference_point"] = [int(v) for v in out["point_xy"]]
    s["our_point"] = [int(v) for v in produced["outputs/point_xy"][t]]
    s["visible"] = [bool(out["point_visible"]), bool(produced["outputs/point_visible"][t])]
  mem = rows.get("maskmem_features_bf16")
  if mem is not None:
    s["memory"] = mem.note.split(" (")[0]
  s["failed"] = [k for k, r in rows.items() if r.status != "ok"]
  return s


def _table_line(s: dict) -> str:
  parts = [f"{s['frame']:4d}", "ok  " if s["ok"] else "FAIL"]
  parts.append(f"score {s['reference_score']:+8.3f}/{s['our_score']:+8.3f}")
  if "reference_choice" in s:
    oc = s.get("our_choice")
    parts.append(
      f"choice {s['reference_choice']}/{'-' if oc is None else oc} (gap {s['choice_margin']:.2g})"
    )
  if s.get("logits_rel") is not None:
    parts.append(f"logits rel {s['logits_rel']:.2g}")
  if s.get("mask_iou") is not None:
    parts.append(f"iou {s['mask_iou']:.4f}")
  if "box_px" in s:
    parts.append(f"box {s['box_px']:.3g}px")
  if "reference_point" in s:
    parts.append(f"point {tuple(s['reference_point'])}/{tuple(s['our_point'])}")
  if s["failed"]:
    parts.append("out: " + ",".join(s["failed"]))
  return "  ".join(parts)


# -- blocks -----------------------------------------------------------------------------------
def diagnose_blocks(fx, model, params, frame: int, rel_tol: float) -> dict:
  """Our blocks on the reference's recorded inputs of `frame`; the first one out of tolerance."""
  checker = ComponentChecker(fx, rel_tol, model=model, params=params)
  rows = [r for r in checker.rows() if r.name.startswith(f"frame{frame}/")]
  by_block = {}
  for r in rows:
    comp = r.name.split("/")[1]
    by_block.setdefault(comp, []).append(r)
  first = None
  for comp in BLOCK_ORDER:
    if any(r.status == "FAIL" for r in by_block.get(comp, [])):
      first = comp
      break
  return {"frame": frame, "rows": rows, "first_block": first}


# -- the run ----------------------------------------------------------------------------------
def run(args) -> int:
  jax.config.update("jax_default_matmul_precision", "highest")
  t_start = time.time()
  paths = [p.strip() for p in args.paths.split(",") if p.strip()]
  bad = [p for p in paths if p not in PATH_PRODUCERS]
  if bad or not paths:
    raise LiveError(f"--paths {args.paths!r}: choose from {', '.join(PATH_PRODUCERS)}")
  if args.frames is not None and args.frames < 2:
    raise LiveError(f"--frames {args.frames}: at least 2")
  if args.save and not args.save.endswith(".npz"):
    raise LiveError(f"--save {args.save!r}: a fixture is an .npz file")
  missing = reference_run.missing_requirements()
  if missing:
    print(
      "parity live needs the reference's dependencies, missing here: "
      f"{', '.join(missing)}\n  install them with: {reference_run.INSTALL_HINT}",
      file=sys.stderr,
    )
    return 2
  if not args.reference_repo:
    raise LiveError(
      "no reference checkout: pass --reference-repo DIR (a clone of github.com/MCG-NJU/SAM2-Plus, "
      "or facebookresearch/sam2 for SAM 2.x checkpoints) or set SAM2PLUS_REPO"
    )
  overrides = _overrides(args)
  repo_kind = reference_run.checkout_kind(args.reference_repo)
  sd, source, preset = _read_checkpoint(args.checkpoint)
  if source == reference_run.SAM2PLUS and repo_kind != reference_run.SAM2PLUS:
    raise LiveError(
      f"--checkpoint {args.checkpoint} is a SAM2-Plus checkpoint but {args.reference_repo} is "
      "Meta's sam2; pass a SAM2-Plus checkout"
    )
  work = tempfile.mkdtemp(prefix="parity_live_")
  try:
    return _run(args, paths, sd, source, preset, overrides, work, t_start)
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _run(args, paths, sd, source, preset, overrides, work, t_start) -> int:
  task = args.task
  frame_dir, frame_names = _frame_dir(args.video, args.frames, work)
  T = len(frame_names)
  print(
    f"parity live: {args.checkpoint} ({source}, {preset}) on {args.video} ({T} frames), "
    f"task {task}, reference {args.reference_repo} [{args.reference_dtype}]"
  )
  ref = reference_run.ReferencePredictor(
    args.reference_repo,
    args.checkpoint,
    task,
    kind=source,
    config_file=args.config_file,
    overrides=overrides,
    preset=preset,
    threads=args.threads,
    dtype=args.reference_dtype,
  )
  S = ref.image_size
  state = ref.init(frame_dir)
  hw = ref.video_hw
  frames = ref.frames_nchw()
  report = {
    "command": "python -m sam2pp_jax.parity live " + " ".join(args.argv),
    "checkpoint": {"path": os.path.abspath(args.checkpoint), "source": source, "preset": preset},
    "reference": {
      "repo": os.path.abspath(args.reference_repo),
      "commit": _git_commit(args.reference_repo),
      "kind": ref.kind,
      "config_file": ref.config_file,
      "overrides": overrides,
      "torch": ref.torch.__version__,
      "threads": args.threads,
      "dtype": args.reference_dtype,
    },
    "video": os.path.abspath(args.video),
    "frames": T,
    "video_hw": list(hw),
    "image_size": S,
    "task": task,
    "tolerances": {
      "logits_rel": LOGIT_REL_TOL,
      "mask_iou_min": MASK_IOU_MIN,
      "box_px": BOX_PX_TOL,
      "memory_bf16_flip_fraction": BF16_FLIP_FRACTION,
      "blocks_rel": args.rel_tol,
    }
    if args.reference_dtype == "float32"
    else {
      "reference": "torch.autocast(cpu, bfloat16)",
      "logits_scores_pointers_memory_rel": BF16_LOGIT_REL_TOL,
      "box_fraction_of_longer_side": BF16_BOX_FRACTION,
      "exact": ["object presence", "point argmax", "visibility"],
      "blocks_rel": args.rel_tol,
    },
  }
  if args.reference_dtype == "bfloat16":
    print(
      f"bfloat16 reference: logits/scores/pointers/memory within {BF16_LOGIT_REL_TOL:g} x "
      f"max(1, max|ref|), boxes within {BF16_BOX_FRACTION:g} x the longer video side; presence, "
      "point argmax and visibility exact; binarised masks and result files reported only"
    )
  # 1. preprocessing: our loader on the same files vs what the reference model consumed
  ours_u8 = load_video(frame_dir).frames
  ours_frames = preprocess(ours_u8, S).transpose(0, 3, 1, 2)
  pre = compare("inputs/frames (our loader vs the reference's)", ours_frames, frames, 0.0)
  report["preprocessing"] = {
    "ok": pre.status == "ok",
    "max_abs": pre.max_abs,
    "note": "the model comparison below runs on the reference's frames",
  }
  print(pre.line())

  # 2. the in-memory fixture: inputs now, reference outputs/dumps as they come
  model_cfg_probe = Fixture(
    path=pathlib.Path("<live>"),
    arrays={},
    info={"task": task, "image_size": S, "base_seed": 0},
    manifest={k: list(np.shape(v)) for k, v in sd.items()},
    config={"hydra_overrides": overrides, "preset": preset},
  )
  model_cfg_probe._weights = sd
  prompt, prompt_arrays = _parse_prompt(args, hw, _model_cfg(model_cfg_probe))
  arrays = {
    "inputs/frames": frames.astype(np.float32),
    "inputs/video_hw": np.asarray(hw, np.int64),
    **prompt_arrays,
  }
  fx = model_cfg_probe
  fx.arrays = arrays
  fx.info.update(
    {
      "name": os.path.splitext(os.path.basename(args.save or "live.npz"))[0],
      "num_frames": T,
      "video_hw": list(hw),
      "kind": "live",
      "reference_commit": report["reference"]["commit"],
      "torch": report["reference"]["torch"],
      "threads": args.threads,
      "reference_dtype": args.reference_dtype,
      "prompt_call": "frame_idx=0",
      "video": report["video"],
      "checkpoint_source": source,
    }
  )
  our_sd = _perturb(sd, args.perturb) if args.perturb else sd
  fx._weights = our_sd
  model, params = model_and_params(fx)
  fx._weights = sd

  # 3. ours first (every path over every frame), then the reference frame by frame
  produced = {}
  for pname in paths:
    bar = Progress(T, f"ours [{pname}]")
    produced[pname] = PATH_PRODUCERS[pname](
      fx, model, params, progress=lambda f, b=bar: b.update(f + 1)
    )
    bar.update(T)
  ref_frames, dumps_keep, summaries = {}, {}, {p: [] for p in paths}
  first_div = None
  logit_tol = BF16_LOGIT_REL_TOL if args.reference_dtype == "bfloat16" else None
  bar = Progress(T, "reference")
  for fr in ref.track(state, prompt):
    t = fr.index
    ref_frames[t] = fr
    frame_bad = False
    for pname in paths:
      rows = _frame_rows(fx, fr.outputs, produced[pname], t, logit_tol)
      s = _summary(fr, rows, produced[pname], t)
      summaries[pname].append(s)
      frame_bad |= not s["ok"]
    if frame_bad and first_div is None:
      first_div = t
    if t in (0, 1) or t == first_div:
      dumps_keep[t] = fr.dumps
    bar.update(len(ref_frames))
  bar.update(T)
  pin = ref.recorder.prompt_inputs
  if task == "mask" and "mask_inputs" in pin:
    arrays["inputs/mask_input_model_res"] = pin["mask_inputs"] > 0.5
  if task == "point" and "mask_inputs" in pin:
    arrays["inputs/point_gaussian_mask"] = pin["mask_inputs"].astype(np.float32)
  for k in ("point_coords_model", "point_labels_model"):
    if task != "mask" and k in pin:
      arrays[f"inputs/{k}"] = pin[k]

  # 4. assemble the reference outputs; per-path tables and whole-video rows
  ts = sorted(ref_frames)
  for leaf in ref_frames[ts[0]].outputs:
    if leaf == "maskmem_pos_enc":
      arrays["outputs/maskmem_pos_enc"] = ref_frames[ts[0]].outputs[leaf]
    else:
      arrays[f"outputs/{leaf}"] = np.stack([ref_frames[t].outputs[leaf] for t in ts])
  for t, d in dumps_keep.items():
    for k, v in d.items():
      if not k.startswith("_"):
        arrays[f"frame{t}/{k}"] = v
  ok_all = True
  report["paths"] = {}
  for pname in paths:
    print(f"\n== ours [{pname}] vs reference, per frame (score ref/ours, choice ref/ours)")
    for s in summaries[pname]:
      print("  " + _table_line(s))
    rows = path_rows(fx, produced[pname], pname)
    if logit_tol is not None:
      rows = [
        r
        if r.status == "ok"
        else _bf16_mode_row(
          fx,
          r.name,
          r.name.split("/")[-1],
          produced[pname][r.name.split("] ")[1]],
          fx[r.name.split("] ")[1]],
          r,
        )
        for r in rows
      ]
    bad = [r for r in rows if r.status != "ok"]
    print(f"-- [{pname}] whole video: {len(rows) - len(bad)} arrays ok, {len(bad)} failed")
    for r in bad:
      print("  " + r.line())
    ok_path = not bad and all(s["ok"] for s in summaries[pname])
    ok_all &= ok_path
    report["paths"][pname] = {
      "ok": ok_path,
      "frames": summaries[pname],
      "whole_video": [vars(r) for r in rows],
    }
  report["first_diverging_frame"] = first_div

  # 5. benchmark result files
  name = os.path.basename(os.path.normpath(args.video)).split(".")[0] or "video"
  out_dir = args.out or os.path.join(work, "results")
  ref_out = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("outputs/")}
  ref_files = live_files.write_reference_files(
    task, os.path.join(out_dir, "reference"), name, frame_names, hw, ref_out
  )
  report["files"] = {}
  for pname in paths:
    ours = {k.split("/", 1)[1]: v for k, v in produced[pname].items()}
    our_files = live_files.write_our_files(
      task, os.path.join(out_dir, f"ours_{pname}"), name, frame_names, hw, ours
    )
    cmp = live_files.compare_files(task, ref_files, our_files, ref_out, LOGIT_REL_TOL, BOX_PX_TOL)
    judged = args.reference_dtype == "float32"
    cmp["judged"] = judged
    report["files"][pname] = cmp
    tag = ("ok  " if cmp["ok"] else "FAIL") if judged else "info"
    print(f"{tag} [{pname}] result files: {cmp['what']}: {cmp['detail']}")
    if judged:
      ok_all &= cmp["ok"]
    elif not cmp["ok"]:
      print(
        "     (bfloat16 reference: values at the threshold move with bf16 rounding; the files are "
        "reported, the per-frame rows above judge)"
      )

  # 6. blocks on the first diverging frame
  if args.blocks:
    if first_div is None:
      print("\n--blocks: no frame diverges; nothing to diagnose")
      report["blocks"] = None
    else:
      d = diagnose_blocks(fx, model, params, first_div, args.rel_tol)
      print(f"\n== blocks on frame {first_div} (ours on the reference's recorded inputs)")
      for r in d["rows"]:
        print("  " + r.line())
      fr = ref_frames[first_div]
      if d["first_block"]:
        print(f"FIRST DIVERGING BLOCK: {d['first_block']} (frame {first_div})")
      else:
        print(
          f"every block of frame {first_div} matches on the reference's inputs: the divergence "
          "comes in through the frame's inputs (the memory bank built from earlier frames, "
          f"decisions near their margins: choice gap {fr.choice_margin:.3g}, object score "
          f"{float(fr.outputs['object_score_logits']):+.3g})"
        )
      report["blocks"] = {
        "frame": first_div,
        "first_block": d["first_block"],
        "rows": [vars(r) for r in d["rows"] if r.status != NEEDS_TRACKER],
      }

  # 7. fixture export and report
  if args.save:
    _save(args, fx, arrays, sd, report)
  report["ok"] = bool(ok_all)
  report["seconds"] = round(time.time() - t_start, 1)
  if args.report:
    atomic_write_text(args.report, json.dumps(report, indent=1, default=_json_default))
  print(
    f"\n{'LIVE PARITY OK' if ok_all else 'LIVE PARITY FAILED'}"
    + ("" if first_div is None else f" (first diverging frame {first_div})")
    + f" in {report['seconds']:.0f}s"
  )
  return 0 if ok_all else 1


def _model_cfg(fx):
  return config_from_overrides(fx.overrides, base=fx.config.get("preset", "b+"))


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def _save(args, fx, arrays, sd, report):
  nbytes = sum(np.asarray(v).nbytes for v in sd.values())
  embed = args.embed_weights == "yes" or (
    args.embed_weights == "auto" and nbytes <= EMBED_AUTO_BYTES
  )
  info = dict(fx.info)
  if embed:
    info["weights"] = {"kind": "embedded", "bytes": int(nbytes)}
  else:
    info["weights"] = {
      "kind": "checkpoint",
      "path": os.path.abspath(args.checkpoint),
      "sha256": file_sha256(args.checkpoint),
    }
  config = dict(fx.config)
  config["config_file"] = report["reference"]["config_file"]
  config["reference"] = report["reference"]
  out = dict(arrays)
  out["meta/info_json"] = np.asarray(json.dumps(info, default=_json_default))
  out["meta/manifest_json"] = np.asarray(json.dumps(fx.manifest))
  out["meta/config_json"] = np.asarray(json.dumps(config, default=_json_default))
  if embed:
    for k, v in sd.items():
      out[WEIGHTS_PREFIX + k] = np.asarray(v)
  path = save_fixture(args.save, out)
  mb = os.path.getsize(path) / 1e6
  print(
    f"saved fixture {path} ({mb:.1f} MB, weights {'embedded' if embed else 'by path+sha256'}); "
    f"check it with: python -m sam2pp_jax.parity [--components] {path}"
  )
  report["saved_fixture"] = str(path)


def main(argv=None) -> int:
  argv = sys.argv[2:] if argv is None else list(argv)
  args = build_parser().parse_args(argv)
  args.argv = argv
  try:
    return run(args)
  except (LiveError, reference_run.ReferenceError) as e:
    print(f"parity live: error: {e}", file=sys.stderr)
    return 2
