"""Synthetic video generator: determinism, ground-truth consistency and that the hard cases really
occur."""

import dataclasses

import numpy as np
import pytest

from sam2pp_jax.data import synthetic as S

KEYS = {
  "frames": np.uint8,
  "masks": np.uint8,
  "amodal_masks": np.bool_,
  "occluder_mask": np.bool_,
  "boxes_xywh": np.float32,
  "visible": np.bool_,
  "points_xy": np.float32,
  "point_visible": np.bool_,
  "depth": np.int32,
  "distractor": np.int8,
}


@pytest.fixture(scope="module")
def videos():
  """20 default videos (normal difficulty, 1-3 objects)."""
  return list(S.generate_dataset(11, 20))


def _pixels(points, h, w):
  px = np.floor(points + 0.5).astype(np.int64)
  inside = (px[..., 0] >= 0) & (px[..., 0] < w) & (px[..., 1] >= 0) & (px[..., 1] < h)
  return px, inside


def test_same_seed_same_video_other_seed_other_video():
  a, b, c = S.generate_video(5), S.generate_video(5), S.generate_video(6)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert not np.array_equal(a["frames"], c["frames"])
  assert a["masks"].shape != c["masks"].shape or not np.array_equal(a["masks"], c["masks"])


def test_dataset_uses_spawned_seeds():
  names, vids = zip(*S.generate_dataset(3, 3, num_frames=4))
  assert names == ("synth3_00000", "synth3_00001", "synth3_00002")
  again = S.generate_video(S.video_seed(3, 1), num_frames=4)
  np.testing.assert_array_equal(vids[1]["frames"], again["frames"])
  seeds = {S.video_seed(s, i) for s in range(3) for i in range(50)}
  assert len(seeds) == 150
  other = next(S.generate_dataset(4, 1, num_frames=4))[1]
  assert not np.array_equal(vids[0]["frames"], other["frames"])
  assert list(S.generate_dataset(3, 0)) == []


@pytest.mark.parametrize(
  "kw,t,h,w,ks",
  [
    ({}, 24, 128, 128, (1, 2, 3)),
    (
      {"num_frames": 5, "height": 64, "width": 96, "num_objects": 2, "num_points": 3},
      5,
      64,
      96,
      (2,),
    ),
    ({"num_frames": 1, "height": 32, "width": 48, "num_objects": (1, 1)}, 1, 32, 48, (1,)),
  ],
)
def test_shapes_and_dtypes(kw, t, h, w, ks):
  v = S.generate_video(0, **kw)
  assert set(v) == set(KEYS)
  for k, dt in KEYS.items():
    assert v[k].dtype == dt, k
  k = v["depth"].shape[0]
  p = kw.get("num_points", 8)
  assert k in ks
  assert v["frames"].shape == (t, h, w, 3)
  assert v["masks"].shape == v["occluder_mask"].shape == (t, h, w)
  assert v["amodal_masks"].shape == (t, k, h, w)
  assert v["boxes_xywh"].shape == (t, k, 4) and v["visible"].shape == (t, k)
  assert v["points_xy"].shape == (t, k, p, 2) and v["point_visible"].shape == (t, k, p)
  assert v["masks"].max() <= k and sorted(v["depth"]) == list(range(k)) and v["distractor"][0] == 0


def test_boxes_and_visibility_follow_masks(videos):
  for _, v in videos:
    m, boxes = v["masks"], v["boxes_xywh"]
    t, k = v["visible"].shape
    for i in range(t):
      for j in range(k):
        ys, xs = np.nonzero(m[i] == j + 1)
        assert v["visible"][i, j] == (ys.size >= 16)
        if ys.size == 0:
          assert np.isnan(boxes[i, j]).all()
        else:
          want = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
          np.testing.assert_array_equal(boxes[i, j], want)


def test_depth_decides_what_is_visible(videos):
  for _, v in videos:
    am, m, depth = v["amodal_masks"], v["masks"], v["depth"]
    want = np.zeros_like(m)
    for j in np.argsort(depth):
      want[am[:, j]] = j + 1
    want[v["occluder_mask"]] = 0
    np.testing.assert_array_equal(m, want)


def test_point_visibility_follows_masks(videos):
  occluded = 0
  for _, v in videos:
    m, am, pts, pv = v["masks"], v["amodal_masks"], v["points_xy"], v["point_visible"]
    t, h, w = m.shape
    px, inside = _pixels(pts, h, w)
    assert not (pv & ~inside).any()
    for i, j, q in zip(*np.nonzero(inside)):
      x, y = px[i, j, q]
      if pv[i, j, q]:
        assert m[i, y, x] == j + 1
      else:  # invisible inside the frame: hidden by another object or the occluder
        assert am[i, j, y, x] and m[i, y, x] != j + 1
        occluded += 1
  assert occluded > 0


def test_points_move_with_the_texture():
  """Without noise and flicker the colour under a tracked point stays put; under a fixed pixel it
  does not."""
  d = dataclasses.replace(S.DIFFICULTIES["normal"], noise=0.0, illumination=0.0)
  tracked, fixed = [], []
  for seed in range(6):
    v = S.generate_video(seed, difficulty=d)
    f, pv = v["frames"].astype(np.int64), v["point_visible"]
    t, h, w = v["masks"].shape
    px = np.clip(_pixels(v["points_xy"], h, w)[0], 0, [w - 1, h - 1])
    c0 = f[0, px[0, ..., 1], px[0, ..., 0]]
    for i in range(1, t):
      tracked.extend(np.abs(f[i, px[i, ..., 1], px[i, ..., 0]] - c0).max(-1)[pv[i]])
      fixed.extend(np.abs(f[i, px[0, ..., 1], px[0, ..., 0]] - c0).max(-1)[pv[i]])
  assert np.median(tracked) <= 4 and np.mean(np.array(tracked) < 20) > 0.9
  assert np.median(fixed) > 20


