"""The result files each side's benchmark script writes, from each side's own outputs, compared.

Reference side: the checkout's own writers where they import cleanly (`tools.vos_inference.
save_masks_to_dir` for VOS PNGs; `training.dataset_plus.box.utils` for the SOT box conversion,
then `np.savetxt(fmt="%d")` as `tools/sot_inference.py:save_boxes_to_dir` does); the point
tracking npz is written inline by `tools/pt_inference_plus.py`, so its recipe (first argmax of the
video-res logits, visible = object score > 0, `np.savez(trajs_2d, visibs, size)`) is followed.
Our side: `sam2pp_jax.tracking.outputs`, the writers track.py uses.
"""

from __future__ import annotations

import os

import numpy as np

from sam2pp_jax.io.png import read_palette_png
from sam2pp_jax.tracking import outputs as our_writers


def _reference_box_helpers():
  """(xyxy->xywh, clamp) from the checkout (needs it on sys.path), or None when not importable."""
  try:
    from training.dataset_plus.box.utils import np_box_clamp_xywh, np_box_xyxy_to_xywh
  except Exception:  # the checkout lacks them (Meta's sam2) or an import of theirs fails
    return None
  return np_box_xyxy_to_xywh, np_box_clamp_xywh


def write_reference_files(task, out_dir, video_name, frame_names, hw, ref) -> dict:
  """Files the reference's benchmark script writes for one object (id 1); ref: outputs/* [T,...]."""
  os.makedirs(out_dir, exist_ok=True)
  h, w = hw
  written = {"writer": "reference checkout"}
  if task == "mask":
    from tools.vos_inference import DAVIS_PALETTE, save_masks_to_dir

    for name, logits in zip(frame_names, ref["video_res_mask_logits"]):
      stem = os.path.splitext(name)[0]
      save_masks_to_dir(
        out_dir, video_name, stem, {1: (logits > 0)[None]}, h, w, False, DAVIS_PALETTE
      )
    written["masks"] = os.path.join(out_dir, video_name)
  elif task == "box":
    helpers = _reference_box_helpers()
    if helpers is None:
      raise RuntimeError("the checkout has no training/dataset_plus/box/utils.py (SOT writer)")
    to_xywh, clamp = helpers
    rows = [clamp(to_xywh(np.asarray(b, np.float32)[None])) for b in ref["pred_box_xyxy"]]
    path = os.path.join(out_dir, video_name + ".txt")
    np.savetxt(path, np.concatenate(rows), fmt="%d")
    written["boxes"] = path
  else:
    pts = ref["point_xy"].astype(np.float32)[:, None]  # [T,1,2]; initialised -1, all overwritten
    vis = np.asarray(ref["point_visible"], bool)[:, None]
    path = os.path.join(out_dir, "result_point", video_name + ".npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, trajs_2d=pts, visibs=vis, size=(w, h))
    written["points"] = path
  return written


def write_our_files(task, out_dir, video_name, frame_names, hw, ours) -> dict:
  """Files track.py writes for one object (id 1); ours: outputs/* [T,...] of one of our paths."""
  h, w = hw
  written = {"writer": "sam2pp_jax.tracking.outputs"}
  if task == "mask":
    ids = [our_writers.ids_from_logits(m[None], [1]) for m in ours["video_res_mask_logits"]]
    written["masks"] = our_writers.write_mask_dir(
      os.path.join(out_dir, video_name), frame_names, ids
    )
  elif task == "box":
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, video_name + ".txt")
    our_writers.write_box_results(path, ours["pred_box_xyxy"])
    written["boxes"] = path
  else:
    path = os.path.join(out_dir, "result_point", video_name + ".npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    our_writers.write_points_npz(
      path, ours["point_xy"].astype(np.float32)[:, None], ours["point_visible"][:, None], (w, h)
    )
    written["points"] = path
  return written


