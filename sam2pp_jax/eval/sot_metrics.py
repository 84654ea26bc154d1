"""SOT box scores exactly as SAM2-Plus `benchmarks/sot_benchmark` and the got10k toolkit compute
them.

Layout: gt/<seq>/groundtruth.txt ('x,y,w,h' floats, GOT-10k val style, with absence.label,
cover.label, cut_by_image.label, meta_info.ini), sequences from gt/list.txt (else the sorted
folders holding a groundtruth.txt); predictions pred/<seq>.txt, one box per line.

sam2plus_sot_benchmark (`score_ope`, percent): AUC, OP50, OP75, Precision, Norm Precision.
  Predictions are read as `np.loadtxt(dtype=int)` does: whitespace separated integers.
  Repaired, in this order: (1) a row i >= 1 with w == 0 or h == 0 takes row i-1 (itself maybe
  repaired); (2) a longer file is cut, a shorter one padded with 0 0 0 0 rows (IoU 0); (3) frame 0
  becomes the GT box truncated to int. GT frames with w <= 0 or h <= 0 (0,0,0,0 or -1,-1,-1,-1),
  or absent (visibility=True: visible = 1 - absence.label, or gt/Visibles/<seq>.txt), are
  invalid: IoU -1, centre error +inf, normalised error -1 (a normalised-precision success); the
  curves still divide by the number of GT frames.
  Refused: a missing prediction file; a comma, decimal point or other non-integer token in it;
  a file that is empty, has one row only (the reference cannot index a 1-D array) or has other
  than 4 columns; a negative predicted w or h; a zero-area predicted row beyond the GT length
  (the reference indexes past the GT there); NaN anywhere in the GT; an empty or non 'x,y,w,h'
  GT file; a visibility list whose length differs from the GT.

got10k_toolkit (`score_got10k`, fractions): AO, SR@0.50, SR@0.75 and the 101-point success curve.
  Frame 0 and frames with cover.label == 0 are dropped (absence.label is not used); both boxes
  are clipped to the image from meta_info.ini before IoU; overall numbers pool the frames of all
  sequences. Predictions are read as floats, comma separated as the toolkit writes them or
  whitespace separated as the seed writes them (same numbers). A NaN GT box on a kept frame
  gives NaN, as in the toolkit.
  Refused: a missing prediction file; one that is not 4 numbers per line or whose shape differs
  from the GT (a short, long or one-row file); a GT with a single row; a missing or unreadable
  cover.label / absence.label / cut_by_image.label / meta_info.ini 'resolution'; a cover.label
  whose length differs from the GT.
"""

from __future__ import annotations

import ast
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from sam2pp_jax.eval.common import MetricInputError, make_report


def _torch_arange_thresholds(step: float = 0.05, n: int = 21, lanes: int = 4) -> np.ndarray:
  """torch.arange(0, 1.05, 0.05) in float64: filled 4 lanes at a time as base + step*lane, so
  some values differ from i*step by one ulp (0.6500000000000001, 0.7500000000000001)."""
  i = np.arange(n)
  return step * (i - i % lanes) + step * (i % lanes)


OVERLAP_THRESHOLDS = _torch_arange_thresholds()
CENTER_THRESHOLDS = np.arange(51, dtype=np.float64)
NORM_THRESHOLDS = np.arange(51, dtype=np.float64) / 100.0
OP50_INDEX, OP75_INDEX, PRECISION_INDEX = 10, 15, 20
GOT10K_THRESHOLDS = np.linspace(0, 1, 101)
OPE_METRICS = ("AUC", "OP50", "OP75", "Precision", "Norm Precision")


