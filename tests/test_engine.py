"""The data engine (sam2pp_jax/engine.py, annotate.py): fuse rules, pass coverage, key frames kept
exactly, scorer-readable outputs, and one-line errors with nothing written on bad inputs."""

import os
import shutil
import types

import numpy as np
import pytest

import annotate
from sam2pp_jax import engine
from sam2pp_jax.data import synthetic
from sam2pp_jax.demo import write_held_out
from sam2pp_jax.eval.score import score
from sam2pp_jax.io.png import read_palette_png, save_palette_png

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(REPO, "checkpoints", "tiny")
T = 6
KEYS = [1, 3, 4]  # frame 0: backward pass only; 2: both passes; 5: forward pass only


# ------------------------------------------------------------------------------ no model
def _pf(score, iou=None, values=None):
  score = np.asarray(score, np.float32)
  iou = np.ones_like(score) if iou is None else np.asarray(iou, np.float32)
  values = np.arange(len(score), dtype=np.float32)[:, None] if values is None else values
  return engine.PassFrame(values, score, iou)


GAP = engine.Gap(1, 10, engine.Pass(0, 9, False), engine.Pass(10, 1, True))


def test_nearest_takes_the_nearer_key_frame_and_forward_on_a_tie():
  f, b = _pf([3.0]), _pf([3.0])
  assert engine.take_forward("nearest", "mask", 3, GAP, f, b).tolist() == [True]
  assert engine.take_forward("nearest", "mask", 7, GAP, f, b).tolist() == [False]
  assert engine.take_forward("nearest", "mask", 5, GAP, f, b).tolist() == [True]


def test_nearest_gives_way_only_to_a_confident_present_other_pass():
  # per object: nearer (forward) absent vs backward present above / below the margin
  f = _pf([-1.0, -1.0, -np.inf])
  b = _pf([engine.PRESENT_MARGIN + 1, engine.PRESENT_MARGIN - 1, 5.0])
  assert engine.take_forward("nearest", "mask", 2, GAP, f, b).tolist() == [False, True, False]
  # mirrored: the backward pass is nearer and absent
  assert engine.take_forward("nearest", "mask", 8, GAP, b, f).tolist() == [True, False, True]


def test_score_rule_uses_iou_times_sigmoid_and_sigmoid_alone_for_points():
  f = _pf([4.0, 4.0], iou=[0.2, 0.9])
  b = _pf([1.0, 1.0], iou=[0.9, 0.9])
  # mask/box: 0.98*0.2 < 0.73*0.9; 0.98*0.9 > 0.73*0.9
  assert engine.take_forward("score", "box", 8, GAP, f, b).tolist() == [False, True]
  assert engine.take_forward("score", "point", 8, GAP, f, b).tolist() == [True, True]
  # equal confidence: nearest decides
  assert engine.take_forward("score", "mask", 8, GAP, f, f).tolist() == [False, False]
  with pytest.raises(ValueError, match="unknown"):
    engine.take_forward("vote", "mask", 8, GAP, f, b)


def test_fuse_picks_each_objects_values_from_its_pass():
  f = _pf([1.0, 1.0], values=np.ones((2, 2, 2), bool))
  b = _pf([2.0, 2.0], values=np.zeros((2, 2, 2), bool))
  r = engine.fuse("mask", np.array([True, False]), f, b)
  assert r.values[0].all() and not r.values[1].any() and r.score.tolist() == [1.0, 2.0]


def test_mask_result_paints_the_lowest_id_last():
  m = np.zeros((2, 2, 3), bool)
  m[0, :, :2] = True  # id 7
  m[1, :, 1:] = True  # id 3
  out = engine.frame_result("mask", (7, 3), _pf([1, 1], values=m))
  assert out.tolist() == [[7, 3, 3], [7, 3, 3]]


