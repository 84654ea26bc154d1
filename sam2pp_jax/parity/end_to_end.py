"""End-to-end parity: every outputs/* array of a fixture against our whole-video tracker.

Each tracking path (today: the `lax.scan` tracker) produces the outputs in the reference layout;
`check_end_to_end` compares them with the rules below and prints one line per array.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from sam2pp_jax.parity.components import Row, compare
from sam2pp_jax.parity.fixture import Fixture, split_spot_check
from sam2pp_jax.parity.model_from_fixture import model_and_params

LOGIT_REL_TOL = 2e-3          # max|jax-ref| <= tol * max(1, max|ref|)
MASK_IOU_MIN = 0.999          # binarised video-res masks, per frame
BOX_PX_TOL = 0.05             # video pixels
# Stored memory (bf16): equal except one-ulp flips on at most 0.1 % of the elements (the
# issue's acceptance rule). Measured on the dev set with the scan path: mask 0.127 %,
# box 0.347 %, point 0.107 % -- float32 noise of ~1e-6 pushed across bf16 rounding boundaries,
# amplified on tracked frames; every downstream output stays within 2e-4 relative. This rule
# currently FAILS and is kept strict on purpose: open work, not a tolerance to widen.
BF16_FLIP_FRACTION = 1e-3     # one-ulp bf16 flips allowed on this fraction of elements



def fixture_prompt(fx: Fixture) -> dict:
  """The fixture's user-level prompt for one object (batch axis 1)."""
  if fx.task == "mask":
    return {"mask": fx["inputs/prompt_mask"][None]}
  if fx.task == "box":
    return {"box_xyxy": np.asarray(fx["inputs/prompt_box_xyxy"], np.float32)[None]}
  xy = np.asarray(fx["inputs/prompt_point_xy"], np.float32).reshape(1, -1, 2)
  lab = np.asarray(fx["inputs/prompt_point_label"], np.int32).reshape(1, -1)
  return {"points_xy": xy, "point_labels": lab}


def scan_path(fx: Fixture, model=None, params=None, chunk: int = 4) -> dict:
  """outputs/* names -> arrays in the reference layout, from `track_video` (object 0)."""
  from sam2pp_jax.tracking.propagate import track_video
  if model is None:
    model, params = model_and_params(fx)
  frames = fx.frames().transpose(0, 2, 3, 1)
  hw = tuple(int(v) for v in fx["inputs/video_hw"])
  r = track_video(model, params, frames, hw, fx.task, fixture_prompt(fx), chunk=chunk)
  out = {
      "video_res_mask_logits": r["video_res_mask_logits"][:, 0],
      "low_res_mask_logits": r["low_res_mask_logits"][:, 0],
      "object_score_logits": r["object_score_logits"][:, 0],
      "obj_ptr": r["obj_ptr"][:, 0],
      "maskmem_features_bf16": r["maskmem_features_bf16"][:, 0].transpose(0, 3, 1, 2),
      "maskmem_pos_enc": r["maskmem_pos_enc"].transpose(2, 0, 1),
  }
  if fx.task == "box":
    out["pred_box_xyxy"] = r["pred_box_xyxy"][:, 0]
    out["pred_box_xyxy_norm"] = r["pred_box_xyxy_norm"][:, 0]
  if fx.task == "point":
    out["point_xy"] = r["point_xy"][:, 0].astype(np.int64)
    out["point_visible"] = r["visible"][:, 0]
  return {f"outputs/{k}": v for k, v in out.items()}