# ----------------------------------------------------------------------------- reading
def list_sequences(gt_dir: str, sequences: Optional[Sequence[str]] = None) -> List[str]:
  """gt/list.txt, else the sorted folders holding a groundtruth.txt; an explicit list must exist."""
  if not os.path.isdir(gt_dir):
    raise MetricInputError(f"ground-truth folder {gt_dir!r} does not exist")
  if sequences is None:
    list_file = os.path.join(gt_dir, "list.txt")
    if os.path.isfile(list_file):
      with open(list_file) as f:
        sequences = [s.strip() for s in f.read().splitlines() if s.strip()]
    else:
      sequences = sorted(
        n for n in os.listdir(gt_dir) if os.path.isfile(os.path.join(gt_dir, n, "groundtruth.txt"))
      )
  if not sequences:
    raise MetricInputError(
      f"{gt_dir}: no sequences to score (empty list, or no list.txt and no <seq>/groundtruth.txt)"
    )
  missing = [s for s in sequences if not os.path.isfile(os.path.join(gt_dir, s, "groundtruth.txt"))]
  if missing:
    raise MetricInputError(
      f"{gt_dir}: no <seq>/groundtruth.txt for sequence(s) {missing}; "
      "fix gt/list.txt or the --sequences list"
    )
  return list(sequences)


def _loadtxt(path: str, what: str, **kw) -> np.ndarray:
  """np.loadtxt with its errors turned into a refusal naming the file (empty files load
  as size 0)."""
  if not os.path.isfile(path):
    raise MetricInputError(f"{path}: {what} file not found")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return np.loadtxt(path, **kw)
  except (ValueError, OverflowError) as e:
    raise MetricInputError(f"{path}: cannot read the {what} file ({e})") from None


def load_gt(path: str) -> np.ndarray:
  """'x,y,w,h' float64 rows, read with delimiter ',' as both loaders do; at least one row."""
  gt = _loadtxt(path, "ground-truth", delimiter=",", dtype=np.float64)
  if gt.size == 0:
    raise MetricInputError(
      f"{path}: the ground-truth file is empty; write one 'x,y,w,h' line per frame"
    )
  if gt.ndim == 1:
    gt = gt[None]
  if gt.ndim != 2 or gt.shape[1] != 4:
    raise MetricInputError(
      f"{path}: ground truth must have 4 comma-separated values per line "
      f"(x,y,w,h), found {gt.shape[-1]}"
    )
  return gt


def _pred_path(pred_dir: str, seq: str) -> str:
  path = os.path.join(pred_dir, seq + ".txt")
  if not os.path.isfile(path):
    raise MetricInputError(
      f"{path}: prediction file not found; every sequence of the list needs "
      "pred/<seq>.txt (both toolkits stop on a missing result)"
    )
  return path


def load_pred_ope(path: str) -> np.ndarray:
  """Integer rows as `np.loadtxt(dtype=int)` reads them; shapes the reference cannot index are
  refused."""
  if not os.path.isfile(path):
    raise MetricInputError(f"{path}: prediction file not found")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      pred = np.loadtxt(path, dtype=np.int64)
  except (ValueError, OverflowError) as e:
    raise MetricInputError(
      f"{path}: SAM2-Plus reads predictions with np.loadtxt(dtype=int), which fails here ({e}); "
      "write whitespace-separated integers 'x y w h' (no commas, no decimal points)"
    ) from None
  if pred.ndim != 2:
    raise MetricInputError(
      f"{path}: {'is empty' if pred.size == 0 else 'has a single row'}; the "
      "reference indexes predictions as a 2-D [frames, 4] array and fails"
    )
  if pred.shape[1] != 4:
    raise MetricInputError(f"{path}: {pred.shape[1]} values per line; write 'x y w h'")
  if (pred[:, 2:] < 0).any():
    row = int(np.nonzero((pred[:, 2:] < 0).any(1))[0][0])
    raise MetricInputError(
      f"{path}: negative width/height in data row {row + 1} (the reference raises "
      "'Invalid results'); write 0 0 0 0 for a lost target"
    )
  return pred


