"""Interactive VideoPredictor: end-to-end parity, equality with the scan tracker, objects as a
batch, reverse tracking, corrections and the user-facing errors."""

import numpy as np
import pytest
from conftest import assert_rows_ok, e2e_rows, tiny_with_objects_present

from sam2pp_jax.tracking.memory import Samurai
from sam2pp_jax.tracking.predictor import VideoPredictor
from sam2pp_jax.tracking.propagate import track_video


@pytest.mark.parametrize("task", ["mask", "box", "point"])
def test_predictor_parity(task):
  """Every outputs/* array but the bf16 memory meets the end-to-end rules."""
  assert_rows_ok(e2e_rows("predictor", task), bf16_memory=False)


@pytest.mark.parametrize("task", ["mask", "box", "point"])
def test_predictor_parity_bf16_memory(task):
  assert_rows_ok(e2e_rows("predictor", task), bf16_memory=True)


# -- tiny random-weight model --------------------------------------------------------------------
HW = (48, 64)
T = 6


@pytest.fixture(scope="module")
def tiny():
  model, params = tiny_with_objects_present()
  frames = (
    np.random.default_rng(3)
    .standard_normal((T, model.config.image_size, model.config.image_size, 3))
    .astype(np.float32)
  )
  return model, params, frames


_PREDICTORS = {}


def _pred(tiny, task):
  """One predictor per task for the module (its jitted steps are reused across tests)."""
  if task not in _PREDICTORS:
    _PREDICTORS[task] = VideoPredictor(tiny[0], tiny[1], task, encode_chunk=2)
  return _PREDICTORS[task]


def _masks():
  m = np.zeros((2,) + HW, bool)
  m[0, 10:30, 20:44] = True
  m[1, 4:20, 2:30] = True
  return m


BOXES = np.array([[20, 10, 44, 30], [2, 4, 30, 20]], np.float32)
POINTS = np.array([[30.5, 21.2], [12.3, 9.7]], np.float32)


def _prompt(pred, state, task, frame, obj_id, k):
  """Object k's standard prompt on `frame`."""
  if task == "mask":
    return pred.add_new_mask(state, frame, obj_id, _masks()[k])
  if task == "box":
    return pred.add_new_points_or_box(state, frame, obj_id, box=BOXES[k])
  return pred.add_new_points_and_generate_gaussian_mask(
    state, frame, obj_id, POINTS[k : k + 1], [1]
  )


def _run(pred, frames, task, objs=(0,), frame=0, reverse=False):
  state = pred.init_state(frames, video_hw=HW)
  for k in objs:
    _prompt(pred, state, task, frame, 10 + k, k)
  got = {
    f: (m, i) for f, _, m, i in pred.propagate_in_video(state, reverse=reverse, with_info=True)
  }
  return state, got


def _per_frame(pred, state, obj_id, key):
  """One object's stored `key` on every frame, stacked [T,...]."""
  return np.stack([pred.frame_output(state, f, obj_id)[key] for f in range(T)])


def _close(a, b, tol=2e-4):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape
  err = float(np.max(np.abs(a - b))) if a.size else 0.0
  assert err <= tol * max(1.0, float(np.max(np.abs(b)))), err


_SLOW = pytest.mark.slow  # each task compiles its own scan tracker (~20 s on 2 CPU cores)


@pytest.mark.parametrize(
  "task", ["mask", pytest.param("box", marks=_SLOW), pytest.param("point", marks=_SLOW)]
)
def test_predictor_equals_scan(tiny, task):
  """Two objects prompted on frame 0: the predictor's outputs == the lax.scan tracker's (tiny
  config: 3 memories and 4 pointers, fewer than the 6 frames, so the rings wrap)."""
  model, params, frames = tiny
  pred = _pred(tiny, task)
  state, got = _run(pred, frames, task, objs=(0, 1))
  assert sorted(got) == list(range(T))
  prompt = {
    "mask": {"mask": _masks()},
    "box": {"box_xyxy": BOXES},
    "point": {"points_xy": POINTS[:, None], "point_labels": np.ones((2, 1))},
  }[task]
  ref = track_video(model, params, frames, HW, task, prompt, chunk=2)
  masks = np.stack([got[f][0] for f in range(T)])
  _close(masks, ref["video_res_mask_logits"])
  scores = np.stack([got[f][1]["object_score_logits"] for f in range(T)])
  _close(scores, ref["object_score_logits"])
  for k in (0, 1):
    ptr = _per_frame(pred, state, 10 + k, "obj_ptr")
    _close(ptr, ref["obj_ptr"][:, k])
    mem = _per_frame(pred, state, 10 + k, "maskmem")
    d = np.abs(mem - ref["maskmem_features_bf16"][:, k])
    assert np.count_nonzero(d) <= 1e-3 * d.size  # rare one-ulp bf16 flips only
  if task == "box":
    boxes = np.stack([got[f][1]["boxes_xyxy"] for f in range(T)])
    assert np.all(np.isfinite(boxes))
    _close(boxes, ref["pred_box_xyxy"], 1e-4)
  if task == "point":
    pts = np.stack([got[f][1]["points_xy"] for f in range(T)])
    np.testing.assert_array_equal(pts, ref["point_xy"])


