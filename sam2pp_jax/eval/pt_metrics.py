"""Point-tracking scores (TAP-Vid "first" mode, BADJA PCK) exactly as the official toolkits compute.

Files: gt/<seq>.npz and pred/<seq>.npz with trajs_2d [T,N,2] (x, y px), visibs [T,N], size (W, H);
PCK also reads gt/Annotations/<seq>/*.png (> 0 = object; a `Points` folder may sit next to
`Annotations` instead, the SAM2-Plus layout). Sequences are gt/*.npz sorted by name unless given.

Protocols (report `protocol` / units):
  sam2plus_tapvid (percent): SAM2-Plus evaluate_jaccard_from_npz; coordinates truncated toward
    zero (astype(int)), then / own (W, H) * 256. Query frame = first GT-visible frame.
  tapnet_tapvid (fraction): tapnet sample_queries_first + compute_tapvid_metrics on float
    coordinates x*256/W, y*256/H.
  sam2plus_pck (percent): SAM2-Plus evaluate_pck_from_npz; points at 512x320, masks resized by
    torch-style nearest to 320x512, a GT-visible point of frames 1..T-1 is correct when its float32
    distance < 0.2*sqrt(mask area). Mask folders: *.png sorted by name (the reference opens
    every file there). Dataset values are plain means over videos.

Refused (MetricInputError), because the reference raises or produces garbage:
  no gt/*.npz or an empty sequence list; a missing or unreadable gt/pred npz; a missing key
  (trajs_2d, visibs, size; PCK needs no pred visibs); trajs_2d not [T,N,2], T = 0, visibs not [T,N];
  pred T/N different from the GT; size not two positive finite numbers; a non-finite GT coordinate
  at a GT-visible frame. tapnet: a video with no GT-visible track. PCK: a video with no GT-visible
  (frame >= 1, point) pair; a missing mask folder, a mask count != T, a mask size != the GT (W, H).

Documented values, reproduced:
  tracks never visible in the GT are scored nowhere (SAM2-Plus: query frame T-1; tapnet: dropped);
  SAM2-Plus gives 0 for an empty pts_within / Jaccard denominator and NaN occlusion accuracy for a
  video without scored points, and that NaN carries into the dataset mean; tapnet divides 0/0 to
  NaN (e.g. every visible GT point sits on its query frame), also carried into the mean; an empty
  PCK mask frame makes every point of that frame wrong; a non-finite prediction is a miss (on x86
  the reference's int cast turns it into INT64_MIN).
"""

from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from sam2pp_jax.eval.common import MetricInputError, make_report
from sam2pp_jax.io.png import read_palette_png
from sam2pp_jax.io.video import VideoError

THRESHOLDS = (1, 2, 4, 8, 16)
TAPVID_SCALE = 256.0
PCK_SIZE_WH = (512, 320)
PCK_FRACTION = np.float32(0.2)
TAPVID_KEYS = (
  ("occlusion_accuracy",)
  + tuple(k for t in THRESHOLDS for k in (f"pts_within_{t}", f"jaccard_{t}"))
  + ("average_jaccard", "average_pts_within_thresh")
)
INT64_MIN = float(-(2**63))


# ----------------------------------------------------------------------------- reading
def list_sequences(gt_dir: str, sequences: Optional[Sequence[str]] = None) -> List[str]:
  """gt/*.npz stems sorted by name, or the caller's list; an empty set has no dataset mean."""
  if not os.path.isdir(gt_dir):
    raise MetricInputError(
      f"ground-truth folder {gt_dir!r} does not exist; pass the folder holding <seq>.npz"
    )
  if sequences is None:
    sequences = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(gt_dir, "*.npz")))
  sequences = list(sequences)
  if not sequences:
    raise MetricInputError(
      f"{gt_dir}: no sequences to score (no <seq>.npz found or an empty "
      "list); the reference cannot average zero videos"
    )
  return sequences


def _load_npz(path: str, keys: Sequence[str], role: str) -> Dict[str, np.ndarray]:
  """The arrays `keys` of one npz; a missing file or key is what the reference trips on."""
  if not os.path.isfile(path):
    raise MetricInputError(
      f"{path}: {role} file is missing; write <seq>.npz for every scored "
      "sequence (tools/pt_inference_plus.py output)"
    )
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in keys if k not in z.files]
      if missing:
        raise MetricInputError(f"{path}: {role} npz lacks key(s) {missing}; it needs {list(keys)}")
      return {k: np.asarray(z[k]) for k in keys}
  except MetricInputError:
    raise
  except Exception as e:  # corrupt zip, pickled object arrays, ...
    raise MetricInputError(
      f"{path}: cannot read {role} npz ({e}); re-save it with np.savez"
    ) from None


