"""VOS metrics: the dev reference numbers, the crop shortcut vs full-frame boundaries, edge
rules."""

import json
import math
import os

import numpy as np
import pytest
from conftest import SHARED

from sam2pp_jax.eval import vos_metrics as vm
from sam2pp_jax.eval.common import MetricInputError
from sam2pp_jax.io.png import save_palette_png

METRICS = os.environ.get("SAM2PP_METRICS_DIR", str(SHARED / "metrics"))
VOS = os.path.join(METRICS, "vos_dev")


def _expected():
  path = os.path.join(VOS, "expected.json")
  if not os.path.isfile(path):
    pytest.skip(f"metric reference cases not found at {path} (set SAM2PP_METRICS_DIR)")
  with open(path) as f:
    return json.load(f)["references"]


def _close(a, b, tol, where):
  if isinstance(b, str):
    b = float(b)
  assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol, f"{where}: {a} vs {b}"


def test_davis2017_reproduces_reference():
  ref = _expected()["davis2017"]
  tol = ref["comparison"]["abs_tol"]
  got = vm.score_davis2017(os.path.join(VOS, "gt"), os.path.join(VOS, "pred"), with_per_frame=True)
  for k, v in ref["global"].items():
    _close(got["overall"][k], v, tol, f"global {k}")
  assert set(got["per_object"]) == set(ref["per_object"])
  for obj, vals in ref["per_object"].items():
    for k, v in vals.items():
      _close(got["per_object"][obj][k], v, tol, f"{obj} {k}")
  for obj, vals in ref["per_frame"].items():
    assert got["per_frame"][obj]["frames"] == vals["frames"]
    np.testing.assert_allclose(got["per_frame"][obj]["J"], vals["J"], atol=tol, rtol=0)
    np.testing.assert_allclose(got["per_frame"][obj]["F"], vals["F"], atol=tol, rtol=0)
  for seq, vals in ref["per_sequence_mean_of_objects"].items():
    for k in ("J-Mean", "F-Mean", "J&F-Mean"):
      _close(got["per_sequence"][seq][k], vals[k], tol, f"{seq} {k}")


def test_sav_reproduces_reference():
  ref = _expected()["sam2plus_sav_benchmark"]
  tol = ref["comparison"]["abs_tol"]
  got = vm.score_sav(os.path.join(VOS, "gt"), os.path.join(VOS, "pred"))
  for k, v in ref["global"].items():
    _close(got["overall"][k], v, tol, f"global {k}")
  assert set(got["per_object"]) == set(ref["per_object"])
  for seq, objs in ref["per_object"].items():
    assert set(got["per_object"][seq]) == set(objs)
    for obj, vals in objs.items():
      for k, v in vals.items():
        _close(got["per_object"][seq][obj][k], v, tol, f"{seq}/{obj} {k}")
  for seq, vals in ref["per_sequence_mean_of_objects"].items():
    for k, v in vals.items():
      _close(got["per_sequence"][seq][k], v, tol, f"{seq} {k}")


def _full_frame_f(pred, gt, radius):
  """Boundary F on the whole frame (no crop), the toolkits' procedure step by step."""
  import cv2

  bp, bg = vm.boundary_map(pred), vm.boundary_map(gt)
  k = vm.disk(radius)
  dp = cv2.dilate(bp.astype(np.uint8), k)
  dg = cv2.dilate(bg.astype(np.uint8), k)
  n_p, n_g = bp.sum(), bg.sum()
  if n_p == 0 and n_g == 0:
    return 1.0
  if n_p == 0 or n_g == 0:
    return 0.0
  p = np.sum(bp * dg) / n_p
  r = np.sum(bg * dp) / n_g
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_cropped_boundary_f_equals_full_frame():
  rng = np.random.default_rng(0)
  h, w = 60, 80
  radius = vm.boundary_radius((h, w))
  kernel = vm.disk(radius)
  yy, xx = np.mgrid[:h, :w]
  for trial in range(60):
    masks = []
    for _ in range(2):
      if rng.random() < 0.1:
        masks.append(np.zeros((h, w), bool))
        continue
      cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)  # may touch or cross the border
      ry, rx = rng.uniform(1, 25, 2)
      m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
      m ^= rng.random((h, w)) < 0.02  # ragged boundaries
      masks.append(m)
    got = vm._boundary_f(masks[0], masks[1], kernel)
    want = _full_frame_f(masks[0], masks[1], radius)
    assert got == pytest.approx(want, abs=1e-15), trial


def test_boundary_map_edge_rules():
  # A full mask has no boundary: the image border is not a boundary (edge rules compare only
  # along the last row / column).
  assert not vm.boundary_map(np.ones((3, 4), bool)).any()
  # One pixel at (1, 1): itself plus its left, upper and upper-left neighbours (1/2 px offset).
  seg = np.zeros((3, 4), bool)
  seg[1, 1] = True
  want = np.zeros((3, 4), bool)
  want[0, 0] = want[0, 1] = want[1, 0] = want[1, 1] = True
  np.testing.assert_array_equal(vm.boundary_map(seg), want)
  # Last row: compared with the right neighbour only; last column: with the pixel below only.
  seg = np.zeros((3, 4), bool)
  seg[2, 1] = True
  want = np.zeros((3, 4), bool)
  want[2, 0] = want[2, 1] = True  # last-row rule
  want[1, 0] = want[1, 1] = True  # row above sees it below / below-right
  np.testing.assert_array_equal(vm.boundary_map(seg), want)
  seg = np.zeros((3, 4), bool)
  seg[2, 3] = True  # bottom-right pixel: never a boundary itself
  want = np.zeros((3, 4), bool)
  want[2, 2] = True  # last row, right neighbour differs
  want[1, 3] = True  # last column, pixel below differs
  want[1, 2] = True  # interior, below-right differs
  np.testing.assert_array_equal(vm.boundary_map(seg), want)