@_SLOW
def test_soft_point_readout_predictor_equals_scan(tiny):
  """point_readout="soft_argmax" reaches both trackers: the same sub-pixel float points."""
  model, params, frames = tiny
  pred = VideoPredictor(model, params, "point", encode_chunk=2, point_readout="soft_argmax")
  _, got = _run(pred, frames, "point", objs=(0, 1))
  ref = track_video(
    model,
    params,
    frames,
    HW,
    "point",
    {"points_xy": POINTS[:, None], "point_labels": np.ones((2, 1))},
    chunk=2,
    point_readout="soft_argmax",
  )
  pts = np.stack([got[f][1]["points_xy"] for f in range(T)])
  assert pts.dtype == np.float32 and not np.array_equal(pts, np.round(pts))
  _close(pts, ref["point_xy"], 1e-4)


def test_two_objects_equal_each_alone(tiny):
  _, _, frames = tiny
  pred = _pred(tiny, "mask")
  _, both = _run(pred, frames, "mask", objs=(0, 1))
  for k in (0, 1):
    _, alone = _run(pred, frames, "mask", objs=(k,))
    for f in range(T):
      _close(both[f][0][k], alone[f][0][0])
      _close(both[f][1]["object_score_logits"][k], alone[f][1]["object_score_logits"][0])


def test_objects_prompted_on_different_frames(tiny):
  """Objects with different memory layouts run in separate groups; each equals its own run."""
  _, _, frames = tiny
  pred = _pred(tiny, "mask")
  state = pred.init_state(frames, video_hw=HW)
  pred.add_new_mask(state, 0, "a", _masks()[0])
  pred.add_new_mask(state, 2, "b", _masks()[1])
  got = {f: m for f, ids, m in pred.propagate_in_video(state)}
  assert sorted(got) == list(range(T))
  for k, (obj, frame) in enumerate((("a", 0), ("b", 2))):
    # alone, from frame 0 as well (b is tracked on frames 0-1 from its future prompt's memory)
    s2 = pred.init_state(frames, video_hw=HW)
    pred.add_new_mask(s2, frame, obj, _masks()[k])
    alone = {f: m for f, _, m in pred.propagate_in_video(s2, start_frame_idx=0)}
    for f in range(T):
      _close(got[f][k], alone[f][0])


def test_reverse_equals_forward_on_reversed_prefix(tiny):
  """Reverse from frame k == forward from frame 0 of frames[k::-1] (same pointer normaliser:
  min(T, max_obj_ptrs) is the same for both lengths here)."""
  model, params, frames = tiny
  k = 4
  assert min(T, model.config.max_obj_ptrs_in_encoder) == min(
    k + 1, model.config.max_obj_ptrs_in_encoder
  )
  pred = _pred(tiny, "mask")
  state, rev = _run(pred, frames, "mask", frame=k, reverse=True)
  assert sorted(rev) == list(range(k + 1))
  _, fwd = _run(pred, frames[k::-1].copy(), "mask", frame=0)
  for f in range(k + 1):
    _close(rev[f][0], fwd[k - f][0], 1e-3)
    _close(rev[f][1]["object_score_logits"], fwd[k - f][1]["object_score_logits"], 1e-3)
  assert all(state.objects[0].tracked[f] is True for f in range(k + 1))
  # reverse from frame 0 tracks nothing; forward from k covers k..T-1
  assert list(pred.propagate_in_video(state, start_frame_idx=0, reverse=True)) == []
  assert [f for f, *_ in pred.propagate_in_video(state)] == list(range(k, T))


