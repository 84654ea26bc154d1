"""VOS scores (J, F, J&F) exactly as davis2017-evaluation and SAM 2's sav_benchmark compute them.

Both protocols score frames `names[1:-1]` of each sequence's sorted ground-truth PNGs. J is the
region IoU (1 when both masks are empty); F is the boundary F-measure with a disk tolerance of
ceil(0.008 * image diagonal) pixels, dilation by OpenCV as the toolkits do. Boundaries and
dilations are computed on a crop around the two masks, which gives the same numbers as the
full frame (see `_boundary_f`) and keeps 480p scoring fast.

davis2017 (fractions): objects 1..K with K the largest id of the first GT frame (255 = void,
read as background); per object Mean (nanmean), Recall (share > 0.5) and Decay (first minus last
quarter); global = means over all objects of all sequences, J&F-Mean = (J-Mean + F-Mean) / 2.
Refused, as the toolkit refuses them: a missing prediction PNG for a scored frame, a prediction
id above K, a prediction whose size differs from the GT, a sequence with fewer than 3 GT frames.

sav (percent): objects are the ids seen so far (GT or prediction) and are scored from the first
frame they are seen; only ids seen in the GT are reported; global = mean over (video, object).
Also reads the SA-V layout (one sub-folder per object). Refused: a missing prediction PNG, a size
mismatch, video folders that differ between GT and prediction (the --strict check), an SA-V
object PNG holding more than one id, an SA-V object never present in the scored GT frames.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from sam2pp_jax.eval.common import MetricInputError, make_report
from sam2pp_jax.io.png import read_palette_png
from sam2pp_jax.io.video import VideoError

BOUNDARY_FRACTION = 0.008


# ----------------------------------------------------------------------------- reading
def _read_ids(path: str) -> np.ndarray:
  try:
    ids, _ = read_palette_png(path)
  except VideoError as e:
    raise MetricInputError(str(e)) from None
  if ids.ndim != 2:
    raise MetricInputError(f"{path}: a mask PNG must have one channel (palette or grayscale)")
  return ids


def _png_names(folder: str) -> List[str]:
  return sorted(n for n in os.listdir(folder) if n.endswith(".png"))


def resolve_gt_root(gt_dir: str) -> str:
  """Accept either the Annotations folder or its parent (the layout of ../shared/metrics)."""
  if not os.path.isdir(gt_dir):
    raise MetricInputError(f"ground-truth folder {gt_dir!r} does not exist")
  ann = os.path.join(gt_dir, "Annotations")
  if os.path.isdir(ann):
    inner = os.path.join(ann, "480p")
    return inner if os.path.isdir(inner) and not _png_names(ann) else ann
  return gt_dir


def _sequences(gt_root: str, sequences: Optional[Sequence[str]]) -> List[str]:
  found = sorted(n for n in os.listdir(gt_root) if os.path.isdir(os.path.join(gt_root, n)))
  if sequences is None:
    if not found:
      raise MetricInputError(f"{gt_root}: no sequence folders with ground-truth PNGs")
    return found
  missing = [s for s in sequences if s not in found]
  if missing:
    raise MetricInputError(f"{gt_root}: no ground truth for sequence(s) {missing}")
  return list(sequences)


# ----------------------------------------------------------------------------- per-frame measures
def boundary_radius(shape) -> float:
  """The toolkits' tolerance: ceil(0.008 * ||(H, W)||), e.g. 4 at 240x320, 8 at 480x854."""
  return float(np.ceil(BOUNDARY_FRACTION * np.linalg.norm(shape)))


def disk(radius: float) -> np.ndarray:
  """skimage.morphology.disk(radius) (strict radius) as a uint8 kernel."""
  grid = np.arange(-radius, radius + 1)
  x, y = np.meshgrid(grid, grid)
  return (x**2 + y**2 <= radius**2).astype(np.uint8)


def boundary_map(seg: np.ndarray) -> np.ndarray:
  """1-px boundary: a pixel differs from its right, lower or lower-right neighbour (last row and
  column compare only along the image edge; the corner pixel is never a boundary)."""
  seg = seg.astype(bool)
  e = np.zeros_like(seg)
  s = np.zeros_like(seg)
  se = np.zeros_like(seg)
  e[:, :-1] = seg[:, 1:]
  s[:-1, :] = seg[1:, :]
  se[:-1, :-1] = seg[1:, 1:]
  b = (seg ^ e) | (seg ^ s) | (seg ^ se)
  b[-1, :] = seg[-1, :] ^ e[-1, :]
  b[:, -1] = seg[:, -1] ^ s[:, -1]
  b[-1, -1] = False
  return b