def predictor_path(fx: Fixture, model=None, params=None, chunk: int = 4) -> dict:
  """outputs/* from the interactive VideoPredictor: prompt on frame 0, propagate forward."""
  from sam2pp_jax.tracking.predictor import VideoPredictor
  if model is None:
    model, params = model_and_params(fx)
  frames = fx.frames().transpose(0, 2, 3, 1)
  hw = tuple(int(v) for v in fx["inputs/video_hw"])
  pred = VideoPredictor(model, params, fx.task, encode_chunk=chunk)
  state = pred.init_state(frames, video_hw=hw)
  if fx.task == "mask":
    pred.add_new_mask(state, 0, 1, fx["inputs/prompt_mask"])
  elif fx.task == "box":
    pred.add_new_points_or_box(state, 0, 1, box=np.asarray(fx["inputs/prompt_box_xyxy"]))
  else:
    pred.add_new_points_and_generate_gaussian_mask(
        state, 0, 1, np.asarray(fx["inputs/prompt_point_xy"], np.float32).reshape(-1, 2),
        np.asarray(fx["inputs/prompt_point_label"]).reshape(-1),
        radius=int(model.config.point_gaussian_radius),
        sigma=float(model.config.point_gaussian_sigma))
  rows = {}
  for f, _, masks, info in pred.propagate_in_video(state, with_info=True):
    rows[f] = (masks[0], info, pred.frame_output(state, f, 1))
  ts = sorted(rows)
  get = lambda fn: np.stack([fn(*rows[t]) for t in ts])
  out = {
      "video_res_mask_logits": get(lambda m, i, o: m),
      "low_res_mask_logits": get(lambda m, i, o: i["low_res_masks"][0]),
      "object_score_logits": get(lambda m, i, o: i["object_score_logits"][0]),
      "obj_ptr": get(lambda m, i, o: o["obj_ptr"]),
      "maskmem_features_bf16": get(lambda m, i, o: o["maskmem"].transpose(2, 0, 1)),
  }
  h = int(model.config.image_size) // 16
  out["maskmem_pos_enc"] = np.asarray(state.maskmem_pos).reshape(h, h, -1).transpose(2, 0, 1)
  if fx.task == "box":
    out["pred_box_xyxy"] = get(lambda m, i, o: i["boxes_xyxy"][0])
    out["pred_box_xyxy_norm"] = get(lambda m, i, o: i["boxes_xyxy_norm"][0])
  if fx.task == "point":
    out["point_xy"] = get(lambda m, i, o: i["points_xy"][0]).astype(np.int64)
    out["point_visible"] = get(lambda m, i, o: i["visible"][0])
  return {f"outputs/{k}": v for k, v in out.items()}


# name -> producer: the lax.scan tracker and the interactive predictor.
PATHS: dict[str, Callable[[Fixture], dict]] = {"scan": scan_path, "predictor": predictor_path}


# -- comparison rules ----------------------------------------------------------------------------
def _bf16_ulp(x):
  """One bfloat16 ulp at |x| (8 significant bits)."""
  a = np.maximum(np.abs(x.astype(np.float64)), np.finfo(np.float32).tiny)
  return np.exp2(np.floor(np.log2(a)) - 7)


def compare_bf16(name, got, ref) -> Row:
  """Equal except single-ulp flips on at most BF16_FLIP_FRACTION of the elements."""
  if got.shape != ref.shape:
    return Row(name, "FAIL", note=f"shape {got.shape} != reference {ref.shape}")
  d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
  ulp = np.maximum(_bf16_ulp(got), _bf16_ulp(ref))
  n_flip = int(np.count_nonzero(d))
  big = int(np.count_nonzero(d > ulp * (1 + 1e-9)))
  frac = n_flip / max(1, d.size)
  ok = big == 0 and frac <= BF16_FLIP_FRACTION
  mx = float(d.max()) if d.size else 0.0
  return Row(name, "ok" if ok else "FAIL", mx, mx / max(1.0, float(np.abs(ref).max())),
             BF16_FLIP_FRACTION, f"flips={n_flip} ({frac:.2e}) beyond_1ulp={big}")