@pytest.mark.parametrize(
  "keys, n", [([0, 5, 9], 10), ([3], 10), ([4, 5, 6], 12), ([0], 1), ([2, 9], 10), ([0, 1], 2)]
)
def test_passes_cover_every_non_key_frame(keys, n):
  gaps = engine.plan_gaps(keys, n)
  filled = [t for g in gaps for t in range(g.start, g.end)]
  assert filled == [t for t in range(n) if t not in keys]
  for g in gaps:
    gap = set(range(g.start, g.end))
    assert g.forward or g.backward
    for p in (g.forward, g.backward):
      if p is not None:
        assert set(engine.pass_frames(p)) == gap and p.key in keys
    if g.start == 0 and keys[0] > 0:
      assert g.forward is None and g.backward.key == keys[0]
    elif g.end == n and keys[-1] < n - 1:
      assert g.backward is None and g.forward.key == keys[-1]
    else:
      assert g.forward.key == g.start - 1 and g.backward.key == g.end
  with pytest.raises(engine.AnnotationError, match="no key frames"):
    engine.plan_gaps([], 5)


def test_copy_nearest_baseline():
  assert [engine.nearest_key(t, [0, 4, 8]) for t in range(9)] == [0, 0, 0, 4, 4, 4, 4, 8, 8]


def test_key_frame_list():
  assert engine.key_frame_list(10, every=4) == [0, 4, 8, 9]
  assert engine.key_frame_list(10, frames="7,0, 3") == [0, 3, 7]
  for kw, msg in (({}, "exactly one"), ({"frames": "0,10"}, "out of range")):
    with pytest.raises(engine.AnnotationError, match=msg):
      engine.key_frame_list(10, **kw)


# ------------------------------------------------------------------------------ with the model
@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("engine")
  v = synthetic.generate_video(13, num_frames=T, height=64, width=64, num_objects=2, num_points=2)
  paths = write_held_out(str(root / "data"), [("vid", v)])
  keys = root / "keys_mask"
  keys.mkdir()
  for k in KEYS:
    shutil.copy(os.path.join(paths["gt_mask"], "Annotations", "vid", f"{k:05d}.png"), keys)
  b = v["boxes_xywh"][:, 0]
  (root / "keys_box.txt").write_text("".join(f"{k},{','.join(map(str, b[k]))}\n" for k in KEYS))
  return {"root": root, "video": v, "paths": paths, "vdir": paths["videos"][0][1]}


def _keys(task, data):
  hw = (64, 64)
  if task == "mask":
    return engine.read_mask_keys(
      str(data["root"] / "keys_mask"), [f"{t:05d}.jpg" for t in range(T)], hw
    )
  if task == "box":
    return engine.read_box_keys(str(data["root"] / "keys_box.txt"), T, hw)
  return engine.read_point_keys(os.path.join(data["paths"]["gt_point"], "vid.npz"), T, hw, KEYS)


class FakePredictor:
  """A stand-in for VideoPredictor (no model, no compile): each pass repeats its prompt on every
  frame it tracks, with object score +5, predicted IoU 0.5, and records what it tracked."""

  def __init__(self, *args, **_):  # FakePredictor(task) or VideoPredictor's (model, params, task)
    self.task = args[-1]
    self.model = types.SimpleNamespace(
      config=types.SimpleNamespace(point_gaussian_radius=5, point_gaussian_sigma=2.0)
    )
    self.passes = []  # (key frame, reverse, [frames yielded])

  def init_state(self, frames):
    return types.SimpleNamespace(video_hw=frames.shape[1:3], num_frames=len(frames), prompts={})

  def reset_state(self, state):
    state.prompts.clear()

  def add_new_mask(self, state, f, obj_id, mask):
    state.prompts[obj_id] = (f, np.where(mask, 1.0, -1.0))

  def add_new_points_or_box(self, state, f, obj_id, box):
    state.prompts[obj_id] = (f, np.asarray(box, np.float32))

  def add_new_points_and_generate_gaussian_mask(self, state, f, obj_id, points, labels, **_):
    state.prompts[obj_id] = (f, np.asarray(points, np.float32)[0])

  def propagate_in_video(self, state, start_frame_idx, max_frame_num_to_track, reverse, **_):
    k, n = start_frame_idx, max_frame_num_to_track
    frames = range(k, max(k - n, 0) - 1, -1) if reverse else range(k, min(k + n, T - 1) + 1)
    self.passes.append((k, reverse, list(frames)))
    ids = list(state.prompts)
    values = np.stack([state.prompts[o][1] for o in ids])
    info = {"object_score_logits": np.full(len(ids), 5.0, np.float32)}
    if self.task == "box":
      info["boxes_xyxy"] = values
    if self.task == "point":
      info["points_xy"] = values
    masks = values if self.task == "mask" else np.zeros((len(ids),) + state.video_hw)
    for f in frames:
      yield f, ids, masks, info

  def frame_output(self, state, f, obj_id):
    return {"iou": np.float32(0.5)}


