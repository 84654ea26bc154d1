"""End-to-end parity: every outputs/* array of a fixture against our whole-video tracker.

Each tracking path (today: the `lax.scan` tracker) produces the outputs in the reference layout;
`check_end_to_end` compares them with the rules below and prints one line per array.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sam2pp_jax.parity.components import Row, compare
from sam2pp_jax.parity.fixture import Fixture, split_spot_check
from sam2pp_jax.parity.model_from_fixture import model_and_params
from sam2pp_jax.tracking.predictor import VideoPredictor
from sam2pp_jax.tracking.propagate import track_video

LOGIT_REL_TOL = 2e-3  # max|jax-ref| <= tol * max(1, max|ref|)
MASK_IOU_MIN = 0.999  # binarised video-res masks, per frame
BOX_PX_TOL = 0.05  # video pixels
# Stored memory (bf16), the project lead's rule (see `bf16_rule`): at most BF16_FLIP_FRACTION of
# the elements differ from the reference at all; a differing element is off by one bf16 ulp of
# the larger magnitude, or by at most BF16_ABS_TOL * max(1, max|ref|) (near zero, where a float32
# difference spans several bf16 ulps); at most BF16_TWO_ULP_FRACTION of the elements are off by
# two ulps and none by more. The flips are float32 noise (~1e-6, other kernels than the
# reference's) pushed across bf16 rounding boundaries; two float32 runs of the reference itself
# (1 vs 2 threads) differ by such one-ulp flips too.
BF16_FLIP_FRACTION = 5e-3  # elements that differ at all
BF16_TWO_ULP_FRACTION = 1e-4  # elements off by (1, 2] ulps (and beyond the absolute tolerance)
BF16_ABS_TOL = 1e-4  # x max(1, max|ref|): a difference this small is one flip


def fixture_prompt(fx: Fixture) -> dict:
  """The fixture's user-level prompt for one object (batch axis 1)."""
  if fx.task == "mask":
    return {"mask": fx["inputs/prompt_mask"][None]}
  if fx.task == "box":
    return {"box_xyxy": np.asarray(fx["inputs/prompt_box_xyxy"], np.float32)[None]}
  xy = np.asarray(fx["inputs/prompt_point_xy"], np.float32).reshape(1, -1, 2)
  lab = np.asarray(fx["inputs/prompt_point_label"], np.int32).reshape(1, -1)
  return {"points_xy": xy, "point_labels": lab}


def scan_path(fx: Fixture, model=None, params=None, chunk: int = 4, progress=None) -> dict:
  """outputs/* names -> arrays in the reference layout, from `track_video` (object 0).
  `progress(frame)` is called as frames complete."""
  if model is None:
    model, params = model_and_params(fx)
  frames = fx.frames().transpose(0, 2, 3, 1)
  hw = tuple(int(v) for v in fx["inputs/video_hw"])
  r = track_video(
    model, params, frames, hw, fx.task, fixture_prompt(fx), chunk=chunk, progress=progress
  )
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


def predictor_path(fx: Fixture, model=None, params=None, chunk: int = 4, progress=None) -> dict:
  """outputs/* from the interactive VideoPredictor: prompt on frame 0, propagate forward.
  `progress(frame)` is called as frames complete."""
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
      state,
      0,
      1,
      np.asarray(fx["inputs/prompt_point_xy"], np.float32).reshape(-1, 2),
      np.asarray(fx["inputs/prompt_point_label"]).reshape(-1),
      radius=int(model.config.point_gaussian_radius),
      sigma=float(model.config.point_gaussian_sigma),
    )
  rows = {}
  for f, _, masks, info in pred.propagate_in_video(state, with_info=True):
    rows[f] = (masks[0], info, pred.frame_output(state, f, 1))
    if progress is not None:
      progress(f)
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
  """One bfloat16 ulp at |x| (8 significant bits): 2**(floor(log2|x|) - 7), exact (frexp)."""
  a = np.maximum(np.abs(np.asarray(x, np.float64)), np.finfo(np.float32).tiny)
  _, e = np.frexp(a)  # a = m * 2**e, m in [0.5, 1): floor(log2 a) = e - 1
  return np.ldexp(1.0, e - 8)