def test_first_frame_is_promptable(videos):
  for _, v in videos:
    m = v["masks"][0]
    assert 0.05 <= (m == 1).mean() <= 0.25
    assert (m == 1).sum() >= 0.8 * v["amodal_masks"][0, 0].sum()
    assert v["visible"][0].all() and v["point_visible"][0].all()


def _reappears(vis):
  idx = np.flatnonzero(vis)
  return idx.size > 0 and not vis[idx[0] : idx[-1] + 1].all()


def test_hard_cases_occur(videos):
  seen = dict(reappear=0, full_bar=0, exit_return=0, obj_occludes_obj=0, same=0, similar=0, scale=0)
  same_gap, other_gap, speeds = [], [], []
  for _, v in videos:
    am, m, occ, vis = v["amodal_masks"], v["masks"], v["occluder_mask"], v["visible"]
    t, k = vis.shape
    area = am.reshape(t, k, -1).sum(-1)
    for j in range(k):
      seen["reappear"] += _reappears(vis[:, j])
      seen["exit_return"] += _reappears(area[:, j] > 0)
      seen["obj_occludes_obj"] += bool((am[:, j] & (m > 0) & (m != j + 1)).any())
      border = (
        am[:, j, 0].any(-1)
        | am[:, j, -1].any(-1)
        | am[:, j, :, 0].any(-1)
        | am[:, j, :, -1].any(-1)
      )
      whole = area[:, j][(area[:, j] > 0) & ~border]
      seen["scale"] += whole.size > 1 and whole.max() / whole.min() > 1.5
      c = np.array([np.argwhere(am[i, j]).mean(0) for i in range(t) if area[i, j] > 0])
      speeds.append(np.linalg.norm(np.diff(c, axis=0), axis=1).mean())
    seen["full_bar"] += any(area[i, 0] > 30 and not (am[i, 0] & ~occ[i]).any() for i in range(t))
    f = v["frames"][0].astype(float)
    mu = [f[m[0] == j + 1].mean(0) for j in range(k)]
    for j in range(1, k):
      rel = v["distractor"][j]
      seen["same"] += rel == S.SAME
      seen["similar"] += rel == S.SIMILAR
      (same_gap if rel == S.SAME else other_gap if rel == S.NOT_SIMILAR else []).append(
        np.abs(mu[j] - mu[0]).max()
      )
  assert all(n >= 2 for n in seen.values()), seen
  assert max(same_gap) < 45 and np.median(other_gap) > 2 * np.median(same_gap)
  assert np.median(speeds) > 1.0


def test_difficulty_knobs():
  always = dataclasses.replace(
    S.DIFFICULTIES["normal"], p_occluder=1.0, p_full_occlusion=1.0, p_same=1.0, p_exit=0.0
  )
  for seed in range(4):
    v = S.generate_video(seed, difficulty=always, num_objects=2)
    assert v["distractor"][1] == S.SAME
    am, occ = v["amodal_masks"][:, 0], v["occluder_mask"]
    hidden = [i for i in range(1, am.shape[0]) if am[i].sum() > 30 and not (am[i] & ~occ[i]).any()]
    assert hidden and not v["visible"][hidden, 0].any() and v["visible"][hidden[-1] + 1 :, 0].any()
  calm = dataclasses.replace(
    S.DIFFICULTIES["easy"], p_occluder=0.0, p_cross=0.0, p_exit=0.0, p_same=0.0, p_similar=0.0
  )
  for seed in range(4):
    v = S.generate_video(seed, difficulty=calm, num_objects=3)
    assert not v["occluder_mask"].any() and (v["distractor"] == S.NOT_SIMILAR).all()
  assert not np.array_equal(
    S.generate_video(1, difficulty="easy")["frames"],
    S.generate_video(1, difficulty="hard")["frames"],
  )


@pytest.mark.parametrize(
  "kw",
  [
    dict(seed=-1),
    dict(seed=1.5),
    dict(num_frames=0),
    dict(height=0),
    dict(width=-5),
    dict(height=16),
    dict(num_objects=0),
    dict(num_objects=(2, 1)),
    dict(num_objects=(1, 9)),
    dict(num_objects=(1, 2, 3)),
    dict(num_objects=True),
    dict(difficulty="extreme"),
    dict(difficulty=3),
    dict(num_points=0),
    dict(min_visible_pixels=0),
    dict(difficulty=S.Difficulty(p_occluder=1.5)),
    dict(difficulty=S.Difficulty(speed=(3.0, 1.0))),
    dict(difficulty=S.Difficulty(noise=-1.0)),
  ],
)
def test_bad_arguments(kw):
  kw = {"seed": 0, **kw}
  with pytest.raises(ValueError):
    S.generate_video(kw.pop("seed"), **kw)


def test_bad_dataset_arguments():
  with pytest.raises(ValueError):
    S.generate_dataset(0, -1)
  with pytest.raises(ValueError):
    S.generate_dataset(0, 2, num_frames=0)
  with pytest.raises(ValueError):
    S.video_seed(0, -2)