@pytest.mark.parametrize("memory", ["sam2", pytest.param("samurai", marks=_SLOW)])
def test_correction_click_changes_frame(tiny, memory):
  model, params, frames = tiny
  pred = (
    _pred(tiny, "mask")
    if memory == "sam2"
    else VideoPredictor(model, params, "mask", encode_chunk=2, memory=memory)
  )
  state, got = _run(pred, frames, "mask")
  before = got[3][0][0]
  f, ids, after = pred.add_new_points_or_box(state, 3, 10, points=[[40.0, 20.0]], labels=[0])
  assert f == 3 and ids == [10]
  assert np.max(np.abs(after[0] - before)) > 1e-3
  assert pred.frame_output(state, 3, 10)["is_cond"] is False
  # a second click on the same frame builds on the first (previous logits as mask input)
  _, _, again = pred.add_new_points_or_box(
    state, 3, 10, points=[[10.0, 10.0]], labels=[1], clear_old_points=False
  )
  assert np.max(np.abs(again[0] - after[0])) > 1e-3
  # propagation from the corrected frame uses its memory and runs
  out = [f for f, *_ in pred.propagate_in_video(state, start_frame_idx=3, max_frame_num_to_track=2)]
  assert out == [3, 4, 5]


def test_box_plus_click_on_init_frame(tiny):
  _, _, frames = tiny
  pred = _pred(tiny, "box")
  state = pred.init_state(frames, video_hw=HW)
  _, _, m_box = pred.add_new_points_or_box(state, 1, 10, box=BOXES[0])
  _, _, m_both = pred.add_new_points_or_box(
    state, 1, 10, points=[[30, 20]], labels=[1], clear_old_points=False
  )
  assert np.max(np.abs(m_box - m_both)) > 1e-3
  coords, labels = state.objects[0].point_inputs[1]
  assert labels.tolist() == [2, 3, 1] and coords.shape == (3, 2)


def test_remove_and_reset(tiny):
  _, _, frames = tiny
  pred = _pred(tiny, "mask")
  state = pred.init_state(frames, video_hw=HW)
  pred.add_new_mask(state, 0, 1, _masks()[0])
  _, ids, masks = pred.add_new_mask(state, 0, 2, _masks()[1])
  assert ids == [1, 2] and masks.shape == (2,) + HW
  ids, updated = pred.remove_object(state, 1)
  assert ids == [2] and [f for f, _ in updated] == [0] and updated[0][1].shape == (1,) + HW
  assert [ids for _, ids, _ in pred.propagate_in_video(state, max_frame_num_to_track=1)] == [
    [2],
    [2],
  ]
  assert pred.remove_object(state, 99, strict=False) == ([2], [])
  pred.reset_state(state)
  assert state.obj_ids == []
  with pytest.raises(ValueError, match="no object"):
    next(pred.propagate_in_video(state))