def _check_tracks(d: Dict[str, np.ndarray], path: str, role: str) -> None:
  """Shapes the reference indexes without checking; wrong ones would silently mis-score."""
  trajs = d["trajs_2d"]
  if trajs.ndim != 3 or trajs.shape[2] != 2 or trajs.shape[0] == 0:
    raise MetricInputError(
      f"{path}: {role} trajs_2d has shape {trajs.shape}; expected [T>0, N, 2] (x, y) in pixels"
    )
  if not np.issubdtype(trajs.dtype, np.number) or np.iscomplexobj(trajs):
    raise MetricInputError(f"{path}: {role} trajs_2d has dtype {trajs.dtype}; expected floats")
  if "visibs" in d and d["visibs"].shape != trajs.shape[:2]:
    raise MetricInputError(
      f"{path}: {role} visibs has shape {d['visibs'].shape}; expected "
      f"{trajs.shape[:2]} to match trajs_2d"
    )
  size = d["size"]
  ok = size.size == 2 and np.issubdtype(size.dtype, np.number)
  if not ok or not np.all(np.isfinite(size.astype(np.float64))) or np.any(size <= 0):
    raise MetricInputError(
      f"{path}: {role} size is {size.tolist()}; expected two positive numbers (W, H) in pixels"
    )


def _load_pair(gt_dir: str, pred_dir: str, seq: str, pred_keys: Sequence[str]):
  """GT and prediction of one video, checked against each other as the reference asserts."""
  gt_path = os.path.join(gt_dir, f"{seq}.npz")
  pred_path = os.path.join(pred_dir, f"{seq}.npz")
  gt = _load_npz(gt_path, ("trajs_2d", "visibs", "size"), "ground-truth")
  _check_tracks(gt, gt_path, "ground-truth")
  pred = _load_npz(pred_path, pred_keys, "prediction")
  _check_tracks(pred, pred_path, "prediction")
  if pred["trajs_2d"].shape != gt["trajs_2d"].shape:
    raise MetricInputError(
      f"{pred_path}: prediction trajs_2d has shape "
      f"{pred['trajs_2d'].shape} but the GT {gt_path} has "
      f"{gt['trajs_2d'].shape}; predict every GT frame (T) and point (N)"
    )
  vis = gt["visibs"].astype(bool)
  bad = vis & ~np.all(np.isfinite(gt["trajs_2d"].astype(np.float64)), axis=-1)
  if bad.any():
    t, n = np.argwhere(bad)[0]
    raise MetricInputError(
      f"{gt_path}: ground-truth coordinate of point {n} at frame {t} is not "
      f"finite although visible ({int(bad.sum())} such entries); fix the GT "
      "or mark those points occluded"
    )
  return gt, pred, gt_path


# ----------------------------------------------------------------------------- TAP-Vid
def _scored_points(gt_vis: np.ndarray) -> np.ndarray:
  """[T,N]: frames strictly after each track's first GT-visible frame (never-visible: none)."""
  before = np.cumsum(gt_vis, axis=0, dtype=np.int64) - gt_vis
  return before > 0


def _divide(num: int, den: int, zero_if_empty: bool) -> float:
  """SAM2-Plus guards empty denominators with 0; tapnet lets numpy make 0/0 = NaN (num <= den)."""
  if den == 0:
    return 0.0 if zero_if_empty else np.nan
  return num / den


