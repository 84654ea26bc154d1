#!/usr/bin/env python3
"""Fill sparse key-frame annotations into a dense annotation set (the SAM 2++ data engine).

  python annotate.py --checkpoint DIR --video PATH --task mask|box|point --keyframes SPEC
                     --out DIR [--fuse nearest|score] [--memory POLICY] [--quiet]
                     [--key-every K | --key-frames 0,10,20] [--point-readout R]   (point task)

Key frames (--keyframes SPEC, video pixels):
  mask   a folder of palette PNGs named like the frames (00012.png for frame 00012.jpg); the
         frames with a PNG are the key frames, every non-zero id of any PNG is an object. A
         key-frame PNG must show at least one object.
  box    a text file, one key frame per line: frame,x,y,w,h (GOT-10k x,y,w,h; frame = index
         from 0); one object. Blank lines and lines starting with '#' are skipped.
  point  a TAP-Vid npz (trajs_2d [T,N,2], visibs [T,N], as track.py / eval.py write them) and
         --key-every K (frames 0, K, 2K, ... and the last) or --key-frames 0,10,20: the npz's
         points on those frames are the key annotations, the rest of the npz is ignored. A
         track hidden on a key frame is not prompted there; every track must be visible on
         at least one key frame, a visible key point inside the frame (up to 1 px outside:
         clipped onto the edge for the prompt).

Between consecutive key frames the engine tracks forward from the earlier one and backward
from the later one (each pass sees only its own key frame) and fuses the two per frame and
object; before the first / after the last key frame one pass fills alone. Key frames are
written exactly as annotated. Fuse rules (sam2pp_jax/engine.py):
  nearest  (default) the pass of the nearer key frame, unless it says the object is absent
           (object score logit < 0) while the other says present with logit > 2;
  score    the pass with the higher predicted IoU x sigmoid(object score) (points: sigmoid).

Outputs (the scorers' layouts, written atomically; see sam2pp_jax/tracking/outputs.py):
  mask   OUT/<video>/<frame>.png   palette PNGs, value = object id
  box    OUT/<video>.txt           GOT-10k 'x y w h' integer lines (+ OUT/<video>_xyxy.npz)
  point  OUT/<video>.npz           trajs_2d [T,N,2], visibs [T,N], size (W, H)
A bad input exits with status 2 and one line 'annotate.py: error: ...'; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from sam2pp_jax import engine
from sam2pp_jax.checkpoint import CheckpointError, load_config, load_model
from sam2pp_jax.io.png import davis_palette, read_palette_png
from sam2pp_jax.io.video import VideoError, load_video
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.progress import Progress
from sam2pp_jax.tracking.memory import POLICIES, get_policy
from sam2pp_jax.tracking.point_readout import READOUTS
from sam2pp_jax.tracking.predictor.video_predictor import VideoPredictor


def build_parser():
  p = argparse.ArgumentParser(
    prog="annotate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--checkpoint", required=True, help="checkpoint directory (params/, config.json)")
  p.add_argument("--video", required=True, help="video file or directory of frames")
  p.add_argument("--task", required=True, choices=TASKS)
  p.add_argument("--keyframes", required=True, help="key-frame annotations (see above)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--fuse", default="nearest", choices=engine.FUSE_RULES, help="default nearest")
  p.add_argument("--memory", default="sam2", choices=tuple(POLICIES), help="memory policy")
  p.add_argument("--key-every", type=int, default=None, help="point task: key frame interval")
  p.add_argument("--key-frames", default=None, help="point task: key frame indices, e.g. 0,10,20")
  p.add_argument(
    "--point-readout",
    default="argmax",
    choices=READOUTS,
    help="point task: read-out of the point from the logits (as track.py; default argmax)",
  )
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p


def video_name(path: str) -> str:
  path = os.path.normpath(os.path.abspath(path))
  return (
    os.path.basename(path) if os.path.isdir(path) else os.path.splitext(os.path.basename(path))[0]
  )


def read_keys(args, vf) -> engine.KeyFrames:
  """The task's key-frame file(s) -> KeyFrames (AnnotationError on any problem)."""
  hw = (vf.height, vf.width)
  point_opts = args.key_every is not None or args.key_frames is not None
  if args.task != "point" and point_opts:
    raise engine.AnnotationError(
      "--key-every / --key-frames choose the point task's key frames; for mask and box the "
      "key frames are the annotated ones, drop the option"
    )
  if args.task == "mask":
    return engine.read_mask_keys(args.keyframes, vf.frame_names, hw)
  if args.task == "box":
    return engine.read_box_keys(args.keyframes, vf.num_frames, hw)
  frames = engine.key_frame_list(vf.num_frames, args.key_every, args.key_frames)
  return engine.read_point_keys(args.keyframes, vf.num_frames, hw, frames)


def key_palette(args):
  """The mask task's first key PNG's palette over the DAVIS one (the DAVIS one otherwise)."""
  full = davis_palette().copy()
  if args.task == "mask":
    first = min(n for n in os.listdir(args.keyframes) if n.lower().endswith(".png"))
    _, pal = read_palette_png(os.path.join(args.keyframes, first))
    if pal is not None:
      pal = np.asarray(pal, np.uint8).reshape(-1, 3)[:256]
      full[: len(pal)] = pal
  return full


def run(args) -> int:
  try:
    memory = get_policy(args.memory)
  except ValueError as e:
    raise engine.AnnotationError(f"--memory {args.memory}: {e}") from None
  config = load_config(args.checkpoint)  # cheap: config errors before the video loads
  try:
    memory.check_model(config)
  except ValueError as e:
    raise engine.AnnotationError(f"--memory {args.memory} on {args.checkpoint}: {e}") from None
  vf = load_video(args.video)
  keys = read_keys(args, vf)
  out_dir = os.path.abspath(args.out)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise engine.AnnotationError(f"--out {args.out!r} exists and is not a directory")
  name = video_name(args.video)
  palette = key_palette(args)

  config, params = load_model(args.checkpoint)
  predictor = VideoPredictor(
    build_model(config), params, args.task, memory=memory, point_readout=args.point_readout
  )
  if not args.quiet:
    print(
      f"{name}: {vf.num_frames} frames {vf.width}x{vf.height}, task {args.task}, "
      f"{len(keys.obj_ids)} object(s), {len(keys.frames)} key frame(s), fuse {args.fuse}",
      file=sys.stderr,
    )
  state = predictor.init_state(vf.frames)
  bar = None if args.quiet else Progress(vf.num_frames, "filling ")

  def results():
    for t, r in engine.fill_video(predictor, state, keys, (args.fuse,)):
      if bar is not None:
        bar.update(t + 1)
      yield r[args.fuse]

  hw = (vf.height, vf.width)
  for w in engine.write_dense(args.task, out_dir, name, vf.frame_names, hw, results(), palette):
    print(w)
  return 0


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return run(args)
  except (engine.AnnotationError, VideoError, CheckpointError, OSError) as e:
    print(f"annotate.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