def test_errors(tiny):
  _, _, frames = tiny
  mp, bp, pp = _pred(tiny, "mask"), _pred(tiny, "box"), _pred(tiny, "point")
  s = mp.init_state(frames, video_hw=HW)
  sb = bp.init_state(frames, video_hw=HW)
  sp = pp.init_state(frames, video_hw=HW)
  with pytest.raises(ValueError, match="obj_id"):
    mp.remove_object(s, 7)
  with pytest.raises(ValueError, match="frame_idx"):
    mp.add_new_mask(s, T, 1, _masks()[0])
  with pytest.raises(ValueError, match="frame_idx"):
    bp.add_new_points_or_box(sb, -1, 1, box=BOXES[0])
  with pytest.raises(ValueError, match="empty"):
    mp.add_new_mask(s, 0, 1, np.zeros(HW, bool))
  with pytest.raises(ValueError, match="mask"):
    mp.add_new_mask(s, 0, 1, np.ones((10, 10), bool))
  with pytest.raises(ValueError, match="outside"):
    bp.add_new_points_or_box(sb, 0, 1, points=[[HW[1] + 5, 3]], labels=[1])
  with pytest.raises(ValueError, match="outside"):
    bp.add_new_points_or_box(sb, 0, 1, box=[0, 0, HW[1] + 1, 10])
  with pytest.raises(ValueError, match="x1 > x0"):
    bp.add_new_points_or_box(sb, 0, 1, box=[30, 5, 30, 20])
  with pytest.raises(ValueError, match="y1 > y0"):
    bp.add_new_points_or_box(sb, 0, 1, box=[10, 25, 30, 20])
  with pytest.raises(ValueError, match="labels"):
    bp.add_new_points_or_box(sb, 0, 1, points=[[3, 3], [4, 4]], labels=[1])
  with pytest.raises(ValueError, match="together"):
    bp.add_new_points_or_box(sb, 0, 1, points=[[3, 3]])
  with pytest.raises(ValueError, match="clear_old_points"):
    bp.add_new_points_or_box(sb, 0, 1, box=BOXES[0], clear_old_points=False)
  with pytest.raises(ValueError, match="point task"):
    pp.add_new_points_or_box(sp, 0, 1, points=[[3, 3]], labels=[1])
  with pytest.raises(ValueError, match="exactly one point"):
    pp.add_new_points_and_generate_gaussian_mask(sp, 0, 1, [[3, 3], [5, 5]], [1, 1])
  with pytest.raises(ValueError, match="point task"):
    mp.add_new_points_and_generate_gaussian_mask(s, 0, 1, [[3, 3]], [1])
  with pytest.raises(ValueError, match="no object"):
    next(mp.propagate_in_video(s))
  with pytest.raises(ValueError, match="video_hw"):
    mp.init_state(frames)
  # a failed call leaves no half-registered object behind
  assert s.obj_ids == [] and sb.obj_ids == [] and sp.obj_ids == []


# 0.0 (every frame admitted, ~15 s) in CI's slow stage; 0.5 exercises the gate by default
@pytest.mark.parametrize("iou_threshold", [pytest.param(0.0, marks=pytest.mark.slow), 0.5])
def test_samurai_predictor_equals_scan(tiny, iou_threshold):
  """The SAMURAI policy in the predictor (host-side read of the original's search, per-object
  Kalman state on the host) == in the lax.scan tracker (gated ring, state in the bank)."""
  model, params, frames = tiny
  policy = Samurai(stable_frames_threshold=2, memory_bank_iou_threshold=iou_threshold)
  pred = VideoPredictor(model, params, "mask", encode_chunk=2, memory=policy)
  state, got = _run(pred, frames, "mask", objs=(0, 1))
  ref = track_video(
    model,
    params,
    frames,
    HW,
    "mask",
    {"mask": _masks()},
    chunk=2,
    memory=policy,
    return_bank=True,
  )
  masks = np.stack([got[f][0] for f in range(T)])
  _close(masks, ref["video_res_mask_logits"])
  for k in (0, 1):
    ptr = _per_frame(pred, state, 10 + k, "obj_ptr")
    _close(ptr, ref["obj_ptr"][:, k])
    kf = ref["bank"].policy_state
    np.testing.assert_array_equal(state.objects[k].policy_state.stable, kf.stable[k : k + 1])
    np.testing.assert_allclose(
      state.objects[k].policy_state.mean, kf.mean[k : k + 1], rtol=1e-4, atol=1e-3
    )


def test_path_session_is_lazy_and_equal(tiny, tmp_path):
  """A frame-folder session keeps frames on disk (a ModelFrames view, nothing preprocessed up
  front) and tracks exactly like the same frames given in memory."""
  import cv2

  from sam2pp_jax.io.video import ModelFrames, load_video

  rng = np.random.default_rng(5)
  for t in range(T):
    cv2.imwrite(str(tmp_path / f"{t:05d}.png"), rng.integers(0, 256, HW + (3,), np.uint8))
  pred = _pred(tiny, "mask")
  lazy = pred.init_state(str(tmp_path))
  assert isinstance(lazy.images, ModelFrames)
  assert len(lazy.cached_features) == pred.encode_chunk < T  # only the warm-up chunk
  eager = pred.init_state(load_video(tmp_path).frames)
  outs = []
  for state in (lazy, eager):
    pred.add_new_mask(state, 0, 1, _masks()[0])
    outs.append(np.stack([m for _, _, m in pred.propagate_in_video(state)]))
  np.testing.assert_array_equal(outs[0], outs[1])