def bf16_rule(got, ref) -> dict:
  """Measure `got` against `ref` (bf16-rounded arrays) under the stored-memory rule.

  Returns counts and fractions: `n_flip` elements that differ at all, `n_two_ulp` off by more
  than one ulp (of the larger magnitude of the pair) and beyond the absolute tolerance but at
  most two ulps, `n_beyond` off by more than two ulps and beyond the absolute tolerance,
  `n_abs_only` differing elements admitted only by the absolute tolerance (more than one ulp
  apart), `max_ulps` the largest difference in ulps over the elements beyond the absolute
  tolerance (the figure the ulp limits judge), `max_ulps_all` over every element (near-zero
  elements within the absolute tolerance can span many ulps), `max_abs`, `abs_tol`, and `ok`.
  """
  got = np.asarray(got, np.float64)
  ref = np.asarray(ref, np.float64)
  d = np.abs(got - ref)
  n = max(1, d.size)
  ulp = np.maximum(_bf16_ulp(got), _bf16_ulp(ref))
  ref_max = float(np.abs(ref).max()) if ref.size else 0.0
  abs_tol = BF16_ABS_TOL * max(1.0, ref_max)
  with np.errstate(invalid="ignore"):
    ulps = np.where(d == 0, 0.0, d / ulp)  # NaN where either side is NaN
  bad = ~np.isfinite(ulps)  # a NaN or inf on either side: beyond
  ulps = np.where(bad, np.inf, ulps)
  differ = (d != 0) | bad
  small = ~bad & (d <= abs_tol)
  one = ~bad & (ulps <= 1.0)
  two = ~bad & ~one & ~small & (ulps <= 2.0)
  beyond = differ & ~one & ~small & ~two
  r = {
    "size": int(d.size),
    "n_flip": int(np.count_nonzero(differ)),
    "n_two_ulp": int(np.count_nonzero(two)),
    "n_beyond": int(np.count_nonzero(beyond)),
    "n_abs_only": int(np.count_nonzero(differ & small & ~one)),
    "max_ulps": float(np.where(small, 0.0, ulps).max()) if d.size else 0.0,
    "max_ulps_all": float(ulps.max()) if d.size else 0.0,
    "max_abs": float(np.where(bad, np.inf, d).max()) if d.size else 0.0,
    "abs_tol": abs_tol,
    "ref_max": ref_max,
  }
  r["flip_frac"] = r["n_flip"] / n
  r["two_ulp_frac"] = r["n_two_ulp"] / n
  r["ok"] = (
    r["n_beyond"] == 0
    and r["flip_frac"] <= BF16_FLIP_FRACTION
    and r["two_ulp_frac"] <= BF16_TWO_ULP_FRACTION
  )
  return r


def compare_bf16(name, got, ref) -> Row:
  """The stored-bf16-memory rule (`bf16_rule`); the note gives flip rate, two-ulp count and the
  largest difference in ulps."""
  got, ref = np.asarray(got), np.asarray(ref)
  if got.shape != ref.shape:
    return Row(name, "FAIL", note=f"shape {got.shape} != reference {ref.shape}")
  r = bf16_rule(got, ref)
  note = (
    f"flips={r['n_flip']} ({100 * r['flip_frac']:.3f}% <= {100 * BF16_FLIP_FRACTION:g}%) "
    f"two_ulp={r['n_two_ulp']} ({100 * r['two_ulp_frac']:.4f}% <= "
    f"{100 * BF16_TWO_ULP_FRACTION:g}%) beyond_2ulp={r['n_beyond']} "
    f"max_ulps={r['max_ulps']:.3g} abs_tol_only={r['n_abs_only']} "
    f"(<= {r['abs_tol']:.3g} abs, up to {r['max_ulps_all']:.3g} ulps)"
  )
  return Row(
    name,
    "ok" if r["ok"] else "FAIL",
    r["max_abs"],
    r["max_abs"] / max(1.0, r["ref_max"]),
    BF16_FLIP_FRACTION,
    note,
  )


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
  return Row(name, "ok" if ok else "FAIL", row.max_abs, row.rel, row.tol, f"min_iou={miou:.6f}")


def compare_scores(name, got, ref) -> Row:
  """Logit tolerance plus the object-present decision (score > 0) on every frame."""
  row = compare(name, got, ref, LOGIT_REL_TOL)
  same = np.array_equal(np.asarray(got) > 0, np.asarray(ref) > 0)
  ok = row.status == "ok" and same
  return Row(
    name,
    "ok" if ok else "FAIL",
    row.max_abs,
    row.rel,
    row.tol,
    "presence equal" if same else "object presence differs",
  )


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