def test_disk_matches_skimage_definition():
  k = vm.disk(4.0)
  assert k.shape == (9, 9)
  assert k[4].all() and k[:, 4].all()
  assert k.sum() == 49  # lattice points with x^2 + y^2 <= 16
  assert vm.boundary_radius((240, 320)) == 4 and vm.boundary_radius((480, 854)) == 8
  assert vm.boundary_radius((360, 640)) == 6


def test_db_statistics_decay_bins():
  v = np.arange(8, dtype=float) / 10
  mean, recall, decay = vm.db_statistics(v)
  assert mean == pytest.approx(0.35)
  assert recall == pytest.approx(2 / 8)  # only 0.6 and 0.7 are > 0.5 (0.5 itself is not)
  # n=8: ids [0,2,4,5,7]; bins v[0:3] and v[5:8]
  assert decay == pytest.approx(np.mean(v[0:3]) - np.mean(v[5:8]))
  assert vm.db_statistics(np.array([0.9, 0.2]))[2] == pytest.approx(0.7)
  assert vm.db_statistics(np.array([0.4]))[2] == 0.0


def _write_seq(root, seq, frames):
  os.makedirs(os.path.join(root, seq), exist_ok=True)
  for i, ids in enumerate(frames):
    save_palette_png(os.path.join(root, seq, f"{i:05d}.png"), ids.astype(np.uint8))


def _toy(tmp_path, pred_override=None, n=4):
  h, w = 20, 24
  gt = []
  for t in range(n):
    m = np.zeros((h, w), np.uint8)
    m[2 + t : 10 + t, 3:12] = 1
    m[12:18, 14:20] = 2
    gt.append(m)
  pred = [g.copy() for g in gt] if pred_override is None else pred_override(gt)
  _write_seq(tmp_path / "gt" / "Annotations", "s", gt)
  _write_seq(tmp_path / "pred", "s", pred)
  return str(tmp_path / "gt"), str(tmp_path / "pred")


def test_perfect_prediction_scores_one(tmp_path):
  g, p = _toy(tmp_path)
  r = vm.score_davis2017(g, p)
  assert r["overall"]["J&F-Mean"] == 1.0 and r["overall"]["J-Decay"] == 0.0
  r = vm.score_sav(g, p)
  assert r["overall"]["J&F"] == 100.0


def test_void_label_is_background_in_gt(tmp_path):
  def pred(gt):
    return [g.copy() for g in gt]

  g, p = _toy(tmp_path, pred)
  # put void (255) on the background of a scored GT frame: davis2017 ignores it
  from sam2pp_jax.io.png import read_palette_png

  path = os.path.join(g, "Annotations", "s", "00001.png")
  ids, _ = read_palette_png(path)
  ids = ids.copy()
  ids[0, :] = 255
  save_palette_png(path, ids)
  assert vm.score_davis2017(g, p)["overall"]["J&F-Mean"] == 1.0


def test_refusals(tmp_path):
  g, p = _toy(tmp_path)
  os.remove(os.path.join(p, "s", "00002.png"))
  with pytest.raises(MetricInputError, match="00002.png"):
    vm.score_davis2017(g, p)
  with pytest.raises(MetricInputError, match="00002.png"):
    vm.score_sav(g, p)


def test_missing_first_and_last_prediction_is_harmless(tmp_path):
  g, p = _toy(tmp_path)
  os.remove(os.path.join(p, "s", "00000.png"))
  os.remove(os.path.join(p, "s", "00003.png"))
  assert vm.score_davis2017(g, p)["overall"]["J&F-Mean"] == 1.0


def test_prediction_id_above_k_is_refused_by_davis(tmp_path):
  def pred(gt):
    out = [x.copy() for x in gt]
    out[1][0, 0] = 3
    return out

  g, p = _toy(tmp_path, pred)
  with pytest.raises(MetricInputError, match="id 3"):
    vm.score_davis2017(g, p)
  # sav ignores ids seen only in predictions
  assert set(vm.score_sav(g, p)["per_object"]["s"]) == {"1", "2"}


def test_sav_object_set_grows_and_davis_scores_absent_ids(tmp_path):
  # object 2 only appears from GT frame 2 on; the prediction never shows it
  def pred(gt):
    return [np.where(x == 2, 0, x).astype(np.uint8) for x in gt]

  g, p = _toy(tmp_path, pred, n=5)
  gt_dir = os.path.join(g, "Annotations", "s")
  from sam2pp_jax.io.png import read_palette_png

  for i in (0, 1):
    ids = read_palette_png(os.path.join(gt_dir, f"{i:05d}.png"))[0].copy()
    ids[ids == 2] = 0
    save_palette_png(os.path.join(gt_dir, f"{i:05d}.png"), ids)
  sav = vm.score_sav(g, p)["per_object"]["s"]
  # object 2 is scored from frame 2 (seen first there): frames 2, 3 both J = 0
  assert sav["2"]["J"] == 0.0
  # davis2017: K = max id of the first frame = 1, object 2 ignored
  d = vm.score_davis2017(g, p)
  assert list(d["per_object"]) == ["s_1"]


def test_too_short_sequence_is_refused_by_davis(tmp_path):
  g, p = _toy(tmp_path, n=2)
  with pytest.raises(MetricInputError, match="at least 3"):
    vm.score_davis2017(g, p)
