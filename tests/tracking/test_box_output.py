"""Box results are written exactly as the reference's `tools/sot_inference_plus.py` writes them.

The reference's rule, applied by hand here (never through our own writer): the predicted box is
a float32 tensor (x0, y0, x1, y1) in video pixels; `np_box_xyxy_to_xywh` makes it
(x0, y0, x1 - x0, y1 - y0) in float32, `np_box_clamp_xywh` is `np.clip(x, 0, None)` on all four
values, and `save_boxes_to_dir` writes every frame with `np.savetxt(path, boxes, fmt="%d")`:
values separated by one space, '\\n' after each line, `%d` truncating toward zero. The prompt
frame's line is the model's box on that frame like any other.
"""

import io

import numpy as np
import pytest

from sam2pp_jax.tracking import outputs


def reference_text(boxes_xyxy) -> bytes:
  """What the reference writes for these boxes: float32 xyxy -> xywh -> clip at 0 -> '%d'."""
  rows = []
  for x0, y0, x1, y1 in np.asarray(boxes_xyxy, np.float32).reshape(-1, 4):
    rows.append([x0, y0, x1 - x0, y1 - y0])  # numpy float32 scalars: float32 arithmetic
  xywh = np.clip(np.array(rows, np.float32).reshape(-1, 4), 0, None)
  buf = io.BytesIO()
  np.savetxt(buf, xywh, fmt="%d")
  return buf.getvalue()


def _written(tmp_path, boxes_xyxy, tracked=None) -> bytes:
  paths = outputs.write_box_results(tmp_path / "vid.txt", boxes_xyxy, tracked)
  assert paths == [str(tmp_path / "vid_xyxy.npz"), str(tmp_path / "vid.txt")]
  return (tmp_path / "vid.txt").read_bytes()


# (float32 xyxy, the line the reference writes, what it shows)
CASES = [
  # the reported 1920x1080 case: rounding corners gave "1061 299 -115 574"
  ([1061.3, 298.7, 946.2, 872.9], "1061 298 0 574", "negative width -> 0, y truncated"),
  ([10.9, 20.6, 30.4, 40.2], "10 20 19 19", "truncation, not rounding"),
  ([-3.7, -0.2, 50.9, 40.4], "0 0 54 40", "corner off the frame: x, y -> 0, w from raw x0"),
  ([5.0, 7.0, 5.0, 3.5], "5 7 0 0", "empty / inverted height"),
  ([0.0, 0.0, 0.0, 0.0], "0 0 0 0", "absent object (the model's zero box)"),
  ([1e-5, 0.5, 1000.0, 1079.999], "0 0 1000 1079", "float32 subtraction: 1000 - 1e-5 == 1000"),
  ([1919.6, 1079.9, 1920.0, 1080.0], "1919 1079 0 0", "sub-pixel box at the corner"),
]


@pytest.mark.parametrize("xyxy,line,why", CASES, ids=[c[2] for c in CASES])
def test_single_box_as_reference(tmp_path, xyxy, line, why):
  assert reference_text([xyxy]).decode() == line + "\n"  # the rule by hand
  assert _written(tmp_path, [xyxy]).decode() == line + "\n"  # our writer
  assert outputs.xyxy_to_xywh_int([xyxy]).tolist() == [[int(v) for v in line.split()]]


def test_reported_case_old_rule_and_new(tmp_path):
  """The float box behind the report: rounded corners give '1061 299 -115 574' (the old
  output); the reference writes '1061 298 0 574'."""
  b = np.array([1061.3, 298.7, 946.2, 872.9], np.float32)
  r = np.rint(b).astype(int)
  assert [r[0], r[1], r[2] - r[0], r[3] - r[1]] == [1061, 299, -115, 574]
  assert _written(tmp_path, [b]) == b"1061 298 0 574\n"


def test_whole_video_matches_reference_bytes(tmp_path):
  """Random 1920x1080 boxes (some inverted, some off the frame) over 300 frames: byte-equal."""
  rng = np.random.default_rng(0)
  c = rng.uniform([-50, -50], [1970, 1130], (300, 2))
  wh = rng.uniform(-150, 700, (300, 2))
  xyxy = np.concatenate([c, c + wh], axis=1).astype(np.float32)
  xyxy[::17] = 0.0
  want = reference_text(xyxy)
  assert _written(tmp_path, xyxy) == want
  assert np.loadtxt(tmp_path / "vid.txt", dtype=int).shape == (300, 4)  # the scorer's reader
  assert b"-" not in want


def test_float64_input_is_the_float32_box(tmp_path):
  """Our tracker's boxes are float32 like the reference's; a float64 copy of them writes the
  same lines (the subtraction happens in float32)."""
  b = np.array([[1e-5, 2.25, 1000.0, 3.0]], np.float32)
  assert _written(tmp_path, b.astype(np.float64)) == reference_text(b) == b"0 2 1000 0\n"


def test_float_boxes_next_to_the_txt(tmp_path):
  """<video>_xyxy.npz keeps the exact float32 boxes; untracked frames: NaN there, '0 0 0 0' in
  the txt."""
  xyxy = np.array(
    [[1.5, 2.25, 30.75, 40.125], [1061.3, 298.7, 946.2, 872.9], [9, 9, 19, 19]], np.float32
  )
  tracked = np.array([True, True, False])
  txt = _written(tmp_path, xyxy, tracked)
  assert txt == reference_text(xyxy[:2]) + b"0 0 0 0\n"
  z = np.load(tmp_path / "vid_xyxy.npz")
  assert sorted(z.files) == ["boxes_xyxy", "tracked"]
  assert z["boxes_xyxy"].dtype == np.float32 and z["tracked"].tolist() == tracked.tolist()
  np.testing.assert_array_equal(z["boxes_xyxy"][:2], xyxy[:2])
  assert np.isnan(z["boxes_xyxy"][2]).all()
  assert outputs.box_float_path(tmp_path / "vid.txt") == str(tmp_path / "vid_xyxy.npz")


def test_non_finite_written_as_zero(tmp_path):
  """The reference has no output for a NaN / +inf box (np.savetxt's '%d' raises); we write 0
  for that value (-inf clips to 0 as in the reference)."""
  bad = np.array(
    [[np.nan, 5.5, 20.0, 30.0], [2.0, 3.0, np.inf, 9.5], [-np.inf, 1.0, 4.0, 5.0]], np.float32
  )
  with pytest.raises((ValueError, OverflowError)):
    reference_text(bad[:1])
  assert _written(tmp_path, bad) == b"0 5 0 24\n2 3 0 6\n0 1 0 4\n"
