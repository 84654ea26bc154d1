"""Tests for sam2pp_jax.eval.pt_metrics: pt_dev reference numbers and hand-computed edge cases."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from sam2pp_jax.eval import pt_metrics as pm
from sam2pp_jax.eval.common import MetricInputError
from sam2pp_jax.io.png import save_palette_png

PROTOCOLS = {
  "sam2plus_tapvid": pm.score_sam2plus_tapvid,
  "tapnet_tapvid": pm.score_tapvid,
  "sam2plus_pck": pm.score_pck,
}


def _metrics_dir() -> Path:
  env = os.environ.get("SAM2PP_METRICS_DIR")
  return Path(env) if env else SHARED / "metrics"


def _dev_case():
  case = _metrics_dir() / "pt_dev"
  if not (case / "expected.json").is_file():
    pytest.skip(
      f"metric reference case {case} is absent: set $SAM2PP_METRICS_DIR or place ../shared/metrics"
    )
  with open(case / "expected.json") as f:
    return case, json.load(f)


def _assert_block(got: dict, want: dict, tol: float, where: str):
  assert list(got) == list(want), f"{where}: metric names {list(got)} != {list(want)}"
  for k, w in want.items():
    g, w = float(got[k]), float(w)  # float() reads the "nan"/"inf" strings too
    if math.isnan(w):
      assert math.isnan(g), f"{where}/{k}: {g} != nan"
    else:
      assert abs(g - w) <= tol, f"{where}/{k}: {g!r} vs reference {w!r} (tol {tol})"


# ----------------------------------------------------------------------------- dev reference case
@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_dev_case_matches_reference(name):
  case, expected = _dev_case()
  ref = expected["references"][name]
  assert ref["status"] == "ok"
  report = PROTOCOLS[name](str(case / "gt"), str(case / "pred"))
  tol = ref["comparison"]["abs_tol"]
  assert report["task"] == "point" and report["protocol"] == name
  _assert_block(report["overall"], ref["overall"], tol, f"{name}/overall")
  assert list(report["per_sequence"]) == list(ref["per_sequence"])
  for seq, want in ref["per_sequence"].items():
    _assert_block(report["per_sequence"][seq], want, tol, f"{name}/{seq}")
  for seq, want in ref.get("per_frame", {}).items():
    _assert_block(report["per_frame"][seq], want, tol, f"{name}/per_frame/{seq}")


def test_dev_case_sequence_subset():
  case, expected = _dev_case()
  report = pm.score_tapvid(str(case / "gt"), str(case / "pred"), sequences=["dev_pt_c", "dev_pt_a"])
  assert list(report["per_sequence"]) == ["dev_pt_c", "dev_pt_a"]
  per = expected["references"]["tapnet_tapvid"]["per_sequence"]
  want = (per["dev_pt_c"]["average_jaccard"] + per["dev_pt_a"]["average_jaccard"]) / 2
  assert report["overall"]["average_jaccard"] == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------- builders
def _write(folder: Path, seq: str, trajs, vis, size=(256, 256)):
  folder.mkdir(parents=True, exist_ok=True)
  np.savez(
    folder / f"{seq}.npz",
    trajs_2d=np.asarray(trajs, np.float32),
    visibs=np.asarray(vis, bool),
    size=np.asarray(size, np.int64),
  )


def _case(tmp_path, seq, gt, gvis, pred, pvis, size=(256, 256), masks=None):
  """gt/ and pred/ folders of one video (pred size = GT size); masks go to gt/Annotations/<seq>."""
  _write(tmp_path / "gt", seq, gt, gvis, size)
  _write(tmp_path / "pred", seq, pred, pvis, size)
  if masks is not None:
    folder = tmp_path / "gt" / "Annotations" / seq
    folder.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(masks):
      save_palette_png(str(folder / f"{t:05d}.png"), np.asarray(m, np.uint8))
  return str(tmp_path / "gt"), str(tmp_path / "pred")


def _still(T, N, x=100.0, y=100.0):
  return np.tile(np.array([x, y], np.float32), (T, N, 1))


# ----------------------------------------------------------------------------- TAP-Vid rules
def test_query_frame_and_earlier_frames_are_not_scored_and_thresholds_are_strict(tmp_path):
  gt = _still(4, 1)
  pred = gt.copy()
  pred[0, 0] = pred[1, 0] = (200, 200)  # frame 0 (before the query) and 1 (the query) are far off
  pred[2, 0, 0] += 1.0  # exactly 1 px: not < 1, but < 2
  pred[3, 0, 1] += 0.5
  gvis = [[False], [True], [True], [True]]  # query frame 1
  d = _case(tmp_path, "v", gt, gvis, pred, np.ones((4, 1), bool))
  want = {
    "occlusion_accuracy": 1.0,
    "pts_within_1": 0.5,
    "jaccard_1": 1 / 3,
    "average_jaccard": (1 / 3 + 4) / 5,
    "average_pts_within_thresh": 4.5 / 5,
  }
  want.update({f"{k}_{t}": 1.0 for t in (2, 4, 8, 16) for k in ("pts_within", "jaccard")})
  tapnet = pm.score_tapvid(*d)["per_sequence"]["v"]
  sam2 = pm.score_sam2plus_tapvid(*d)["per_sequence"]["v"]
  for k, w in want.items():
    assert tapnet[k] == pytest.approx(w, abs=1e-12), k
    assert sam2[k] == pytest.approx(100 * w, abs=1e-10), k


def test_sam2plus_truncates_coordinates_toward_zero_tapnet_keeps_floats(tmp_path):
  gt, pred = _still(2, 1, 10.7, 50.0), _still(2, 1, 11.2, 50.0)  # 0.5 px apart, trunc 10 vs 11
  gt_neg, pred_neg = _still(2, 1, -0.6, 50.0), _still(2, 1, 0.6, 50.0)  # 1.2 px, trunc 0 vs 0
  ones = np.ones((2, 1), bool)
  d = _case(tmp_path, "a", gt, ones, pred, ones)
  _case(tmp_path, "b", gt_neg, ones, pred_neg, ones)
  tapnet = pm.score_tapvid(*d)["per_sequence"]
  sam2 = pm.score_sam2plus_tapvid(*d)["per_sequence"]
  assert (tapnet["a"]["pts_within_1"], sam2["a"]["pts_within_1"]) == (1.0, 0.0)
  assert (tapnet["b"]["pts_within_1"], sam2["b"]["pts_within_1"]) == (0.0, 100.0)
  assert sam2["a"]["pts_within_2"] == 100.0


def test_coordinates_are_scaled_by_each_files_own_size(tmp_path):
  gt = _still(2, 1, 500.0, 100.0)
  pred = _still(2, 1, 254.0, 50.0)  # half resolution; 2 px off in x at 256 scale
  ones = np.ones((2, 1), bool)
  _write(tmp_path / "gt", "v", gt, ones, (1024, 512))
  _write(tmp_path / "pred", "v", pred, ones, (512, 256))
  r = pm.score_tapvid(str(tmp_path / "gt"), str(tmp_path / "pred"))["per_sequence"]["v"]
  assert (r["pts_within_2"], r["pts_within_4"]) == (0.0, 1.0)


def test_track_never_visible_is_scored_nowhere(tmp_path):
  gt = _still(3, 2)
  pred = gt.copy()
  pred[:, 1] = (0, 0)  # visible and far off: a false positive if scored
  gvis = np.array([[True, False]] * 3)
  d = _case(tmp_path, "v", gt, gvis, pred, np.ones((3, 2), bool))
  tapnet = pm.score_tapvid(*d)["per_sequence"]["v"]
  sam2 = pm.score_sam2plus_tapvid(*d)["per_sequence"]["v"]
  assert all(v == 1.0 for v in tapnet.values()), tapnet
  assert all(v == 100.0 for v in sam2.values()), sam2


def test_video_without_visible_points_sam2plus_nan_oa_propagates_tapnet_refuses(tmp_path):
  gt = _still(3, 2)
  ones = np.ones((3, 2), bool)
  pred = gt.copy()
  pred[1:, 0, 0] += 1.5  # good video: within 2, not within 1
  d = _case(tmp_path, "good", gt, ones, pred, ones)
  _case(tmp_path, "empty", gt, np.zeros((3, 2), bool), gt, ones)
  r = pm.score_sam2plus_tapvid(*d)
  empty = r["per_sequence"]["empty"]
  assert math.isnan(empty["occlusion_accuracy"])
  assert all(v == 0 for k, v in empty.items() if k != "occlusion_accuracy")
  assert math.isnan(r["overall"]["occlusion_accuracy"])
  assert r["overall"]["pts_within_1"] == pytest.approx((50.0 + 0.0) / 2)
  assert r["overall"]["pts_within_2"] == pytest.approx((100.0 + 0.0) / 2)
  with pytest.raises(MetricInputError, match="empty.npz"):
    pm.score_tapvid(*d)
  assert pm.score_tapvid(*d, sequences=["good"])["overall"]["pts_within_1"] == 0.5


def test_visible_only_at_query_frame_tapnet_nan_sam2plus_zero(tmp_path):
  gt = _still(3, 1)
  d = _case(tmp_path, "v", gt, [[True], [False], [False]], gt, [[True], [True], [False]])
  tapnet = pm.score_tapvid(*d)["per_sequence"]["v"]
  sam2 = pm.score_sam2plus_tapvid(*d)["per_sequence"]["v"]
  assert tapnet["occlusion_accuracy"] == 0.5 and sam2["occlusion_accuracy"] == 50.0
  assert math.isnan(tapnet["pts_within_4"]) and math.isnan(tapnet["average_pts_within_thresh"])
  assert tapnet["jaccard_4"] == 0.0 and tapnet["average_jaccard"] == 0.0  # 0 TP over 1 FP
  assert sam2["pts_within_4"] == 0 and sam2["average_pts_within_thresh"] == 0


def test_nan_prediction_is_a_miss_and_nan_gt_at_occluded_frames_is_harmless(tmp_path):
  gt = _still(3, 2)
  gt[2, 1] = np.nan  # occluded there: never compared
  pred = gt.copy()
  pred[2, 1] = (100, 100)
  pred[1, 0] = np.nan
  gvis = np.array([[True, True], [True, True], [True, False]])
  d = _case(tmp_path, "v", gt, gvis, pred, gvis)
  for fn, scale in ((pm.score_tapvid, 1.0), (pm.score_sam2plus_tapvid, 100.0)):
    r = fn(*d)["per_sequence"]["v"]
    assert r["pts_within_16"] == pytest.approx(2 / 3 * scale)
    assert r["jaccard_16"] == pytest.approx(2 / 4 * scale)  # TP 2 over 3 visible + 1 FP


# ----------------------------------------------------------------------------- PCK rules
def _square(h, w, side, value=1):
  m = np.zeros((h, w), np.uint8)
  m[:side, :side] = value
  return m


def test_pck_strict_threshold_empty_mask_and_frame0_excluded(tmp_path):
  gt = _still(3, 2)
  pred = gt.copy()
  pred[0] = (400, 300)  # frame 0 is never scored
  pred[1, 0, 0] += 2.0  # dist 2 vs threshold 0.2*sqrt(100) = 2: wrong
  pred[1, 1] += (1.2, 1.5)  # dist 1.92: correct
  pred[2, 1] = (0, 0)  # GT-occluded: not counted
  gvis = np.array([[True, True], [True, True], [True, False]])
  masks = [_square(320, 512, 10, 2), _square(320, 512, 10, 1), np.zeros((320, 512))]
  d = _case(tmp_path, "v", gt, gvis, pred, np.zeros((3, 2), bool), (512, 320), masks)
  r = pm.score_pck(*d)
  # 1 of 3: (torch.mean(tensor([0., 1., 0.])) * 100.0).item() is float32, not float32(100 / 3)
  assert r["per_sequence"]["v"]["pck"] == 33.333335876464844
  assert r["overall"]["pck"] == r["per_sequence"]["v"]["pck"]


def test_pck_rescales_points_and_masks_to_512x320(tmp_path):
  gt = _still(2, 1, 50.0, 40.0)
  pred = gt + np.float32(0.7)  # 1.4 px per axis at 512x320: dist 1.98 < 2
  masks = [np.zeros((160, 256))] + [_square(160, 256, 5)]  # 5x5 -> 10x10 after the resize
  d = _case(
    tmp_path, "v", gt, np.ones((2, 1), bool), pred, np.ones((2, 1), bool), (256, 160), masks
  )
  assert pm.score_pck(*d)["per_sequence"]["v"]["pck"] == 100.0
  masks[1] = _square(160, 256, 4)  # 8x8: threshold 1.6
  _case(tmp_path, "v", gt, np.ones((2, 1), bool), pred, np.ones((2, 1), bool), (256, 160), masks)
  assert pm.score_pck(*d)["per_sequence"]["v"]["pck"] == 0.0


def test_pck_nearest_index_matches_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  for out in (320, 512):
    for n_in in list(range(1, 200)) + [240, 333, 480, 577, 720, 854, 1080, 1280, 1920]:
      x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
      want = F.interpolate(x, (out, 1), mode="nearest")[0, 0, :, 0].numpy().astype(np.int64)
      np.testing.assert_array_equal(pm.nearest_source_index(out, n_in), want, f"{n_in}->{out}")


def test_pck_nearest_index_uses_float32_scale():
  # 84/320 in float64 lands some products just below an integer that float32 rounds up to it.
  f64 = np.minimum(np.floor(np.arange(320) * (84 / 320)).astype(np.int64), 83)
  assert not np.array_equal(pm.nearest_source_index(320, 84), f64)


# ----------------------------------------------------------------------------- refusals
def _good(tmp_path, T=3, N=2, masks=True):
  gt = _still(T, N)
  ones = np.ones((T, N), bool)
  m = [_square(256, 256, 20)] * T if masks else None
  return _case(tmp_path, "v", gt, ones, gt, ones, (256, 256), m)


def _replace(folder, **arrays):
  path = Path(folder) / "v.npz"
  with np.load(path) as z:
    data = dict(z)
  data.update(arrays)
  for k in [k for k, v in arrays.items() if v is None]:
    del data[k]
  np.savez(path, **data)
  return str(path)


ALL = list(PROTOCOLS.values())


@pytest.mark.parametrize("fn", ALL)
def test_refuses_missing_prediction(tmp_path, fn):
  gt_dir, pred_dir = _good(tmp_path)
  os.remove(os.path.join(pred_dir, "v.npz"))
  with pytest.raises(MetricInputError, match=r"pred.v\.npz.*missing"):
    fn(gt_dir, pred_dir)


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("shape", [(2, 2, 2), (3, 3, 2)])
def test_refuses_prediction_with_other_t_or_n(tmp_path, fn, shape):
  gt_dir, pred_dir = _good(tmp_path)
  path = _replace(pred_dir, trajs_2d=np.zeros(shape, np.float32), visibs=np.ones(shape[:2], bool))
  with pytest.raises(MetricInputError, match=re.escape(path) + ".*shape"):
    fn(gt_dir, pred_dir)


@pytest.mark.parametrize("fn", ALL)
def test_refuses_nan_at_a_visible_gt_point(tmp_path, fn):
  gt_dir, pred_dir = _good(tmp_path)
  trajs = _still(3, 2)
  trajs[1, 0, 1] = np.nan
  path = _replace(gt_dir, trajs_2d=trajs)
  with pytest.raises(MetricInputError, match=re.escape(path) + ".*point 0 at frame 1.*not finite"):
    fn(gt_dir, pred_dir)


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("size", [(0, 256), (256,), (256, np.inf)])
def test_refuses_bad_size(tmp_path, fn, size):
  gt_dir, pred_dir = _good(tmp_path)
  path = _replace(pred_dir, size=np.asarray(size, np.float64))
  with pytest.raises(MetricInputError, match=re.escape(path) + ".*size"):
    fn(gt_dir, pred_dir)


@pytest.mark.parametrize("fn", ALL)
def test_refuses_missing_key_and_mismatched_visibs(tmp_path, fn):
  gt_dir, pred_dir = _good(tmp_path)
  path = _replace(gt_dir, visibs=None)
  with pytest.raises(MetricInputError, match=re.escape(path) + ".*visibs"):
    fn(gt_dir, pred_dir)
  path = _replace(gt_dir, visibs=np.ones((3, 3), bool))
  with pytest.raises(MetricInputError, match=re.escape(path) + ".*visibs"):
    fn(gt_dir, pred_dir)


def test_tapvid_needs_prediction_visibility_pck_does_not(tmp_path):
  gt_dir, pred_dir = _good(tmp_path)
  path = _replace(pred_dir, visibs=None)
  for fn in (pm.score_tapvid, pm.score_sam2plus_tapvid):
    with pytest.raises(MetricInputError, match=re.escape(path) + ".*visibs"):
      fn(gt_dir, pred_dir)
  assert pm.score_pck(gt_dir, pred_dir)["overall"]["pck"] == 100.0


@pytest.mark.parametrize("fn", ALL)
def test_refuses_empty_ground_truth_folder(tmp_path, fn):
  (tmp_path / "gt").mkdir()
  with pytest.raises(MetricInputError, match="no sequences"):
    fn(str(tmp_path / "gt"), str(tmp_path))
  gt_dir, pred_dir = _good(tmp_path)
  with pytest.raises(MetricInputError, match="no sequences"):
    fn(gt_dir, pred_dir, sequences=[])


def test_pck_refuses_video_with_no_scored_pair(tmp_path):
  gt_dir, pred_dir = _good(tmp_path)
  path = _replace(gt_dir, visibs=np.array([[True, True], [False, False], [False, False]]))
  with pytest.raises(MetricInputError, match=re.escape(path) + ".*no point is GT-visible"):
    pm.score_pck(gt_dir, pred_dir)


def test_pck_refuses_bad_masks(tmp_path):
  gt_dir, pred_dir = _good(tmp_path)
  folder = Path(gt_dir) / "Annotations" / "v"
  os.remove(folder / "00002.png")
  with pytest.raises(MetricInputError, match=re.escape(str(folder)) + ".*2 mask PNGs for 3"):
    pm.score_pck(gt_dir, pred_dir)
  save_palette_png(str(folder / "00002.png"), np.zeros((128, 256), np.uint8))
  with pytest.raises(MetricInputError, match=r"00002\.png.*256x128.*256x256"):
    pm.score_pck(gt_dir, pred_dir)
  gt_dir, pred_dir = _good(tmp_path / "nomasks", masks=False)
  with pytest.raises(MetricInputError, match=r"Annotations.v.*missing"):
    pm.score_pck(gt_dir, pred_dir)


def test_pck_reads_sam2plus_points_annotations_layout(tmp_path):
  gt = _still(2, 1)
  ones = np.ones((2, 1), bool)
  _write(tmp_path / "Points", "v", gt, ones)
  _write(tmp_path / "pred", "v", gt + 1, ones)
  folder = tmp_path / "Annotations" / "v"
  folder.mkdir(parents=True)
  for t in range(2):
    save_palette_png(str(folder / f"{t:05d}.png"), _square(256, 256, 10))  # -> 13x20 px
  r = pm.score_pck(str(tmp_path / "Points"), str(tmp_path / "pred"))
  assert r["per_sequence"]["v"]["pck"] == 100.0  # dist |(2, 1.25)| = 2.36 < 0.2*sqrt(260) = 3.22