def load_visible(gt_dir: str, seq: str, n: int) -> np.ndarray:
  """Tracking-Any-Granularity visibility: gt/Visibles/<seq>.txt if present, else
  1 - absence.label."""
  tag = os.path.join(gt_dir, "Visibles", seq + ".txt")
  if os.path.isfile(tag):
    path, vis = tag, _loadtxt(tag, "visibility", delimiter=",", dtype=np.int32) != 0
  else:
    path = os.path.join(gt_dir, seq, "absence.label")
    vis = (1 - _loadtxt(path, "absence.label")) != 0
  if vis.ndim > 1 or vis.size not in (1, n):
    raise MetricInputError(
      f"{path}: {vis.size} visibility values for {n} GT frames; write one per frame"
    )
  return np.broadcast_to(vis.reshape(-1), (n,))


# ----------------------------------------------------------------------------- SAM2-Plus per frame
def repair_prediction(pred: np.ndarray, gt: np.ndarray, path: str = "prediction") -> np.ndarray:
  """The reference's repairs: zero-area rows i >= 1 copy row i-1, cut/zero-pad to the GT length,
  frame 0 := GT box truncated toward zero."""
  n_gt = gt.shape[0]
  idx = np.arange(len(pred))
  bad = (pred[:, 2:] == 0).any(1) & (idx >= 1)
  if bad[n_gt:].any():
    row = n_gt + int(np.nonzero(bad[n_gt:])[0][0])
    raise MetricInputError(
      f"{path}: zero-area box in data row {row + 1}, past the {n_gt} GT frames; the "
      "reference indexes the GT there and fails. Trim the file to the GT length"
    )
  src = np.maximum.accumulate(np.where(bad, 0, idx))  # last row at or before i that is kept
  pred = pred[src][:n_gt]
  if len(pred) < n_gt:
    pred = np.concatenate([pred, np.zeros((n_gt - len(pred), 4), np.int64)])
  pred = pred.copy()
  with np.errstate(invalid="ignore"):
    pred[0] = np.trunc(gt[0]).astype(np.int64)
  return pred


def _pred_center_f32(pred: np.ndarray) -> np.ndarray:
  """Prediction centres as torch gets them from an int64 tensor: xy + 0.5*(wh - 1.0) in float32."""
  p = pred.astype(np.float32)
  return p[:, :2] + np.float32(0.5) * (p[:, 2:] - np.float32(1.0))


def frame_errors(pred: np.ndarray, gt: np.ndarray, visible: Optional[np.ndarray] = None):
  """Per-frame IoU, centre error, normalised centre error and validity (reference dtypes/order)."""
  gxy, gwh = gt[:, :2], gt[:, 2:]
  valid = (gwh > 0).all(1)
  if visible is not None:
    valid = valid & visible
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    pc = _pred_center_f32(pred).astype(np.float64)
    gc = gxy + 0.5 * (gwh - 1.0)
    center = np.sqrt(((pc - gc) ** 2).sum(1))
    norm = np.sqrt(((pc / gwh - gc / gwh) ** 2).sum(1))
    # IoU with the inclusive-pixel (+1/-1) convention; the int64 br goes through float32 as in
    # torch.
    tl = np.maximum(pred[:, :2].astype(np.float64), gxy)
    br_pred = ((pred[:, :2] + pred[:, 2:]).astype(np.float32) - np.float32(1.0)).astype(np.float64)
    br = np.minimum(br_pred, gxy + gwh - 1.0)
    sz = np.maximum(br - tl + 1.0, 0.0)
    inter = sz[:, 0] * sz[:, 1]
    union = (pred[:, 2] * pred[:, 3]).astype(np.float64) + gwh[:, 0] * gwh[:, 1] - inter
    iou = inter / union
  iou[~valid], center[~valid], norm[~valid] = -1.0, np.inf, -1.0
  return iou, center, norm, valid


def sequence_curves(iou, center, norm) -> Dict[str, np.ndarray]:
  """Per-sequence float32 rates over all GT frames (the reference's float32 tensors)."""
  n = np.float32(len(iou))

  def rate(hits):
    return hits.sum(0).astype(np.float32) / n

  return {
    "success": rate(iou[:, None] > OVERLAP_THRESHOLDS[None]),
    "precision": rate(center[:, None] <= CENTER_THRESHOLDS[None]),
    "norm_precision": rate(norm[:, None] <= NORM_THRESHOLDS[None]),
  }