def compare_masks(name, got, ref) -> Row:
  """Logit tolerance plus per-frame IoU of the binarised (> 0) masks."""
  row = compare(name, got, ref, LOGIT_REL_TOL)
  if row.status == "FAIL" and row.note.startswith("shape"):
    return row
  g, r = got > 0, ref > 0
  ious = []
  for gi, ri in zip(g.reshape(g.shape[0], -1), r.reshape(r.shape[0], -1)):
    u = np.count_nonzero(gi | ri)
    ious.append(1.0 if u == 0 else np.count_nonzero(gi & ri) / u)
  miou = float(min(ious))
  ok = row.status == "ok" and miou >= MASK_IOU_MIN
  return Row(name, "ok" if ok else "FAIL", row.max_abs, row.rel, row.tol,
             f"min_iou={miou:.6f}")


def compare_scores(name, got, ref) -> Row:
  """Logit tolerance plus the object-present decision (score > 0) on every frame."""
  row = compare(name, got, ref, LOGIT_REL_TOL)
  same = np.array_equal(np.asarray(got) > 0, np.asarray(ref) > 0)
  ok = row.status == "ok" and same
  return Row(name, "ok" if ok else "FAIL", row.max_abs, row.rel, row.tol,
             "presence equal" if same else "object presence differs")


def compare_boxes_px(name, got, ref) -> Row:
  row = compare(name, got, ref, 0.0)
  if row.note.startswith("shape"):
    return row
  ok = row.max_abs <= BOX_PX_TOL
  return Row(name, "ok" if ok else "FAIL", row.max_abs, row.rel, BOX_PX_TOL, "px")


def compare_array(fx: Fixture, name: str, got, ref) -> Row:
  """Dispatch on the output's kind (logits / scores / boxes / discrete / bf16 memory)."""
  base = split_spot_check(name)[0]
  leaf = base.split("/", 1)[1]
  got, ref = np.asarray(got), np.asarray(ref)
  if leaf == "video_res_mask_logits":
    return compare_masks(name, got, ref)
  if leaf == "object_score_logits":
    return compare_scores(name, got, ref)
  if leaf == "maskmem_features_bf16":
    return compare_bf16(name, got, ref)
  if leaf == "pred_box_xyxy":
    return compare_boxes_px(name, got, ref)
  if leaf == "pred_box_xyxy_norm":
    h, w = (int(v) for v in fx["inputs/video_hw"])
    row = compare(name, got, ref, 0.0)
    if row.note.startswith("shape"):
      return row
    tol = BOX_PX_TOL / max(h, w)
    return Row(name, "ok" if row.max_abs <= tol else "FAIL", row.max_abs, row.rel, tol)
  if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
    return compare(name, got, ref, 0.0)
  return compare(name, got, ref, LOGIT_REL_TOL)


def path_rows(fx: Fixture, produced: dict, path: str) -> list[Row]:
  rows = []
  for name in sorted(n for n in fx.arrays if n.startswith("outputs/")):
    base, k = split_spot_check(name)
    label = f"[{path}] {name}"
    if base not in produced:
      rows.append(Row(label, "FAIL", note="not produced by this path"))
      continue
    got = produced[base]
    if k:
      got = got[..., ::k, ::k]
    rows.append(compare_array(fx, label, got, fx[name]))
  return rows


def check_end_to_end(fx: Fixture, args=None, paths: dict | None = None) -> bool:
  """Run every tracking path on the fixture; print one line per array; True if all hold."""
  paths = PATHS if paths is None else paths
  all_ok = True
  for pname, producer in paths.items():
    try:
      produced = producer(fx)
    except Exception as e:  # a crashing path is that path's failure, reported
      print(f"FAIL [{pname}] error: {type(e).__name__}: {e}")
      all_ok = False
      continue
    rows = path_rows(fx, produced, pname)
    for r in rows:
      print(r.line())
    bad = [r for r in rows if r.status != "ok"]
    print(f"-- [{pname}] {fx.path.name}: {len(rows) - len(bad)} ok, {len(bad)} failed")
    all_ok &= not bad
  return all_ok