def tapvid_fractions(gt_xy, gt_vis, pred_xy, pred_vis, *, zero_if_empty: bool) -> Dict[str, float]:
  """compute_tapvid_metrics for one video, query mode "first", as fractions (coords at 256 px)."""
  gt_vis = np.asarray(gt_vis, bool)
  pred_vis = np.asarray(pred_vis, bool)
  scored = _scored_points(gt_vis)
  n_scored = int(scored.sum())
  with np.errstate(invalid="ignore", divide="ignore"):
    oa = np.float64(np.sum((pred_vis == gt_vis) & scored)) / np.float64(n_scored)
  d2 = np.sum(np.square(np.asarray(pred_xy, np.float64) - np.asarray(gt_xy, np.float64)), -1)
  within = d2[None] < np.square(np.asarray(THRESHOLDS))[:, None, None]  # [5,T,N]
  vis_scored = gt_vis & scored
  n_vis = int(vis_scored.sum())
  correct = np.sum(within & vis_scored, axis=(1, 2))
  tp = np.sum(within & vis_scored & pred_vis, axis=(1, 2))
  fp = np.sum((~gt_vis | ~within) & pred_vis & scored, axis=(1, 2))
  out = {"occlusion_accuracy": float(oa)}
  pts, jac = [], []
  for i, t in enumerate(THRESHOLDS):
    pts.append(_divide(int(correct[i]), n_vis, zero_if_empty))
    jac.append(_divide(int(tp[i]), n_vis + int(fp[i]), zero_if_empty))
    out[f"pts_within_{t}"] = pts[-1]
    out[f"jaccard_{t}"] = jac[-1]
  out["average_jaccard"] = float(np.mean(np.array(jac)))
  out["average_pts_within_thresh"] = float(np.mean(np.array(pts)))
  return {k: out[k] for k in TAPVID_KEYS}


def _truncate_like_int_cast(x: np.ndarray) -> np.ndarray:
  """numpy astype(int) on x86: truncation toward zero; NaN/Inf/overflow become INT64_MIN."""
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x) & (x < 2.0**63) & (x >= -(2.0**63))
  return np.where(ok, np.trunc(np.where(ok, x, 0.0)), INT64_MIN)


def _to_256(xy: np.ndarray, size: np.ndarray, truncate: bool) -> np.ndarray:
  """SAM2-Plus: trunc(x) / W * 256; tapnet, as the reference cases convert: x * 256 / W."""
  wh = size.reshape(2).astype(np.float64)
  if truncate:
    return _truncate_like_int_cast(xy) / wh * TAPVID_SCALE
  return np.asarray(xy, np.float64) * TAPVID_SCALE / wh


def _dataset_mean(values: List[float]) -> float:
  """The reference averages per-video values over videos (axis 0); NaN propagates."""
  with np.errstate(invalid="ignore"):
    return float(np.mean(np.asarray(values, np.float64)[:, None], axis=0)[0])


def _score_tapvid(gt_dir, pred_dir, sequences, sam2plus: bool) -> dict:
  """Shared driver of the two TAP-Vid protocols; they differ in rounding, guards and units."""
  per_sequence = {}
  for seq in list_sequences(gt_dir, sequences):
    gt, pred, gt_path = _load_pair(gt_dir, pred_dir, seq, ("trajs_2d", "visibs", "size"))
    gt_vis = gt["visibs"].astype(bool)
    if not sam2plus and not gt_vis.any():
      raise MetricInputError(
        f"{gt_path}: no point is visible in any GT frame; tapnet's "
        "sample_queries_first cannot build a query (np.stack of nothing). "
        "Drop the video or use the sam2plus_tapvid protocol"
      )
    frac = tapvid_fractions(
      _to_256(gt["trajs_2d"], gt["size"], sam2plus),
      gt_vis,
      _to_256(pred["trajs_2d"], pred["size"], sam2plus),
      pred["visibs"].astype(bool),
      zero_if_empty=sam2plus,
    )
    per_sequence[seq] = {k: v * 100 for k, v in frac.items()} if sam2plus else frac
  overall = {k: _dataset_mean([m[k] for m in per_sequence.values()]) for k in TAPVID_KEYS}
  if sam2plus:
    return make_report("point", "sam2plus_tapvid", overall, per_sequence, units="percent")
  return make_report("point", "tapnet_tapvid", overall, per_sequence, units="fraction")


def score_sam2plus_tapvid(gt_dir: str, pred_dir: str, *, sequences=None) -> dict:
  """SAM2-Plus PointTrackingScore_aj (percent, truncated coordinates)."""
  return _score_tapvid(gt_dir, pred_dir, sequences, sam2plus=True)


def score_tapvid(gt_dir: str, pred_dir: str, *, sequences=None) -> dict:
  """tapnet compute_tapvid_metrics with sample_queries_first (fractions, float coordinates)."""
  return _score_tapvid(gt_dir, pred_dir, sequences, sam2plus=False)


