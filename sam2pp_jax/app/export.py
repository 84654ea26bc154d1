"""Export of a session's results as one zip, in the layouts `eval.py score` reads.

Zip layout (`<video>` = the video folder's name, or the video file's name without extension):

* ``masks/<video>/<frame>.png``  8-bit palette PNGs (pixel = object id), every frame (an empty
  map where nothing was tracked) -- mask and box tasks (`tracking.outputs.write_mask_dir`);
* ``boxes/<video>.txt`` (+ ``<video>_xyxy.npz``)  GOT-10k ``x y w h`` lines -- box task; with
  several objects one file per object, ``boxes/<video>_obj<id>.txt`` (+ ``_xyxy.npz``);
  frames without a result are "0 0 0 0" / not tracked (`write_box_results`);
* ``points/<video>.npz``  TAP-Vid ``trajs_2d`` [T,N,2], ``visibs`` [T,N], ``size`` (W, H), one
  track per object in `obj_ids` order -- point task (`write_points_npz`);
* ``overlay.mp4``  every frame as `Session.render` draws it (`write_overlay_mp4`; left out, with
  a note in README.txt, when OpenCV has no mp4 encoder);
* ``README.txt``  this layout, the task, memory policy and objects.

Everything is staged in a temporary folder beside the target and the zip is renamed into place
when complete, so `path` is either the old file or the complete new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile

import numpy as np

from sam2pp_jax.io.atomic import atomic_path
from sam2pp_jax.tracking.outputs import (
  write_box_results,
  write_mask_dir,
  write_overlay_mp4,
  write_points_npz,
)


class _LazyFrames:
  """Array-like [T,H,W,3] over a session's frames (one frame in memory at a time)."""

  def __init__(self, session):
    self.s = session
    h, w = session.video_hw
    self.shape = (session.num_frames, h, w, 3)

  def __getitem__(self, t):
    return self.s.frame_rgb(int(t))


def _id_maps(session):
  h, w = session.video_hw
  for t in range(session.num_frames):
    m = session.result(t)["ids"]
    yield np.zeros((h, w), np.uint8) if m is None else m


def write_exports(session, root, progress=None) -> list:
  """Write the export tree (module docstring) under `root`; returns the relative paths."""
  name, task, t_total = session.video_name, session.task, session.num_frames
  objs = list(session.obj_ids)
  results = [session.result(t) for t in range(t_total)] if task != "mask" else None
  steps = t_total * 2
  done = [0]

  def tick(_=None):
    done[0] += 1
    if progress is not None:
      progress(min(done[0], steps), steps)

  if task in ("mask", "box"):
    write_mask_dir(
      os.path.join(root, "masks", name), session.frame_names, _id_maps(session), on_frame=tick
    )
  else:
    done[0] += t_total
  if task == "box":
    os.makedirs(os.path.join(root, "boxes"), exist_ok=True)
    for obj in objs:
      boxes = np.zeros((t_total, 4), np.float32)
      tracked = np.zeros(t_total, bool)
      for t, r in enumerate(results):
        if obj in r["boxes"]:
          boxes[t], tracked[t] = r["boxes"][obj], True
      stem = name if len(objs) == 1 else f"{name}_obj{obj}"
      write_box_results(os.path.join(root, "boxes", stem + ".txt"), boxes, tracked)
  if task == "point":
    trajs = np.zeros((t_total, len(objs), 2), np.float32)
    vis = np.zeros((t_total, len(objs)), bool)
    for t, r in enumerate(results):
      for i, obj in enumerate(objs):
        if obj in r["points"]:
          x, y, v = r["points"][obj]
          trajs[t, i], vis[t, i] = (x, y), bool(v)
    os.makedirs(os.path.join(root, "points"), exist_ok=True)
    h, w = session.video_hw
    write_points_npz(os.path.join(root, "points", name + ".npz"), trajs, vis, (w, h))
  note = ""
  try:
    write_overlay_mp4(
      os.path.join(root, "overlay.mp4"),
      _LazyFrames(session),
      lambda t, bgr: np.ascontiguousarray(session.render(t)[..., ::-1]),
      fps=session.fps,
      on_frame=tick,
    )
  except OSError as e:
    note = f"\noverlay.mp4 left out: {e}\n"
  readme = (
    f"video: {session.video_path} ({t_total} frames)\ntask: {task}\nmemory: {session.memory}\n"
    f"objects: {objs}\n\n" + (__doc__ or "") + note
  )
  with open(os.path.join(root, "README.txt"), "w", encoding="utf-8") as f:
    f.write(readme)
  rel = []
  for d, _, files in os.walk(root):
    for fn in files:
      rel.append(os.path.relpath(os.path.join(d, fn), root))
  return sorted(rel)


def export_session(session, path, progress=None) -> str:
  """The session's results as a zip at `path` (module docstring); returns its absolute path."""
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  stage = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    files = write_exports(session, stage, progress)
    with atomic_path(path, suffix=".zip") as tmp:
      with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in files:
          z.write(os.path.join(stage, rel), rel.replace(os.sep, "/"))
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  return path