def _bbox(m: np.ndarray):
  rows = np.flatnonzero(m.any(1))
  if rows.size == 0:
    return None
  cols = np.flatnonzero(m.any(0))
  return rows[0], rows[-1], cols[0], cols[-1]


def _boundary_f(pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> float:
  """Boundary F of two boolean masks, computed on a crop that holds both masks plus a margin
  of (radius + 1): boundaries in the crop equal those of the full frame (every pixel next to a
  mask is inside, and crop edges that are not image edges only see background), and dilation
  of boundary pixels that all lie in the crop never needs pixels outside it."""
  import cv2

  boxes = [b for b in (_bbox(pred), _bbox(gt)) if b is not None]
  if not boxes:
    return 1.0  # both boundaries empty
  r = kernel.shape[0] // 2 + 1
  h, w = gt.shape
  y0 = max(min(b[0] for b in boxes) - r, 0)
  y1 = min(max(b[1] for b in boxes) + r + 1, h)
  x0 = max(min(b[2] for b in boxes) - r, 0)
  x1 = min(max(b[3] for b in boxes) + r + 1, w)
  # A crop edge must be a true image edge or lie beyond the masks by >= 1 px (it does: r >= 1).
  bp = boundary_map(pred[y0:y1, x0:x1])
  bg = boundary_map(gt[y0:y1, x0:x1])
  n_p, n_g = int(bp.sum()), int(bg.sum())
  if n_p == 0 and n_g == 0:
    return 1.0
  if n_p == 0 or n_g == 0:
    return 0.0  # (P, R) = (1, 0) or (0, 1)
  dil_p = cv2.dilate(bp.astype(np.uint8), kernel)
  dil_g = cv2.dilate(bg.astype(np.uint8), kernel)
  precision = np.sum(bp & (dil_g > 0)) / float(n_p)
  recall = np.sum(bg & (dil_p > 0)) / float(n_g)
  if precision + recall == 0:
    return 0.0
  return float(2 * precision * recall / (precision + recall))


def _counts(gt: np.ndarray, pred: np.ndarray, ids: Sequence[int]):
  """Per id: |G ∩ P|, |G|, |P|, plus the boolean masks (reused for the boundary measure)."""
  inter, ng, np_, masks = [], [], [], []
  for obj in ids:
    gm, pm = gt == obj, pred == obj
    inter.append(np.count_nonzero(gm & pm))
    ng.append(np.count_nonzero(gm))
    np_.append(np.count_nonzero(pm))
    masks.append((gm, pm))
  return np.array(inter), np.array(ng), np.array(np_), masks


def _jaccard(inter, g, p) -> np.ndarray:
  union = g + p - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    j = inter / union
  return np.where(union == 0, 1.0, j)


# ----------------------------------------------------------------------------- davis2017
def db_statistics(values: np.ndarray):
  """(Mean, Recall, Decay) of per-frame values as davis2017's db_statistics, including its
  uint8 cast of the quarter boundaries."""
  values = np.asarray(values, np.float64)
  with np.errstate(invalid="ignore"), _quiet():
    mean = np.nanmean(values)
    recall = np.nanmean(values > 0.5)
  ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
  bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
  with np.errstate(invalid="ignore"), _quiet():
    decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
  return float(mean), float(recall), float(decay)


class _quiet:
  def __enter__(self):
    import warnings

    self._w = warnings.catch_warnings()
    self._w.__enter__()
    warnings.simplefilter("ignore", RuntimeWarning)

  def __exit__(self, *a):
    self._w.__exit__(*a)


def _davis_sequence(gt_root: str, pred_root: str, seq: str):
  gt_dir, pred_dir = os.path.join(gt_root, seq), os.path.join(pred_root, seq)
  names = _png_names(gt_dir)
  if len(names) < 3:
    raise MetricInputError(
      f"{gt_dir}: {len(names)} ground-truth PNG(s); davis2017 scores frames 1..N-2 and needs "
      "at least 3 annotated frames"
    )
  first = _read_ids(os.path.join(gt_dir, names[0]))
  first = np.where(first == 255, 0, first)
  k = int(first.max())
  scored = names[1:-1]
  gts, preds = [], []
  for n in scored:
    pp = os.path.join(pred_dir, n)
    if not os.path.isfile(pp):
      raise MetricInputError(
        f"{pp}: prediction missing for scored frame {n} of {seq}; "
        "davis2017 needs a PNG for every frame except the first and last"
      )
    g = _read_ids(os.path.join(gt_dir, n))
    p = _read_ids(pp)
    if g.shape != p.shape:
      raise MetricInputError(
        f"{pp}: size {p.shape[::-1]} differs from the ground truth {g.shape[::-1]} (W, H)"
      )
    gts.append(np.where(g == 255, 0, g))
    preds.append(p)
  max_pred = max(int(p.max()) for p in preds)
  if max_pred > k:
    raise MetricInputError(
      f"{pred_dir}: prediction holds object id {max_pred} but the first ground-truth frame "
      f"{names[0]} has objects 1..{k}; davis2017 refuses ids above that"
    )
  ids = list(range(1, k + 1))
  j = np.zeros((k, len(scored)))
  f = np.zeros((k, len(scored)))
  if k:
    kernel = disk(boundary_radius(gts[0].shape))
    for t, (g, p) in enumerate(zip(gts, preds)):
      inter, ng, np_, masks = _counts(g, p, ids)
      j[:, t] = _jaccard(inter, ng, np_)
      for i, (gm, pm) in enumerate(masks):
        f[i, t] = _boundary_f(pm, gm, kernel)
  return [n[:-4] for n in scored], j, f


def score_davis2017(
  gt_dir: str,
  pred_dir: str,
  *,
  sequences: Optional[Sequence[str]] = None,
  with_per_frame: bool = False,
) -> dict:
  """davis2017-evaluation semi-supervised: global, per object `<seq>_<id>`, per sequence (mean
  of its objects, derived), fractions."""
  gt_root = resolve_gt_root(gt_dir)
  if not os.path.isdir(pred_dir):
    raise MetricInputError(f"prediction folder {pred_dir!r} does not exist")
  stats = {"J": {"M": [], "R": [], "D": []}, "F": {"M": [], "R": [], "D": []}}
  per_object, per_sequence, per_frame = {}, {}, {}
  for seq in _sequences(gt_root, sequences):
    frames, j, f = _davis_sequence(gt_root, pred_dir, seq)
    keys = []
    for i in range(j.shape[0]):
      key = f"{seq}_{i + 1}"
      keys.append(key)
      jm, jr, jd = db_statistics(j[i])
      fm, fr, fd = db_statistics(f[i])
      for name, (m, r, d) in (("J", (jm, jr, jd)), ("F", (fm, fr, fd))):
        stats[name]["M"].append(m)
        stats[name]["R"].append(r)
        stats[name]["D"].append(d)
      per_object[key] = {
        "J-Mean": jm,
        "J-Recall": jr,
        "J-Decay": jd,
        "F-Mean": fm,
        "F-Recall": fr,
        "F-Decay": fd,
      }
      per_frame[key] = {"frames": frames, "J": j[i].tolist(), "F": f[i].tolist()}
    with _quiet():
      jm_seq = float(np.mean([per_object[k]["J-Mean"] for k in keys])) if keys else math.nan
      fm_seq = float(np.mean([per_object[k]["F-Mean"] for k in keys])) if keys else math.nan
    per_sequence[seq] = {
      "J-Mean": jm_seq,
      "F-Mean": fm_seq,
      "J&F-Mean": (jm_seq + fm_seq) / 2,
      "objects": keys,
    }
  with _quiet():
    g = {
      f"{n}-{s}": float(np.mean(stats[n][c]))
      for n in ("J", "F")
      for s, c in (("Mean", "M"), ("Recall", "R"), ("Decay", "D"))
    }
  overall = {"J&F-Mean": (g["J-Mean"] + g["F-Mean"]) / 2.0}
  overall.update(
    {k: g[k] for k in ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")}
  )
  extra = {"units": "fraction", "per_frame": per_frame} if with_per_frame else {"units": "fraction"}
  return make_report("mask", "davis2017", overall, per_sequence, per_object, **extra)


# ----------------------------------------------------------------------------- sav_benchmark
def _present_ids(a: np.ndarray):
  """Sorted distinct values (np.unique without the sort for small unsigned ids)."""
  top = int(a.max(initial=0))
  if top <= 16:  # few ids (the usual case): one comparison per candidate beats a histogram
    return [k for k in range(top + 1) if k == top or (a == k).any()]
  if a.dtype == np.uint8:
    import cv2

    hist = cv2.calcHist([np.ascontiguousarray(a)], [0], None, [256], [0, 256])
    return np.flatnonzero(np.ravel(hist)).tolist()
  return [int(v) for v in np.unique(a)]


class _GrowingObjects:
  """sav_benchmark's per-video accumulator: ids join when first seen in GT or prediction."""

  def __init__(self):
    self.in_gt, self.in_pred = set(), set()
    self.j: Dict[int, list] = {}
    self.f: Dict[int, list] = {}

  def feed(self, pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> None:
    g_ids = [v for v in _present_ids(gt) if v != 0]
    p_ids = [v for v in _present_ids(pred) if v != 0]
    self.in_gt.update(g_ids)
    self.in_pred.update(p_ids)
    objs = sorted(self.in_gt | self.in_pred)
    if not objs:
      return
    inter, ng, np_, masks = _counts(gt, pred, objs)
    jv = _jaccard(inter, ng, np_)
    for i, obj in enumerate(objs):
      self.j.setdefault(obj, []).append(float(jv[i]))
      self.f.setdefault(obj, []).append(_boundary_f(masks[i][1], masks[i][0], kernel))

  def conclude(self):
    return {
      o: (float(np.mean(self.j[o])) * 100, float(np.mean(self.f[o])) * 100)
      for o in sorted(self.in_gt)
    }


def _sav_pair(gt_path: str, pred_path: str, sav_format: bool):
  if not os.path.isfile(pred_path):
    raise MetricInputError(
      f"{pred_path}: prediction missing (sav_benchmark needs every scored ground-truth frame)"
    )
  g = _read_ids(gt_path)
  p = _read_ids(pred_path)
  if g.shape != p.shape:
    raise MetricInputError(f"shape mismatch: {gt_path} {g.shape} vs {pred_path} {p.shape}")
  if sav_format:
    for arr, path in ((g, gt_path), (p, pred_path)):
      if len(_present_ids(arr)) > 2:
        raise MetricInputError(
          f"{path}: more than one object id; the SA-V layout holds one object per PNG"
        )
    g, p = (g > 0).astype(np.uint8), (p > 0).astype(np.uint8)
  return g, p


def _sav_video(gt_root: str, pred_root: str, vid: str):
  vg, vp = os.path.join(gt_root, vid), os.path.join(pred_root, vid)
  entries = sorted(os.listdir(vg))
  if all(n.endswith(".png") for n in entries):
    acc = _GrowingObjects()
    kernel = None
    for n in entries[1:-1]:
      g, p = _sav_pair(os.path.join(vg, n), os.path.join(vp, n), False)
      kernel = disk(boundary_radius(p.shape)) if kernel is None else kernel
      acc.feed(p, g, kernel)
    return {str(o): v for o, v in acc.conclude().items()}
  out = {}
  for obj in entries:  # SA-V: one folder per object
    og, op = os.path.join(vg, obj), os.path.join(vp, obj)
    acc = _GrowingObjects()
    kernel = None
    for n in sorted(os.listdir(og))[1:-1]:
      g, p = _sav_pair(os.path.join(og, n), os.path.join(op, n), True)
      kernel = disk(boundary_radius(p.shape)) if kernel is None else kernel
      acc.feed(p, g, kernel)
    res = acc.conclude()
    if len(res) != 1:
      raise MetricInputError(
        f"{og}: object never present in the scored ground-truth frames; "
        "sav_benchmark cannot score it"
      )
    out[obj] = next(iter(res.values()))
  return out


def score_sav(gt_dir: str, pred_dir: str, *, sequences: Optional[Sequence[str]] = None) -> dict:
  """sav_benchmark(strict=True, skip_first_and_last=True): global J, F, J&F over (video, object)
  pairs, per object {J, F, J&F}, per sequence (mean of its objects, derived); percent."""
  gt_root = resolve_gt_root(gt_dir)
  if not os.path.isdir(pred_dir):
    raise MetricInputError(f"prediction folder {pred_dir!r} does not exist")
  vids = _sequences(gt_root, sequences)
  pred_vids = sorted(n for n in os.listdir(pred_dir) if os.path.isdir(os.path.join(pred_dir, n)))
  if sequences is None:
    extra_gt = sorted(set(vids) - set(pred_vids))
    extra_pred = sorted(set(pred_vids) - set(vids))
    if extra_gt or extra_pred:
      raise MetricInputError(
        f"video folders differ (sav_benchmark --strict): without predictions {extra_gt}, "
        f"without ground truth {extra_pred}; pass --sequences to score a subset"
      )
  else:
    missing = [v for v in vids if v not in pred_vids]
    if missing:
      raise MetricInputError(f"{pred_dir}: no prediction folder for {missing}")
  per_object, per_sequence, all_j, all_f = {}, {}, [], []
  for vid in vids:
    res = _sav_video(gt_root, pred_dir, vid)
    per_object[vid] = {o: {"J": jv, "F": fv, "J&F": (jv + fv) / 2} for o, (jv, fv) in res.items()}
    all_j += [v[0] for v in res.values()]
    all_f += [v[1] for v in res.values()]
    with _quiet():
      sj = float(np.mean([v[0] for v in res.values()])) if res else math.nan
      sf = float(np.mean([v[1] for v in res.values()])) if res else math.nan
    per_sequence[vid] = {"J": sj, "F": sf, "J&F": (sj + sf) / 2}
  with _quiet():
    gj, gf = float(np.array(all_j).mean()), float(np.array(all_f).mean())
  overall = {"J&F": (gj + gf) / 2, "J": gj, "F": gf}
  return make_report("mask", "sav", overall, per_sequence, per_object, units="percent")
