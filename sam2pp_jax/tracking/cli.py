"""Track objects through a video with a sam2pp_jax checkpoint; write benchmark-format results.

The command line of `track.py` (a thin wrapper of `main` here; `sam2pp_jax.demo` calls `main`
in-process so compiled functions are reused):

  python track.py --checkpoint DIR --video PATH --task mask|box|point --prompt P --out DIR
                  [--frame N] [--reverse] [--viz] [--chunk K]
                  [--point-readout argmax|soft_argmax|window_soft_argmax]

Prompts (video pixels):
  mask   palette PNG of the prompt frame; every non-zero index is one object (several allowed)
  box    "x0,y0,x1,y1", or a GOT-10k groundtruth.txt whose first line is "x,y,w,h"
  point  "x,y" (several objects: "x,y;x,y"), or a TAP-Vid-style .npz (trajs_2d [T,N,2],
         visibs [T,N]): each track is prompted at its first visible frame (or at --frame)

Outputs (under --out; formats of the reference benchmarks, see sam2pp_jax/tracking/outputs.py):
  mask   <out>/<video>/<frame name>.png   palette PNGs, value = object id
  box    <out>/<video>.txt                one "x y w h" integer line per frame, written as the
                                         reference's tools/sot_inference_plus.py writes it:
                                         x0, y0, x1-x0, y1-y0 clipped at 0, truncated
         <out>/<video>_xyxy.npz           the float boxes: boxes_xyxy float32 [T,4] (NaN where
                                         not tracked), tracked bool [T]
  point  <out>/<video>.npz                trajs_2d [T,N,2] float32, visibs [T,N] bool, size (W,H)
  --viz  <out>/<video>_overlay.mp4
Frames not tracked (before --frame going forward, after it with --reverse) get empty results:
background PNGs, "0 0 0 0" boxes (NaN float boxes), invisible points at the query position.
Every output is written atomically. A bad input exits with status 2 and one error line.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from sam2pp_jax.checkpoint import CheckpointError, load_config, load_model
from sam2pp_jax.io.png import davis_palette, read_palette_png
from sam2pp_jax.io.video import VideoError, load_video, preprocess
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.progress import Progress
from sam2pp_jax.tracking import outputs, prompts
from sam2pp_jax.tracking.memory import POLICIES, get_policy, parse_options
from sam2pp_jax.tracking.point_readout import READOUTS
from sam2pp_jax.tracking.propagate import track_video


class InputError(ValueError):
  """A bad command-line input; reported as one line, exit status 2."""


# ------------------------------------------------------------------------------ prompts
def _floats(text: str, n: int, what: str):
  parts = [p for p in text.replace(",", " ").split()]
  try:
    vals = [float(p) for p in parts]
  except ValueError:
    raise InputError(
      f"--prompt {text!r}: {what} must be {n} numbers, e.g. "
      f"{'10,20,110,220' if n == 4 else '64,48'}"
    ) from None
  if len(vals) != n:
    raise InputError(f"--prompt {text!r}: {what} needs {n} numbers, got {len(vals)}")
  return vals


def _check(fn, *args):
  try:
    return fn(*args)
  except InputError:
    raise
  except ValueError as e:
    raise InputError(str(e)) from None


def parse_mask_prompt(path: str, hw):
  """Palette PNG -> (masks [B,H,W] bool, obj_ids [B], palette or None)."""
  if not os.path.isfile(path):
    raise InputError(
      f"--prompt {path!r}: mask file does not exist; give a palette PNG of the prompt frame"
    )
  ids, palette = read_palette_png(path)
  if ids.ndim != 2:
    raise InputError(f"--prompt {path!r}: mask has shape {ids.shape}; give a 2-D index PNG")
  _check(prompts.check_mask, ids != 0, hw)
  obj_ids = [int(v) for v in np.unique(ids) if v != 0]
  return np.stack([ids == o for o in obj_ids]), np.asarray(obj_ids), palette


def parse_box_prompt(text: str, hw):
  """'x0,y0,x1,y1' or a GOT-10k groundtruth txt (first line x,y,w,h) -> [1,4] xyxy."""
  if os.path.isfile(text):
    with open(text) as f:
      first = next((ln for ln in f if ln.strip()), "")
    x, y, w, h = _floats(first.strip(), 4, f"the first line of {text} (x,y,w,h)")
    box = [x, y, x + w, y + h]
  elif text.lower().endswith(".txt"):
    raise InputError(f"--prompt {text!r}: groundtruth file does not exist")
  else:
    box = _floats(text, 4, "a box x0,y0,x1,y1")
  return _check(prompts.check_box, box, hw)[None]


def parse_point_prompt(text: str, hw, num_frames: int, frame):
  """-> list of (prompt_frame, track indices, points [n,2]) groups, and N tracks."""
  if text.lower().endswith(".npz"):
    if not os.path.isfile(text):
      raise InputError(f"--prompt {text!r}: point file does not exist")
    try:
      with np.load(text) as z:
        trajs, vis = np.asarray(z["trajs_2d"], np.float64), np.asarray(z["visibs"], bool)
    except KeyError as e:
      raise InputError(
        f"--prompt {text!r}: npz lacks {e}; give a TAP-Vid-style npz with "
        "trajs_2d [T,N,2] and visibs [T,N]"
      ) from None
    except (OSError, ValueError) as e:
      raise InputError(f"--prompt {text!r}: cannot read the npz ({e})") from None
    if trajs.ndim != 3 or trajs.shape[-1] != 2 or vis.shape != trajs.shape[:2]:
      raise InputError(
        f"--prompt {text!r}: trajs_2d {trajs.shape} / visibs {vis.shape} must be [T,N,2] / [T,N]"
      )
    if trajs.shape[0] != num_frames:
      raise InputError(
        f"--prompt {text!r}: trajs_2d has {trajs.shape[0]} frames but the video "
        f"has {num_frames}; give the npz of this video"
      )
    n = trajs.shape[1]
    if n == 0:
      raise InputError(f"--prompt {text!r}: the npz has no tracks")
    if frame is not None:
      hidden = [i for i in range(n) if not vis[frame, i]]
      if hidden:
        raise InputError(
          f"--prompt {text!r}: tracks {hidden[:10]} are not visible on frame "
          f"{frame}; omit --frame to use each track's first visible frame"
        )
      q = np.full(n, frame)
    else:
      never = [i for i in range(n) if not vis[:, i].any()]
      if never:
        raise InputError(f"--prompt {text!r}: tracks {never[:10]} are never visible; remove them")
      q = vis.argmax(axis=0)
    pts = trajs[q, np.arange(n)]
  else:
    groups = [g for g in text.split(";") if g.strip()]
    if not groups:
      raise InputError(f"--prompt {text!r}: give a point as x,y")
    pts = np.asarray([_floats(g, 2, "a point x,y") for g in groups])
    n = len(pts)
    q = np.full(n, 0 if frame is None else frame)
  _check(prompts.check_points, pts, None, hw)
  out = []
  for f in sorted(set(q.tolist())):
    sel = np.flatnonzero(q == f)
    out.append((int(f), sel, pts[sel].astype(np.float32)))
  return out, n


# ------------------------------------------------------------------------------ main
def build_parser():
  p = argparse.ArgumentParser(prog="track.py", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="checkpoint directory (params/, config.json)")
  p.add_argument("--video", required=True, help="video file or directory of frames")
  p.add_argument("--task", required=True, choices=TASKS)
  p.add_argument("--prompt", required=True, help="see the module help")
  p.add_argument("--frame", type=int, default=None, help="prompt frame index (default 0)")
  p.add_argument("--reverse", action="store_true", help="track backwards from the prompt frame")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--viz", action="store_true", help="also write <video>_overlay.mp4")
  p.add_argument("--chunk", type=int, default=4, help="frames encoded at once (default 4)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="computation dtype (bfloat16: bf16 matmuls and activations with float32 params, "
    "softmax, LayerNorm statistics and head outputs, as the reference's autocast; "
    "default float32, the parity path)",
  )
  p.add_argument(
    "--point-readout",
    default="argmax",
    choices=READOUTS,
    help="point task: 'argmax' of the video-res logits, integer pixels, as the "
    "reference (default); 'soft_argmax', the readout the point loss trains, "
    "sub-pixel (for models whose S/4 logit grid is coarse, see "
    "sam2pp_jax/tracking/point_readout.py); 'window_soft_argmax', the soft-argmax "
    "in a small window around the argmax (robust to distractors)",
  )
  p.add_argument(
    "--memory",
    default="sam2",
    choices=tuple(POLICIES),
    help="memory policy (sam2pp_jax/tracking/memory): 'sam2' the released tracker (default), "
    "'samurai' Kalman-filter motion-aware memory, 'sam2long' memory pathways (tree search), "
    "'dam4sam' distractor-aware memory",
  )
  p.add_argument(
    "--memory-opt",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="an option of the memory policy (repeatable), e.g. kf_score_weight=0.15",
  )
  return p


def _video_name(path: str) -> str:
  path = os.path.normpath(os.path.abspath(path))
  return (
    os.path.basename(path) if os.path.isdir(path) else os.path.splitext(os.path.basename(path))[0]
  )


def run(args) -> int:
  if args.chunk < 1:
    raise InputError(f"--chunk {args.chunk}: give a chunk size >= 1")
  try:
    memory = get_policy(args.memory, **parse_options(args.memory_opt))
  except ValueError as e:
    raise InputError(f"--memory / --memory-opt: {e}") from None
  config = load_config(args.checkpoint)  # cheap: config errors before the video loads
  try:
    memory.check_model(config)
  except ValueError as e:
    raise InputError(f"--memory {args.memory} on {args.checkpoint}: {e}") from None
  vf = load_video(args.video)
  t_total, hw = vf.num_frames, (vf.height, vf.width)
  frame = None if args.frame is None else _check(prompts.check_frame_index, args.frame, t_total)
  if args.task == "mask":
    masks, obj_ids, palette = parse_mask_prompt(args.prompt, hw)
    groups = [(frame or 0, np.arange(len(obj_ids)), {"mask": masks})]
    n_obj = len(obj_ids)
  elif args.task == "box":
    groups = [(frame or 0, np.arange(1), {"box_xyxy": parse_box_prompt(args.prompt, hw)})]
    n_obj = 1
  else:
    pgroups, n_obj = parse_point_prompt(args.prompt, hw, t_total, frame)
    groups = [
      (f, sel, {"points_xy": pts[:, None], "point_labels": np.ones((len(sel), 1))})
      for f, sel, pts in pgroups
    ]
  out_dir = os.path.abspath(args.out)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise InputError(f"--out {args.out!r} exists and is not a directory")
  name = _video_name(args.video)

  config, params = load_model(args.checkpoint)
  model = build_model(config, args.dtype)
  s = int(model.config.image_size)
  if not args.quiet:
    print(
      f"{name}: {t_total} frames {hw[1]}x{hw[0]}, task {args.task}, {n_obj} object(s)",
      file=sys.stderr,
    )
  frames = preprocess(vf.frames, s)

  # results over the whole video (untracked frames stay empty)
  logits = np.full((t_total, n_obj) + hw, -1.0, np.float32) if args.task == "mask" else None
  boxes = np.zeros((t_total, 4), np.float32)
  trajs = np.zeros((t_total, n_obj, 2), np.float32)
  visibs = np.zeros((t_total, n_obj), bool)
  for f0, sel, prompt in groups:
    n_clip = f0 + 1 if args.reverse else t_total - f0
    bar = None if args.quiet else Progress(n_clip, "tracking")
    r = track_video(
      model,
      params,
      frames,
      hw,
      args.task,
      prompt,
      chunk=args.chunk,
      prompt_frame=f0,
      reverse=args.reverse,
      video_res=args.task == "mask",
      point_readout=args.point_readout,
      memory=memory,
      progress=None if bar is None else (lambda i, b=bar: b.update(i + 1)),
    )
    if bar is not None:
      bar.update(n_clip)
    idx = r["frame_idx"]
    if args.task == "mask":
      logits[idx[:, None], sel[None, :]] = r["video_res_mask_logits"]
    elif args.task == "box":
      boxes[idx] = r["pred_box_xyxy"][:, 0]
    else:
      trajs[:, sel] = prompt["points_xy"][:, 0][None]  # untracked: the query point
      trajs[idx[:, None], sel[None, :]] = r["point_xy"].astype(np.float32)
      visibs[idx[:, None], sel[None, :]] = r["visible"]
  tracked = np.zeros(t_total, bool)
  for f0, _, _ in groups:
    tracked[np.arange(f0, -1, -1) if args.reverse else np.arange(f0, t_total)] = True

  os.makedirs(out_dir, exist_ok=True)
  written = []
  if args.task == "mask":
    pal = davis_palette() if palette is None else _full_palette(palette)
    ids = lambda t: outputs.ids_from_logits(logits[t], obj_ids)
    bar = None if args.quiet else Progress(t_total, "writing ")
    written.append(
      outputs.write_mask_dir(
        os.path.join(out_dir, name),
        vf.frame_names,
        (ids(t) for t in range(t_total)),
        pal,
        on_frame=None if bar is None else (lambda i: bar.update(i + 1)),
      )
    )
  elif args.task == "box":
    written += outputs.write_box_results(os.path.join(out_dir, name + ".txt"), boxes, tracked)
  else:
    written.append(
      outputs.write_points_npz(os.path.join(out_dir, name + ".npz"), trajs, visibs, (hw[1], hw[0]))
    )
  if args.viz:
    written.append(
      _write_viz(
        args,
        vf,
        out_dir,
        name,
        logits,
        boxes,
        trajs,
        visibs,
        tracked,
        obj_ids if args.task == "mask" else None,
        pal if args.task == "mask" else davis_palette(),
      )
    )
  for w in written:
    print(w)
  return 0


def _full_palette(pal):
  full = davis_palette().copy()
  pal = np.asarray(pal, np.uint8).reshape(-1, 3)[:256]
  full[: len(pal)] = pal
  return full


def _write_viz(args, vf, out_dir, name, logits, boxes, trajs, visibs, tracked, obj_ids, pal):
  import cv2

  def draw(t, bgr):
    if not tracked[t]:
      return bgr
    if args.task == "mask":
      return outputs.blend_ids(bgr, outputs.ids_from_logits(logits[t], obj_ids), pal)
    if args.task == "box":  # the box as written to <video>.txt
      x, y, w, h = (int(v) for v in outputs.xyxy_to_xywh_int(boxes[t])[0])
      return cv2.rectangle(bgr.copy(), (x, y), (x + w, y + h), (0, 0, 255), 2)
    out = bgr.copy()
    for i in range(trajs.shape[1]):
      c = tuple(int(v) for v in pal[(i % 255) + 1][::-1])
      x, y = (int(round(v)) for v in trajs[t, i])
      cv2.circle(out, (x, y), 4, c, -1 if visibs[t, i] else 1)
    return out

  bar = None if args.quiet else Progress(vf.num_frames, "video   ")
  return outputs.write_overlay_mp4(
    os.path.join(out_dir, name + "_overlay.mp4"),
    vf.frames,
    draw,
    vf.fps,
    None if bar is None else (lambda i: bar.update(i + 1)),
  )


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return run(args)
  except (InputError, VideoError, CheckpointError) as e:
    print(f"track.py: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"track.py: error: {e}", file=sys.stderr)
    return 2