# ----------------------------------------------------------------------------- PCK
def nearest_source_index(out_size: int, in_size: int) -> np.ndarray:
  """torch F.interpolate(mode='nearest') source rows: floor(dst * float32(in/out)), capped."""
  scale = np.float32(np.float32(in_size) / np.float32(out_size))
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def _mask_dir(gt_dir: str, seq: str) -> str:
  """gt/Annotations/<seq>, or the SAM2-Plus layout's Points -> Annotations sibling."""
  inner = os.path.join(gt_dir, "Annotations", seq)
  if os.path.isdir(inner):
    return inner
  sibling = os.path.join(os.path.dirname(os.path.normpath(gt_dir)), "Annotations", seq)
  if os.path.isdir(sibling):
    return sibling
  raise MetricInputError(
    f"{inner}: PCK mask folder is missing; put the object masks of {seq} there as <frame:05d>.png"
  )


def mask_areas(gt_dir: str, seq: str, num_frames: int, size_wh) -> np.ndarray:
  """Object pixels per frame after the nearest resize to 320x512 (float32, as torch sums)."""
  folder = _mask_dir(gt_dir, seq)
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
  if len(names) != num_frames:
    raise MetricInputError(
      f"{folder}: {len(names)} mask PNGs for {num_frames} trajectory frames; "
      "PCK needs exactly one mask per frame"
    )
  w, h = (int(v) for v in np.asarray(size_wh).reshape(2))
  rows = nearest_source_index(PCK_SIZE_WH[1], h)
  cols = nearest_source_index(PCK_SIZE_WH[0], w)
  areas = np.zeros(num_frames, np.float32)
  for t, name in enumerate(names):
    path = os.path.join(folder, name)
    try:
      ids, _ = read_palette_png(path)
    except VideoError as e:
      raise MetricInputError(f"{path}: {e}") from None
    if ids.shape != (h, w):
      raise MetricInputError(
        f"{path}: mask is {ids.shape[1]}x{ids.shape[0]} but the GT size is "
        f"{w}x{h}; save masks at the video resolution"
      )
    areas[t] = np.count_nonzero(ids[rows][:, cols] > 0)
  return areas


def _to_pck_frame(xy: np.ndarray, size: np.ndarray) -> np.ndarray:
  """x * (512 / W), y * (320 / H) in float64, then float32 as the torch tensors are."""
  scale = np.asarray(PCK_SIZE_WH, np.float64) / size.reshape(2).astype(np.float64)
  return (np.asarray(xy, np.float64) * scale).astype(np.float32)


def pck_counts(gt_xy, gt_vis, pred_xy, areas):
  """(correct, scored) over GT-visible points of frames 1..T-1: float32 dist < 0.2*sqrt(area)."""
  diff = np.asarray(pred_xy, np.float32) - np.asarray(gt_xy, np.float32)
  dist = np.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])
  thr = PCK_FRACTION * np.sqrt(np.asarray(areas, np.float32))
  scored = np.asarray(gt_vis) > 0
  scored[0] = False
  correct = (dist < thr[:, None]) & scored
  return int(correct.sum()), int(scored.sum())


def pck_percent(correct: int, scored: int) -> float:
  """torch.mean of float32 0/1 values times 100.0, kept in float32 like the reference's .item()."""
  return float(np.float32(np.float32(correct) / np.float32(scored)) * np.float32(100.0))


def score_pck(gt_dir: str, pred_dir: str, *, sequences=None) -> dict:
  """SAM2-Plus PointTrackingScore_pck (BADJA protocol, percent)."""
  per_sequence = {}
  for seq in list_sequences(gt_dir, sequences):
    gt, pred, gt_path = _load_pair(gt_dir, pred_dir, seq, ("trajs_2d", "size"))
    areas = mask_areas(gt_dir, seq, gt["trajs_2d"].shape[0], gt["size"])
    correct, scored = pck_counts(
      _to_pck_frame(gt["trajs_2d"], gt["size"]),
      gt["visibs"],
      _to_pck_frame(pred["trajs_2d"], pred["size"]),
      areas,
    )
    if scored == 0:
      raise MetricInputError(
        f"{gt_path}: no point is GT-visible in frames 1..T-1, so PCK has "
        "nothing to average (the reference's torch.stack raises); drop the "
        "video"
      )
    per_sequence[seq] = {"pck": pck_percent(correct, scored)}
  overall = {"pck": float(np.mean([m["pck"] for m in per_sequence.values()]))}
  return make_report("point", "sam2plus_pck", overall, per_sequence, units="percent")