def test_passes_track_each_gap_both_ways_from_its_own_key_frame(data):
  keys = _keys("mask", data)
  pred = FakePredictor("mask")
  rows = list(engine.fill_video(pred, pred.init_state(data["video"]["frames"]), keys))
  assert [t for t, _ in rows] == list(range(T))
  assert pred.passes == [
    (1, True, [1, 0]),
    (1, False, [1, 2]),
    (3, True, [3, 2]),
    (4, False, [4, 5]),
  ]
  for t, r in rows:  # the fake repeats the key frame it was prompted on: nearest key's mask
    k = t if t in KEYS else {0: 1, 2: 1, 5: 4}[t]
    np.testing.assert_array_equal(r["nearest"], keys.annotations[k])


def test_a_key_frame_hiding_the_track_yields_to_the_confident_other_pass(data):
  xy0, xy5 = np.array([[10.0, 20.0]], np.float32), np.array([[30.0, 40.0]], np.float32)
  keys = engine.KeyFrames(
    "point", T, (0,), {0: (xy0, np.array([True])), 5: (xy5, np.array([False]))}
  )
  pred = FakePredictor("point")
  rows = dict(engine.fill_video(pred, pred.init_state(data["video"]["frames"]), keys))
  assert [(k, rev) for k, rev, _ in pred.passes] == [(0, False)]  # frame 5 prompts nothing
  for t in range(1, 5):  # frames 3, 4 are nearer frame 5, which has no opinion: forward kept
    np.testing.assert_array_equal(rows[t]["nearest"][0], xy0)
    assert rows[t]["nearest"][1].tolist() == [True]
  np.testing.assert_array_equal(rows[5]["nearest"][0], xy5)
  assert rows[5]["nearest"][1].tolist() == [False]


@pytest.mark.parametrize("task", ["mask", "box", "point"])
def test_cli_keeps_key_frames_and_the_scorer_reads_the_output(task, data, tmp_path, monkeypatch):
  monkeypatch.setattr(annotate, "VideoPredictor", FakePredictor)
  monkeypatch.setattr(annotate, "load_model", lambda d: (None, None))
  monkeypatch.setattr(annotate, "build_model", lambda c: None)
  spec = {
    "mask": [str(data["root"] / "keys_mask")],
    "box": [str(data["root"] / "keys_box.txt")],
    "point": [os.path.join(data["paths"]["gt_point"], "vid.npz"), "--key-frames", "1,3,4"],
  }[task]
  out = str(tmp_path / "out")
  argv = ["--checkpoint", CKPT, "--video", data["vdir"], "--task", task, "--out", out, "--quiet"]
  assert annotate.main(argv + ["--keyframes"] + spec + ["--fuse", "score"]) == 0
  keys = _keys(task, data)
  v = data["video"]
  for k in KEYS:
    if task == "mask":
      got, _ = read_palette_png(os.path.join(out, "vid", f"{k:05d}.png"))
      np.testing.assert_array_equal(got, v["masks"][k])
    elif task == "box":
      got = np.loadtxt(os.path.join(out, "vid.txt"), dtype=int)[k]
      np.testing.assert_array_equal(got, np.trunc(v["boxes_xywh"][k, 0]).astype(int))
    else:
      z = np.load(os.path.join(out, "vid.npz"))
      np.testing.assert_array_equal(z["trajs_2d"][k], keys.annotations[k][0])
      np.testing.assert_array_equal(z["visibs"][k], keys.annotations[k][1])
  r = score(task, None, data["paths"][f"gt_{task}"], out)
  key = {"mask": "J&F-Mean", "box": "AUC", "point": "average_pts_within_thresh"}[task]
  assert np.isfinite(r["overall"][key])


