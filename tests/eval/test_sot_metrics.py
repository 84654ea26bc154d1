"""SOT box metrics: the sot_dev reference numbers (three blocks) and hand-computed edge cases."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from sam2pp_jax.eval.common import MetricInputError
from sam2pp_jax.eval.sot_metrics import OPE_METRICS, score_got10k, score_ope


def _metrics_dir() -> Path:
  return Path(os.environ.get("SAM2PP_METRICS_DIR") or REPO.parent / "shared" / "metrics")


@pytest.fixture(scope="module")
def sot_dev():
  case = _metrics_dir() / "sot_dev"
  if not (case / "expected.json").is_file():
    pytest.skip(
      f"metric reference case not found at {case}: "
      "set $SAM2PP_METRICS_DIR or place ../shared/metrics"
    )
  with open(case / "expected.json") as f:
    return case, json.load(f)["references"]


def _as_float(v):
  return float(v)  # also turns the "nan"/"inf" strings of expected.json into floats


def _assert_matches(got, ref, tol, where):
  """Every number of `ref` (nested dicts/lists, "nan"/"inf" strings, bools) is in `got` within
  tol."""
  if isinstance(ref, dict):
    for k, v in ref.items():
      assert k in got, f"{where}: key {k!r} missing"
      _assert_matches(got[k], v, tol, f"{where}/{k}")
  elif isinstance(ref, list):
    assert len(got) == len(ref), f"{where}: length {len(got)} != {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
      _assert_matches(g, r, tol, f"{where}[{i}]")
  elif isinstance(ref, bool):
    assert bool(got) is ref, f"{where}: {got} != {ref}"
  else:
    g, r = _as_float(got), _as_float(ref)
    if math.isnan(r) or math.isinf(r):
      assert g == r or (math.isnan(g) and math.isnan(r)), f"{where}: {g} != {r}"
    else:
      assert abs(g - r) <= tol, f"{where}: {g} vs reference {r} (tol {tol})"


BLOCKS = {
  "sam2plus_sot_benchmark": lambda c: score_ope(c / "gt", c / "pred"),
  "sam2plus_sot_benchmark_visibility": lambda c: score_ope(c / "gt", c / "pred", visibility=True),
  "got10k_toolkit": lambda c: score_got10k(c / "gt", c / "pred"),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_dev_case_matches_reference_block(sot_dev, block):
  case, refs = sot_dev
  ref = refs[block]
  assert ref["status"] == "ok"
  report = BLOCKS[block](case)
  tol = ref["comparison"]["abs_tol"]
  assert set(report["overall"]) == set(ref["overall"])
  assert list(report["per_sequence"]) == list(ref["per_sequence"])
  checked = 0
  for key in ("overall", "per_sequence", "per_frame", "curves_overall", "thresholds"):
    if key in ref:
      _assert_matches(report[key], ref[key], tol, f"{block}/{key}")
      checked += 1
  assert checked >= 2


def test_dev_ope_overall_names(sot_dev):
  case, _ = sot_dev
  assert tuple(score_ope(case / "gt", case / "pred")["overall"]) == OPE_METRICS


# ----------------------------------------------------------------------------- synthetic cases
def _write_seq(
  root: Path,
  name: str,
  gt_rows,
  pred_rows=None,
  *,
  absence=None,
  cover=None,
  size=(640, 480),
  pred_text=None,
):
  """A GOT-10k-layout sequence (gt/<name>/...) and its prediction pred/<name>.txt."""
  d = root / "gt" / name
  d.mkdir(parents=True, exist_ok=True)
  (d / "groundtruth.txt").write_text("".join(",".join(str(v) for v in r) + "\n" for r in gt_rows))
  n = len(gt_rows)
  absence = [0] * n if absence is None else absence
  cover = [1 if a == 0 else 0 for a in absence] if cover is None else cover
  (d / "absence.label").write_text("".join(f"{a}\n" for a in absence))
  (d / "cover.label").write_text("".join(f"{c}\n" for c in cover))
  (d / "cut_by_image.label").write_text("0\n" * n)
  (d / "meta_info.ini").write_text(
    f"[METAINFO]\nobject_class: test\nresolution: ({size[0]}, {size[1]})\n"
  )
  (root / "pred").mkdir(exist_ok=True)
  if pred_text is None:
    pred_text = "".join(" ".join(str(int(v)) for v in r) + "\n" for r in pred_rows)
  (root / "pred" / f"{name}.txt").write_text(pred_text)
  return root / "gt", root / "pred"


BOX = (10, 10, 20, 20)


def test_zero_area_prediction_takes_previous_row(tmp_path):
  gt, pred = _write_seq(
    tmp_path, "s", [BOX] * 4, [BOX, (12, 10, 20, 20), (0, 0, 0, 0), (5, 5, 20, 0)]
  )
  frames = score_ope(gt, pred)["per_frame"]["s"]
  # (12,10,20,20) vs (10,10,20,20): intersection 18*20 = 360, union 800 - 360 = 440
  assert frames["iou"] == pytest.approx([1.0, 9 / 11, 9 / 11, 9 / 11], abs=1e-12)
  assert frames["center_err"] == pytest.approx([0.0, 2.0, 2.0, 2.0], abs=1e-12)


def test_zero_area_first_row_is_copied_before_frame0_overwrite(tmp_path):
  # Row 1 copies the original (zero) row 0, which the frame-0 overwrite does not reach: IoU 0 there.
  gt, pred = _write_seq(tmp_path, "s", [BOX] * 3, [(0, 0, 0, 0), (0, 0, 5, 0), BOX])
  assert score_ope(gt, pred)["per_frame"]["s"]["iou"] == pytest.approx([1.0, 0.0, 1.0], abs=1e-12)


def test_short_prediction_is_padded_with_zero_boxes(tmp_path):
  gt, pred = _write_seq(tmp_path, "s", [BOX] * 4, [BOX, BOX])
  report = score_ope(gt, pred)
  frames = report["per_frame"]["s"]
  assert frames["iou"] == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-12)
  # padded box (0,0,0,0) has centre (-0.5, -0.5); the GT centre is (19.5, 19.5)
  assert frames["center_err"][2] == pytest.approx(20 * math.sqrt(2), abs=1e-12)
  seq = report["per_sequence"]["s"]
  assert seq["OP50"] == pytest.approx(50.0, abs=1e-4)
  assert seq["Precision"] == pytest.approx(50.0, abs=1e-4)
  assert seq["avg_overlap"] == pytest.approx(0.5, abs=1e-12)


def test_long_prediction_is_cut(tmp_path):
  gt, pred = _write_seq(tmp_path, "s", [BOX] * 2, [BOX, BOX, (900, 900, 5, 5)])
  assert score_ope(gt, pred)["per_frame"]["s"]["iou"] == pytest.approx([1.0, 1.0], abs=1e-12)


def test_frame0_is_overwritten_with_truncated_gt(tmp_path):
  gt0 = (10.7, 20.9, 30.5, 40.99)
  gt, pred = _write_seq(tmp_path, "s", [gt0, BOX], [(300, 300, 5, 5), BOX])
  iou0 = score_ope(gt, pred)["per_frame"]["s"]["iou"][0]
  # pred (10,20,30,40), inclusive pixels: x overlap 39-10.7+1 = 29.3, y overlap 59-20.9+1 = 39.1
  inter = 29.3 * 39.1
  assert iou0 == pytest.approx(inter / (30 * 40 + 30.5 * 40.99 - inter), rel=1e-12)


def test_frame0_truncates_toward_zero(tmp_path):
  gt, pred = _write_seq(tmp_path, "s", [(-3.7, 5.5, 20.2, 10.9), BOX], [(0, 0, 1, 1), BOX])
  iou0 = score_ope(gt, pred)["per_frame"]["s"]["iou"][0]
  # pred (-3,5,20,10): x overlap min(16, 15.5) - (-3) + 1 = 19.5,
  #                    y overlap min(14, 15.4) - 5.5 + 1 = 9.5
  inter = 19.5 * 9.5
  assert iou0 == pytest.approx(inter / (200 + 20.2 * 10.9 - inter), rel=1e-12)


def test_invalid_gt_frames_count_as_norm_precision_successes(tmp_path):
  far = (500, 400, 10, 10)
  gt, pred = _write_seq(
    tmp_path, "s", [BOX, BOX, (0, 0, 0, 0), (-1, -1, -1, -1)], [BOX, far, far, far]
  )
  report = score_ope(gt, pred)
  frames = report["per_frame"]["s"]
  assert frames["valid"] == [True, True, False, False]
  assert frames["iou"][2:] == [-1.0, -1.0]
  assert frames["center_err"][2:] == [math.inf, math.inf]
  assert frames["norm_center_err"][2:] == [-1.0, -1.0]
  seq = report["per_sequence"]["s"]
  assert seq["Norm Precision"] == pytest.approx(75.0, abs=1e-4)  # frame 0 and both invalid frames
  assert seq["Precision"] == pytest.approx(25.0, abs=1e-4)
  assert seq["OP50"] == pytest.approx(25.0, abs=1e-4)
  assert seq["avg_overlap"] == pytest.approx(0.5, abs=1e-12)  # valid frames only: (1 + 0) / 2
  # AUC: frame 0 (IoU 1) passes 20 of the 21 thresholds (not t = 1.0), over 4 frames
  assert seq["AUC"] == pytest.approx(100 * 20 / 21 / 4, abs=1e-4)


def test_visibility_marks_absent_frames_invalid(tmp_path):
  gt, pred = _write_seq(tmp_path, "s", [BOX] * 4, [BOX, BOX, BOX, BOX], absence=[0, 0, 1, 0])
  plain = score_ope(gt, pred)["per_frame"]["s"]
  vis = score_ope(gt, pred, visibility=True)
  assert plain["valid"] == [True] * 4
  assert vis["per_frame"]["s"]["valid"] == [True, True, False, True]
  assert vis["per_sequence"]["s"]["OP50"] == pytest.approx(75.0, abs=1e-4)
  assert vis["protocol"] == "sam2plus_sot_benchmark_visibility"


def test_overall_is_mean_over_sequences(tmp_path):
  _write_seq(tmp_path, "a", [BOX] * 2, [BOX, BOX])
  gt, pred = _write_seq(tmp_path, "b", [BOX] * 4, [BOX, BOX])
  report = score_ope(gt, pred)
  assert list(report["per_sequence"]) == ["a", "b"]  # no list.txt: sorted folders
  assert report["overall"]["OP50"] == pytest.approx((100.0 + 50.0) / 2, abs=1e-4)


def test_list_file_orders_and_selects_sequences(tmp_path):
  _write_seq(tmp_path, "a", [BOX] * 2, [BOX, BOX])
  gt, pred = _write_seq(tmp_path, "b", [BOX] * 2, [BOX, BOX])
  (gt / "list.txt").write_text("b\n")
  assert list(score_ope(gt, pred)["per_sequence"]) == ["b"]


# ----------------------------------------------------------------------------- got10k
def test_got10k_clips_to_image_and_drops_frame0_and_cover0(tmp_path):
  gt_rows = [BOX, (80, 60, 30, 30), (0, 0, 30, 30), BOX]
  pred_rows = [(500, 400, 5, 5), (90, 70, 30, 30), (-10, 0, 30, 30), (300, 300, 5, 5)]
  gt, pred = _write_seq(tmp_path, "s", gt_rows, pred_rows, cover=[1, 1, 1, 0], size=(100, 80))
  report = score_got10k(gt, pred)
  # frame 1: GT clipped to (80,60,20,20), pred to (90,70,10,10): IoU 100/400
  # frame 2: pred x clipped to 0 while w stays 30 (the toolkit's bound): IoU 1
  assert report["per_frame"]["s"]["iou"][1:3] == pytest.approx([0.25, 1.0], abs=1e-12)
  seq = report["per_sequence"]["s"]
  assert seq["evaluated_frames"] == 2
  assert seq["AO"] == pytest.approx(0.625, abs=1e-12)
  assert seq["SR@0.50"] == pytest.approx(0.5, abs=1e-12)
  assert seq["SR@0.75"] == pytest.approx(0.5, abs=1e-12)


def test_got10k_overall_is_frame_weighted(tmp_path):
  _write_seq(tmp_path, "a", [BOX] * 3, [BOX, BOX, BOX])  # 2 kept frames, IoU 1
  gt, pred = _write_seq(tmp_path, "b", [BOX] * 5, [BOX] + [(300, 300, 5, 5)] * 4)  # 4 kept, IoU 0
  report = score_got10k(gt, pred)
  assert report["overall"]["AO"] == pytest.approx(2 / 6, abs=1e-12)
  assert len(report["overall"]["succ_curve_101"]) == 101


def test_got10k_absent_gt_conventions(tmp_path):
  # -1,-1,-1,-1 on a kept frame clips to an empty box (IoU 0); NaN on a dropped frame is ignored.
  rows = [BOX, (-1, -1, -1, -1), ("nan", "nan", "nan", "nan"), BOX]
  gt, pred = _write_seq(tmp_path, "s", rows, [BOX] * 4, cover=[1, 1, 0, 1])
  seq = score_got10k(gt, pred)["per_sequence"]["s"]
  assert seq["AO"] == pytest.approx(0.5, abs=1e-12)
  # NaN on a kept frame propagates into AO, as in the toolkit
  gt, pred = _write_seq(tmp_path, "s", rows, [BOX] * 4, cover=[1, 1, 1, 1])
  assert math.isnan(score_got10k(gt, pred)["overall"]["AO"])


def test_got10k_reads_comma_or_space_separated_predictions(tmp_path):
  gt, pred = _write_seq(
    tmp_path, "s", [BOX] * 3, pred_text="10,10,20,20\n12.0,10,20,20\n10,10,20,20\n"
  )
  assert score_got10k(gt, pred)["per_frame"]["s"]["iou"][1] == pytest.approx(360 / 440, abs=1e-12)


# ----------------------------------------------------------------------------- refusals
def _refused(fn, fragment):
  with pytest.raises(MetricInputError) as e:
    fn()
  assert fragment in str(e.value), str(e.value)
  return str(e.value)


@pytest.mark.parametrize(
  "text,why",
  [
    ("10,10,20,20\n10,10,20,20\n", "np.loadtxt(dtype=int)"),
    ("10 10 20 20\n10.5 10 20 20\n", "np.loadtxt(dtype=int)"),
    ("10 10 20 20\n10 10 -1 20\n", "negative width/height"),
    ("10 10 20 20\n", "single row"),
    ("", "is empty"),
    ("10 10 20\n10 10 20\n", "3 values per line"),
    ("10 10 20 20\n10 10 20 20\n0 0 0 0\n", "past the 2 GT frames"),
  ],
)
def test_ope_refuses_bad_prediction_files(tmp_path, text, why):
  gt, pred = _write_seq(tmp_path, "seqx", [BOX] * 2, pred_text=text)
  msg = _refused(lambda: score_ope(gt, pred), why)
  assert "seqx.txt" in msg


def test_ope_refuses_nan_gt_and_missing_prediction(tmp_path):
  gt, pred = _write_seq(tmp_path, "seqx", [BOX, ("nan", "nan", "nan", "nan")], [BOX, BOX])
  assert "groundtruth.txt" in _refused(lambda: score_ope(gt, pred), "NaN")
  gt, pred = _write_seq(tmp_path, "seqy", [BOX] * 2, [BOX, BOX])
  (pred / "seqy.txt").unlink()
  (gt / "list.txt").write_text("seqy\n")
  assert "seqy.txt" in _refused(lambda: score_ope(gt, pred), "not found")


def test_ope_visibility_refuses_wrong_length(tmp_path):
  gt, pred = _write_seq(tmp_path, "seqx", [BOX] * 3, [BOX] * 3)
  (gt / "seqx" / "absence.label").write_text("0\n0\n")
  assert "absence.label" in _refused(
    lambda: score_ope(gt, pred, visibility=True), "2 visibility values"
  )


@pytest.mark.parametrize(
  "text,why",
  [
    ("10,10,20,20\n10,10,20,20\n", "differs from the GT"),
    ("10,10,20,20\n10,10,20,20\n10,10,20,20\n10,10,20,20\n", "differs from the GT"),
    ("10;10;20;20\n10;10;20;20\n10;10;20;20\n", "not 4 numbers per line"),
  ],
)
def test_got10k_refuses_bad_prediction_files(tmp_path, text, why):
  gt, pred = _write_seq(tmp_path, "seqx", [BOX] * 3, pred_text=text)
  assert "seqx.txt" in _refused(lambda: score_got10k(gt, pred), why)


def test_got10k_refuses_bad_labels(tmp_path):
  gt, pred = _write_seq(tmp_path, "seqx", [BOX] * 3, [BOX] * 3)
  (gt / "seqx" / "cover.label").write_text("1\n1\n")
  assert "cover.label" in _refused(lambda: score_got10k(gt, pred), "2 values for 3 GT frames")
  (gt / "seqx" / "cover.label").write_text("1\n1\n1\n")
  (gt / "seqx" / "meta_info.ini").write_text("[METAINFO]\nobject_class: x\n")
  assert "meta_info.ini" in _refused(lambda: score_got10k(gt, pred), "resolution")
  (pred / "seqx.txt").unlink()
  assert "seqx.txt" in _refused(lambda: score_got10k(gt, pred), "not found")


def test_got10k_refuses_single_frame_gt(tmp_path):
  gt, pred = _write_seq(tmp_path, "seqx", [BOX], [BOX])
  assert "groundtruth.txt" in _refused(lambda: score_got10k(gt, pred), "at least 2 lines")


def test_scoring_is_vectorised_and_fast(tmp_path):
  import time

  rng = np.random.default_rng(0)
  n = 3000
  gt_rows = np.column_stack([rng.uniform(0, 500, (n, 2)), rng.uniform(5, 100, (n, 2))]).round(4)
  pred_rows = (gt_rows + rng.normal(0, 3, gt_rows.shape)).clip(0).astype(int)
  for k in range(5):
    gt, pred = _write_seq(tmp_path, f"s{k}", gt_rows.tolist(), pred_rows.tolist())
  t = time.time()
  report = score_ope(gt, pred)
  score_got10k(gt, pred)
  assert time.time() - t < 3.0
  assert 0 < report["overall"]["AUC"] < 100
