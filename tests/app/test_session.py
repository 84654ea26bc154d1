"""The app's UI-free core (`sam2pp_jax.app.session.Session`) on checkpoints/tiny and a small
synthetic JPEG video: prompts, propagation, corrections, errors, on-disk restore and the export
zip scored by `eval.score`."""

import contextlib
import json
import pathlib
import threading
import zipfile

import cv2
import jax
import numpy as np
import pytest

from sam2pp_jax.app.session import AppError, Session
from sam2pp_jax.data import synthetic
from sam2pp_jax.demo import write_held_out
from sam2pp_jax.eval.score import score

ROOT = pathlib.Path(__file__).resolve().parents[2]
CKPT = str(ROOT / "checkpoints" / "tiny")
T, H, W = 6, 64, 96
NAME = "synth0"
SEED = 25  # a scene where one click at the object's centre gives checkpoints/tiny a mask


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
  """These tests check code paths, not speed: most XLA optimisations off (compiles ~30% faster),
  restored for the other test modules."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("app"))
  v = synthetic.generate_video(SEED, num_frames=T, height=H, width=W, num_objects=1, num_points=1)
  paths = write_held_out(root, [(NAME, v)])
  return {"root": root, "video": v, "paths": paths, "dir": paths["videos"][0][1]}


def _centre(v, t=0):
  """The pixel of object 1 farthest from its border on frame t (x, y)."""
  m = (v["masks"][t] == 1).astype(np.uint8)
  d = cv2.distanceTransform(m, cv2.DIST_L2, 5)
  y, x = np.unravel_index(np.argmax(d), d.shape)
  return int(x), int(y)


def _box(v, t=0):
  x, y, w, h = (float(a) for a in v["boxes_xywh"][t, 0])
  return x, y, x + w, y + h


def _extract(zip_path, dest):
  with zipfile.ZipFile(zip_path) as z:
    z.extractall(dest)
    return set(z.namelist())


@pytest.fixture(scope="module")
def mask_session(data, tmp_path_factory):
  """A mask session: one click on frame 0, then propagated both ways."""
  sd = str(tmp_path_factory.mktemp("sess_mask"))
  s = Session.open(CKPT, data["dir"], sd, task="mask", memory="sam2", warmup=False)
  obj = s.new_object()
  assert obj == 1
  img = s.add_click(0, obj, *_centre(data["video"]), positive=True)
  assert img.shape == (H, W, 3) and img.dtype == np.uint8
  seen = []
  s.propagate(progress=lambda done, total: seen.append((done, total)))
  return s, sd, seen


def test_click_gives_mask_and_propagation_covers_video(data, mask_session):
  s, _, seen = mask_session
  assert s.num_frames == T and s.video_hw == (H, W) and s.obj_ids == [1]
  ids0 = s.result(0)["ids"]
  gt0 = data["video"]["masks"][0] == 1
  assert (ids0 == 1).sum() > 0 and ((ids0 == 1) & gt0).sum() > 0
  assert all(s.result(t)["ids"] is not None for t in range(T))
  assert seen[0] == (0, seen[0][1]) and seen[-1][0] == seen[-1][1] > 0
  assert s.propagated and "propagated" in s.status()
  assert np.any(s.render(0) != s.frame_rgb(0))  # overlay + click markers drawn


def test_restore_after_reopen(data, mask_session):
  s, sd, _ = mask_session
  s2 = Session.open(CKPT, data["dir"], sd, warmup=False)  # a page reload: new object, same folder
  assert s2.obj_ids == s.obj_ids and s2.task == "mask" and s2.propagated
  assert s2.prompts(0) == s.prompts(0) and len(s2.prompts(0)) == 1
  for t in range(T):
    np.testing.assert_array_equal(s2.result(t)["ids"], s.result(t)["ids"])
  doc = json.loads(pathlib.Path(sd, "session.json").read_text())
  assert doc["video"]["num_frames"] == T and {e["op"] for e in doc["events"]} == {"click"}


def test_export_mask_zip_scores(data, mask_session, tmp_path):
  s, _, _ = mask_session
  z = s.export_zip(str(tmp_path / "out.zip"))
  names = _extract(z, tmp_path / "x")
  assert f"masks/{NAME}/00000.png" in names and "overlay.mp4" in names
  rep = score("mask", "davis2017", data["paths"]["gt_mask"], str(tmp_path / "x" / "masks"))
  assert np.isfinite(rep["overall"]["J&F-Mean"])


def test_correction_then_repropagate(data, tmp_path):
  s = Session.open(CKPT, data["dir"], str(tmp_path / "s"), task="mask", warmup=False)
  s.add_mask(0, s.new_object(), data["video"]["masks"][0] == 1)
  refused = []

  def progress(done, total):  # a click while propagating is refused at once, nothing changes
    if not refused:
      with pytest.raises(AppError, match="propagate is still running"):
        s.add_click(0, 1, 5, 5)
      refused.append(done)

  s.propagate(direction="forward", progress=progress)
  assert refused and len(s.prompts(0)) == 1
  before = [s.result(t)["ids"].copy() for t in range(T)]
  k = 3
  s.add_click(k, 1, *_centre(data["video"], k), positive=False)  # a correction on frame k
  corrected = s.result(k)["ids"].copy()
  assert not np.array_equal(corrected, before[k])
  s.propagate(start=k, direction="forward")
  after = [s.result(t)["ids"] for t in range(T)]
  np.testing.assert_array_equal(after[k], corrected)  # the corrected frame is kept
  for t in range(k):
    np.testing.assert_array_equal(after[t], before[t])
  assert any(not np.array_equal(after[t], before[t]) for t in range(k, T))
  # remove the object: no results, no objects
  s.remove_object(1)
  assert s.obj_ids == [] and all(not np.any(s.result(t)["ids"]) for t in range(T))


def test_errors_are_app_errors(data, tmp_path):
  sd = str(tmp_path / "s")
  with pytest.raises(AppError, match="does not exist"):
    Session.open(CKPT, str(tmp_path / "missing.mp4"), sd, warmup=False)
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  with pytest.raises(AppError, match="cannot open video"):
    Session.open(CKPT, str(bad), sd, warmup=False)
  s = Session.open(CKPT, data["dir"], sd, warmup=False)
  with pytest.raises(AppError, match="nothing to propagate"):
    s.propagate()
  with pytest.raises(AppError, match="outside the 96x64 frame"):
    s.add_click(0, s.new_object(), 200, 10)
  with pytest.raises(AppError, match="frame 99 is outside the video"):
    s.add_click(99, 1, 10, 10)
  with pytest.raises(AppError, match="empty"):
    s.add_mask(0, 1, np.zeros((H, W), bool))
  with pytest.raises(AppError, match="object id 7 is unknown"):
    s.remove_object(7)
  with pytest.raises(AppError, match="no prompt on frame"):
    s.add_mask(0, 1, data["video"]["masks"][0] == 1)
    s.clear_frame_prompts(3, 1)
  with pytest.raises(AppError, match="task 'blob' is unknown"):
    s.set_task("blob")
  other = tmp_path / "other"
  other.mkdir()
  (other / "00000.jpg").write_bytes((pathlib.Path(data["dir"]) / "00000.jpg").read_bytes())
  with pytest.raises(AppError, match="another video"):
    Session.open(CKPT, str(other), sd, warmup=False)
  # a failed prompt leaves the session as it was
  assert s.obj_ids == [1] and len(s.prompts(0)) == 1
  s.clear_frame_prompts(0, 1)
  assert s.obj_ids == [] and s.prompts(0) == []


def test_box_task_exports_got10k(data, tmp_path):
  s = Session.open(CKPT, data["dir"], str(tmp_path / "s"), task="box", warmup=False)
  s.add_box(0, s.new_object(), *_box(data["video"]))
  s.propagate()
  assert all(1 in s.result(t)["boxes"] for t in range(T))
  z = s.export_zip(str(tmp_path / "b.zip"))
  names = _extract(z, tmp_path / "x")
  assert f"boxes/{NAME}.txt" in names
  rep = score("box", "ope", data["paths"]["gt_box"], str(tmp_path / "x" / "boxes"))
  assert all(np.isfinite(v) for v in rep["overall"].values() if isinstance(v, float))


def test_point_task_exports_tapvid(data, tmp_path):
  s = Session.open(CKPT, data["dir"], str(tmp_path / "s"), task="point", warmup=False)
  x, y = (float(a) for a in data["video"]["points_xy"][0, 0, 0])
  with pytest.raises(AppError, match="positive clicks only"):
    s.add_click(0, 1, x, y, positive=False)
  s.add_click(0, s.new_object(), x, y)
  s.propagate()
  assert all(1 in s.result(t)["points"] for t in range(T))
  s.render(T - 1)  # trail drawing
  z = s.export_zip(str(tmp_path / "p.zip"))
  _extract(z, tmp_path / "x")
  got = np.load(tmp_path / "x" / "points" / f"{NAME}.npz")
  assert got["trajs_2d"].shape == (T, 1, 2)
  rep = score("point", "tapvid", data["paths"]["gt_point"], str(tmp_path / "x" / "points"))
  assert "overall" in rep


@contextlib.contextmanager
def _compiles_here():
  """The XLA compiles made by this thread while inside (the warm-up thread's are not counted)."""
  me, seen = threading.get_ident(), []

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration" and threading.get_ident() == me:
      seen.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def _scripted(s, v, compiles=None):
  """Two clicks on frame 0 (the second with the first's mask as dense prompt), a propagation, a
  two-click correction and a new object. compiles: {step: XLA compiles of this thread} filled
  in. Returns every frame's result and tracks.json."""
  x, y = _centre(v)
  cx, cy = _centre(v, 2)
  obj = s.new_object()
  steps = [
    ("click", lambda: s.add_click(0, obj, x, y)),
    ("2nd click", lambda: s.add_click(0, obj, x + 3, y, positive=False)),
    ("propagate", lambda: s.propagate(direction="forward")),
    ("correction", lambda: s.add_click(2, obj, cx, cy, positive=False)),
    ("2nd correction click", lambda: s.add_click(2, obj, cx + 2, cy)),
    ("new object", lambda: s.add_click(3, s.new_object(), 5, 5)),
  ]
  for name, fn in steps:
    s.wait_warm(60)  # a user thinks between clicks
    with _compiles_here() as seen:
      fn()
    if compiles is not None and name != "propagate":  # propagate: not warmed for all shapes
      compiles[name] = seen
  tracks = pathlib.Path(s.session_dir, "results", "tracks.json").read_text()
  return [s.result(t) for t in range(T)], json.loads(tracks)


def test_warmup_compiles_ahead_and_changes_nothing(data, tmp_path):
  """After the background warm-up, no click compiles (a 2-point click included), and the
  results equal those of a session without warm-up."""
  on = Session.open(CKPT, data["dir"], str(tmp_path / "on"), warmup=True, warmup_points=2)
  assert on.wait_warm(120) and on.warm_errors == []
  compiles = {}
  res_on, tracks_on = _scripted(on, data["video"], compiles)
  assert on.wait_warm(120) and on.warm_errors == []
  assert all(not c for c in compiles.values()), compiles
  off = Session.open(CKPT, data["dir"], str(tmp_path / "off"), warmup=False)
  res_off, tracks_off = _scripted(off, data["video"])
  assert off._warm_thread is None
  for a, b in zip(res_on, res_off):
    np.testing.assert_array_equal(a["ids"], b["ids"])
    assert a["boxes"] == b["boxes"] and a["points"] == b["points"]
  assert tracks_on == tracks_off