def test_cli_mask_with_the_shipped_checkpoint(data, tmp_path, capsys):
  out = tmp_path / "out"
  argv = ["--checkpoint", CKPT, "--video", data["vdir"], "--task", "mask", "--quiet"]
  rc = annotate.main(argv + ["--keyframes", str(data["root"] / "keys_mask"), "--out", str(out)])
  assert rc == 0, capsys.readouterr().err
  pngs = sorted(os.listdir(out / "vid"))
  assert pngs == [f"{t:05d}.png" for t in range(T)]
  for k in KEYS:
    got, _ = read_palette_png(str(out / "vid" / f"{k:05d}.png"))
    np.testing.assert_array_equal(got, data["video"]["masks"][k])
  assert np.isfinite(
    score("mask", "davis2017", data["paths"]["gt_mask"], str(out))["overall"]["J&F-Mean"]
  )


# ------------------------------------------------------------------------------ bad inputs
def _bad(data, tmp_path, capsys, task, keyframes, *extra, video=None):
  out = tmp_path / "never"
  argv = ["--checkpoint", CKPT, "--video", video or data["vdir"], "--task", task]
  rc = annotate.main(argv + ["--keyframes", str(keyframes), "--out", str(out), "--quiet", *extra])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and not out.exists()
  assert err.startswith("annotate.py: error: ") and "\n" not in err and "Traceback" not in err
  return err


def test_cli_missing_video(data, tmp_path, capsys):
  err = _bad(data, tmp_path, capsys, "mask", data["root"] / "keys_mask", video="/nope/vid")
  assert "does not exist" in err and "/nope/vid" in err


def test_cli_box_frame_out_of_range(data, tmp_path, capsys):
  f = tmp_path / "boxes.txt"
  f.write_text("0,10,10,20,20\n\n40,10,10,20,20\n")
  err = _bad(data, tmp_path, capsys, "box", f)
  assert f"{f}:3" in err and "frame 40 is out of range" in err and f"0..{T - 1}" in err


def test_cli_box_not_numbers(data, tmp_path, capsys):
  f = tmp_path / "boxes.txt"
  f.write_text("0,10,10,twenty,20\n")
  assert "frame,x,y,w,h" in _bad(data, tmp_path, capsys, "box", f)


def test_cli_empty_mask_png(data, tmp_path, capsys):
  d = tmp_path / "keys"
  d.mkdir()
  save_palette_png(str(d / "00003.png"), np.zeros((64, 64), np.uint8))
  err = _bad(data, tmp_path, capsys, "mask", d)
  assert "00003.png" in err and "empty" in err


def test_cli_mask_png_matching_no_frame(data, tmp_path, capsys):
  d = tmp_path / "keys"
  d.mkdir()
  save_palette_png(str(d / "00042.png"), np.ones((64, 64), np.uint8))
  assert "matches no frame" in _bad(data, tmp_path, capsys, "mask", d)


def test_cli_no_key_frames(data, tmp_path, capsys):
  d = tmp_path / "keys"
  d.mkdir()
  assert "no key frames" in _bad(data, tmp_path, capsys, "mask", d)
  f = tmp_path / "boxes.txt"
  f.write_text("# nothing yet\n")
  assert "no key frames" in _bad(data, tmp_path, capsys, "box", f)


def test_cli_point_needs_a_key_frame_choice(data, tmp_path, capsys):
  npz = os.path.join(data["paths"]["gt_point"], "vid.npz")
  assert "--key-every" in _bad(data, tmp_path, capsys, "point", npz)
  assert "out of range" in _bad(data, tmp_path, capsys, "point", npz, "--key-frames", "0,99")


def test_cli_unknown_task(data, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    annotate.main(["--checkpoint", CKPT, "--video", data["vdir"], "--task", "polygon"] + [
      "--keyframes", "k", "--out", str(tmp_path / "never")
    ])  # fmt: skip
  assert e.value.code == 2 and "invalid choice: 'polygon'" in capsys.readouterr().err
  assert not (tmp_path / "never").exists()