def compare_files(task, ref_files: dict, our_files: dict, ref: dict, logit_rel_tol, box_px_tol):
  """{"ok", "what", "detail", "frames"} for the task's result files.

  A file may differ from the reference's only where float noise decides: a mask pixel whose
  reference logit is within the logit tolerance of 0 (`logit_rel_tol` x max(1, max|logits|) of
  the frame), a box integer whose reference float value is within `box_px_tol` of the integer
  it truncates to or from. Points and visibility must be equal (as the per-frame rule).
  """
  if task == "mask":
    rdir, odir = ref_files["masks"], our_files["masks"]
    names = sorted(os.listdir(rdir))
    missing = sorted(set(names) ^ set(os.listdir(odir)))
    diff, n_pix, n_bad = [], 0, 0
    for t, n in enumerate(names):
      if n in missing:
        continue
      a, _ = read_palette_png(os.path.join(rdir, n))
      b, _ = read_palette_png(os.path.join(odir, n))
      if a.shape != b.shape:
        diff.append({"file": n, "shape": [list(a.shape), list(b.shape)]})
        n_bad += 1
        continue
      where = a != b
      k = int(np.count_nonzero(where))
      if not k:
        continue
      lg = np.asarray(ref["video_res_mask_logits"][t])
      tol = logit_rel_tol * max(1.0, float(np.abs(lg).max()))
      worst = float(np.abs(lg[where]).max())
      bad = int(np.count_nonzero(np.abs(lg[where]) > tol))
      n_pix += k
      n_bad += bad
      diff.append({"file": n, "pixels_differing": k, "max_abs_ref_logit": worst, "beyond_tol": bad})
    ok = not missing and n_bad == 0
    detail = (
      f"{len(names)} PNGs, {len(diff)} differ in {n_pix} pixels, "
      + (
        "all at reference logits within the logit tolerance of 0"
        if n_bad == 0
        else f"{n_bad} beyond"
      )
      + (f", {len(missing)} unpaired" if missing else "")
    )
    return {"ok": ok, "what": "VOS palette PNGs (decoded ids)", "detail": detail, "frames": diff}
  if task == "box":
    with open(ref_files["boxes"], "rb") as f:
      a = f.read().decode().splitlines()
    with open(our_files["boxes"], "rb") as f:
      b = f.read().decode().splitlines()
    xyxy = np.asarray(ref["pred_box_xyxy"], np.float32).reshape(-1, 4)
    xywh = np.clip(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1), 0, None)
    diff, n_bad = [], 0
    for i, (x, y) in enumerate(zip(a, b)):
      if x == y:
        continue
      va, vb = np.asarray(x.split(), np.int64), np.asarray(y.split(), np.int64)
      near = np.abs(xywh[i] - np.round(xywh[i])) <= box_px_tol
      bad = int(np.count_nonzero((va != vb) & ~(near & (np.abs(va - vb) <= 1))))
      n_bad += bad
      diff.append({"line": i, "reference": x, "ours": y, "beyond_tol": bad})
    ok = n_bad == 0 and len(a) == len(b)
    detail = f"{len(a)} lines, {len(diff)} differ" + (
      ""
      if not diff
      else " (by one, at reference values within the box tolerance of an integer)"
      if n_bad == 0
      else f", {n_bad} values beyond"
    )
    if len(a) != len(b):
      detail += " (line counts differ)"
    return {"ok": ok, "what": "SOT x y w h txt (text)", "detail": detail, "frames": diff}
  with np.load(ref_files["points"]) as za, np.load(our_files["points"]) as zb:
    diff = []
    for key in ("trajs_2d", "visibs", "size"):
      if za[key].shape != zb[key].shape or not np.array_equal(za[key], zb[key]):
        diff.append({"array": key})
    frames = np.flatnonzero(
      np.any(za["trajs_2d"] != zb["trajs_2d"], axis=(1, 2))
      | np.any(za["visibs"] != zb["visibs"], 1)
    ).tolist()
  return {
    "ok": not diff,
    "what": "TAP-Vid npz (trajs_2d, visibs, size)",
    "detail": f"arrays differing: {[d['array'] for d in diff] or 'none'}; frames {frames[:20]}",
    "frames": [{"frame": int(t)} for t in frames],
  }