# torch's float32 sums (cascade_sum, 8-lane Vectorized<float>) accumulate in float32 in a fixed
# order; following it keeps AUC/OP/precision bit-identical to the reference, not just within 1 ulp.
_LANES, _ILP, _LEVELS = 8, 4, 4


def _cascade_rows(rows: np.ndarray) -> np.ndarray:
  """Float32 sum over axis 0 in the order of torch's multi_row_sum (sequential below 16 rows)."""
  n = len(rows)
  power = max(4, int(np.ceil(np.log2(n))) // _LEVELS if n > 1 else 0)
  step, mask = 1 << power, (1 << power) - 1
  acc = np.zeros((_LEVELS,) + rows.shape[1:], np.float32)
  i = 0
  while i + step <= n:
    for _ in range(step):
      acc[0] += rows[i]
      i += 1
    for j in range(1, _LEVELS):
      acc[j] += acc[j - 1]
      acc[j - 1] = 0
      if i & (mask << (j * power)):
        break
  for r in rows[i:]:
    acc[0] += r
  for j in range(1, _LEVELS):
    acc[0] += acc[j]
  return acc[0]


def _row_sum(rows: np.ndarray) -> np.ndarray:
  """torch's row_sum: 4 interleaved cascades, the leftover rows added to the first, then
  combined."""
  m = len(rows) // _ILP
  parts = [
    _cascade_rows(rows[k : _ILP * m : _ILP]) if m else np.zeros(rows.shape[1:], np.float32)
    for k in range(_ILP)
  ]
  for r in rows[_ILP * m :]:
    parts[0] = parts[0] + r
  for k in range(1, _ILP):
    parts[0] = parts[0] + parts[k]
  return parts[0]


def torch_mean_rows_f32(x: np.ndarray) -> np.ndarray:
  """`x.mean(0)` of a contiguous float32 [S, C] tensor: column blocks of 32 cascade over the rows,
  the other columns go through row_sum; then a float32 division by S."""
  x = np.asarray(x, np.float32)
  c32 = x.shape[1] // (_ILP * _LANES) * (_ILP * _LANES)
  total = np.concatenate([_cascade_rows(x[:, :c32]), _row_sum(x[:, c32:])])
  return total / np.float32(len(x))


def torch_mean_f32(x: np.ndarray) -> np.float32:
  """`x.mean()` of a short contiguous float32 vector: 8-lane vector partials, scalar tail first."""
  x = np.asarray(x, np.float32)
  nv = len(x) // _LANES
  lanes = _row_sum(x[: nv * _LANES].reshape(nv, _LANES)) if nv else np.zeros(_LANES, np.float32)
  acc = np.float32(0)
  for v in list(x[nv * _LANES :]) + list(lanes):
    acc = np.float32(acc + v)
  return np.float32(acc / np.float32(len(x)))


def _ope_summary(curves: Dict[str, np.ndarray]) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
  """Mean over sequences of the [S, K] float32 curves, x100, then AUC/OP/precision read-outs."""
  mean = {k: torch_mean_rows_f32(v) * np.float32(100.0) for k, v in curves.items()}
  succ = mean["success"]
  scores = {
    "AUC": float(torch_mean_f32(succ)),
    "OP50": float(succ[OP50_INDEX]),
    "OP75": float(succ[OP75_INDEX]),
    "Precision": float(mean["precision"][PRECISION_INDEX]),
    "Norm Precision": float(mean["norm_precision"][PRECISION_INDEX]),
  }
  return scores, mean


def score_ope(
  gt_dir: str, pred_dir: str, *, visibility: bool = False, sequences: Optional[Sequence[str]] = None
) -> dict:
  """SAM2-Plus sot_benchmark (percent); visibility=True is its Tracking-Any-Granularity loader
  run."""
  seqs = list_sequences(gt_dir, sequences)
  per_seq, per_frame, seq_curves = {}, {}, {}
  for seq in seqs:
    iou, center, norm, valid = _ope_sequence(gt_dir, pred_dir, seq, visibility)
    curves = sequence_curves(iou, center, norm)
    scores, _ = _ope_summary({k: v[None] for k, v in curves.items()})
    scores["avg_overlap"] = float(iou[valid].mean()) if valid.any() else float("nan")
    per_seq[seq], seq_curves[seq] = scores, curves
    per_frame[seq] = {
      "iou": iou.tolist(),
      "center_err": center.tolist(),
      "norm_center_err": norm.tolist(),
      "valid": valid.tolist(),
    }
  overall, mean = _ope_summary(
    {k: np.stack([seq_curves[s][k] for s in seqs]) for k in seq_curves[seqs[0]]}
  )
  protocol = "sam2plus_sot_benchmark_visibility" if visibility else "sam2plus_sot_benchmark"
  return make_report(
    "box",
    protocol,
    overall,
    per_seq,
    units="percent (avg_overlap as fraction)",
    curves_overall={k: v.tolist() for k, v in mean.items()},
    curves_per_sequence={s: {k: v.tolist() for k, v in c.items()} for s, c in seq_curves.items()},
    per_frame=per_frame,
    thresholds={
      "overlap": OVERLAP_THRESHOLDS.tolist(),
      "center_px": CENTER_THRESHOLDS.tolist(),
      "center_norm": NORM_THRESHOLDS.tolist(),
    },
  )


def _ope_sequence(gt_dir: str, pred_dir: str, seq: str, visibility: bool):
  """Load, check and repair one sequence, then its per-frame errors."""
  gt_path = os.path.join(gt_dir, seq, "groundtruth.txt")
  gt = load_gt(gt_path)
  if np.isnan(gt).any():
    row = int(np.nonzero(np.isnan(gt).any(1))[0][0])
    raise MetricInputError(
      f"{gt_path}: NaN in data row {row + 1}; SAM2-Plus raises 'NaNs in annotation'. "
      "Write absent frames as 0,0,0,0"
    )
  path = _pred_path(pred_dir, seq)
  pred = repair_prediction(load_pred_ope(path), gt, path)
  visible = load_visible(gt_dir, seq, len(gt)) if visibility else None
  return frame_errors(pred, gt, visible)


# ----------------------------------------------------------------------------- got10k toolkit
def _load_pred_got10k(path: str) -> np.ndarray:
  """Floats, comma separated (toolkit records) or whitespace separated (the seed's files)."""
  try:
    return _loadtxt(path, "prediction", delimiter=",", dtype=np.float64)
  except MetricInputError:
    pass
  try:
    return _loadtxt(path, "prediction", dtype=np.float64)
  except MetricInputError:
    raise MetricInputError(
      f"{path}: not 4 numbers per line separated by commas (or whitespace); "
      "the got10k toolkit cannot read it"
    ) from None


def _resolution(seq_dir: str) -> Tuple[float, float]:
  """(W, H) from meta_info.ini's 'resolution: (W, H)' line, as the toolkit parses it."""
  path = os.path.join(seq_dir, "meta_info.ini")
  if not os.path.isfile(path):
    raise MetricInputError(
      f"{path}: not found; the got10k toolkit needs 'resolution: (W, H)' from it"
    )
  with open(path) as f:
    lines = f.read().strip().split("\n")[1:]
  meta = dict(line.split(": ", 1) for line in lines if ": " in line)
  try:
    w, h = ast.literal_eval(meta["resolution"].strip())
    return float(w), float(h)
  except (KeyError, ValueError, SyntaxError, TypeError):
    raise MetricInputError(f"{path}: no readable 'resolution: (W, H)' line") from None


def clip_to_image(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
  """The toolkit's bound: x in [0, W], y in [0, H], then w in [0, W - x], h in [0, H - y]."""
  b = boxes.astype(np.float64).copy()
  b[:, 0] = np.clip(b[:, 0], 0, width)
  b[:, 1] = np.clip(b[:, 1], 0, height)
  b[:, 2] = np.clip(b[:, 2], 0, width - b[:, 0])
  b[:, 3] = np.clip(b[:, 3], 0, height - b[:, 1])
  return b


def got10k_iou(pred: np.ndarray, gt: np.ndarray, width: float, height: float) -> np.ndarray:
  """rect_iou with the image bound: inter / (union + eps), clipped to [0, 1]."""
  a, b = clip_to_image(pred, width, height), clip_to_image(gt, width, height)
  with np.errstate(invalid="ignore"):
    w = np.maximum(
      np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0
    )
    h = np.maximum(
      np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0
    )
    inter = w * h
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)


def _got10k_summary(ious: np.ndarray) -> Dict[str, object]:
  """AO, SR@0.50 and the 101-point success curve (IoU strictly above each threshold)."""
  with warnings.catch_warnings(), np.errstate(invalid="ignore"):
    warnings.simplefilter("ignore")
    curve = np.mean(ious[:, None] > GOT10K_THRESHOLDS[None], axis=0)
    return {
      "AO": float(np.mean(ious)),
      "SR@0.50": float(np.mean(ious > 0.5)),
      "SR@0.75": float(curve[75]),
      "succ_curve_101": curve.tolist(),
    }


def score_got10k(gt_dir: str, pred_dir: str, *, sequences: Optional[Sequence[str]] = None) -> dict:
  """got10k ExperimentGOT10k(subset='val').report (fractions); overall pools all kept frames."""
  seqs = list_sequences(gt_dir, sequences)
  per_seq, per_frame, pooled = {}, {}, []
  for seq in seqs:
    seq_dir = os.path.join(gt_dir, seq)
    gt = _loadtxt(
      os.path.join(seq_dir, "groundtruth.txt"), "ground-truth", delimiter=",", dtype=np.float64
    )
    if gt.ndim != 2 or gt.shape[1] != 4:
      raise MetricInputError(
        f"{seq_dir}/groundtruth.txt: need at least 2 lines of 'x,y,w,h' (got shape "
        f"{gt.shape}); the toolkit cannot score it"
      )
    path = _pred_path(pred_dir, seq)
    pred = _load_pred_got10k(path)
    if pred.shape != gt.shape:
      raise MetricInputError(
        f"{path}: shape {pred.shape} differs from the GT {gt.shape}; the got10k "
        "toolkit asserts equal shapes. Write exactly one box per GT frame"
      )
    cover = _loadtxt(os.path.join(seq_dir, "cover.label"), "cover.label")
    for name in (
      "absence.label",
      "cut_by_image.label",
    ):  # read (and required) by the toolkit's meta
      _loadtxt(os.path.join(seq_dir, name), name)
    if cover.ndim != 1 or len(cover) != len(gt):
      raise MetricInputError(
        f"{seq_dir}/cover.label: {cover.size} values for {len(gt)} GT frames; write one per frame"
      )
    width, height = _resolution(seq_dir)
    iou = got10k_iou(pred[1:], gt[1:], width, height)
    kept = cover[1:] > 0
    pooled.append(iou[kept])
    scores = _got10k_summary(iou[kept])
    del scores["succ_curve_101"]
    scores["evaluated_frames"] = int(kept.sum())
    per_seq[seq] = scores
    per_frame[seq] = {"iou": [float("nan")] + iou.tolist(), "kept": [False] + kept.tolist()}
  overall = _got10k_summary(np.concatenate(pooled))
  return make_report(
    "box",
    "got10k_toolkit",
    overall,
    per_seq,
    units="fraction",
    per_frame=per_frame,
    thresholds={"iou": GOT10K_THRESHOLDS.tolist()},
  )
