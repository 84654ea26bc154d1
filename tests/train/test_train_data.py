"""Training data pipeline: clip layout, determinism, process split, grain state, augmentation
geometry, task mixing, object selection and config errors."""

import math

import cv2
import numpy as np
import pytest

from sam2pp_jax.data.formats.base import ArrayFrames, Sequence
from sam2pp_jax.io.png import save_palette_png
from sam2pp_jax.io.video import IMG_MEAN, IMG_STD
from sam2pp_jax.train import data as D

S = 32


def small_cfg(**kw):
  """A fast config: 4 frames of 64 x 64 synthetic video at model size 32."""
  cfg = D.default_data_config()
  cfg.image_size = S
  cfg.num_frames = 4
  cfg.global_batch = 4
  cfg.sources = [
    dict(
      kind="synthetic",
      seed_offset=0,
      weight=1.0,
      difficulty="normal",
      video_hw=(64, 64),
      video_frames=None,
      num_objects=(1, 3),
      num_points=4,
    )
  ]
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def no_color(cfg):
  """Photometric augmentation off, so frames can be compared geometrically."""
  cfg.augment.jitter_consistent = (0.0, 0.0, 0.0)
  cfg.augment.jitter_per_frame = (0.0, 0.0, 0.0)
  cfg.augment.grayscale_p = 0.0
  return cfg


def square_video(t=4, hw=(64, 64), objects=((8, 8, 20), (36, 30, 16), (10, 40, 12)), absent=None):
  """A hand-made video in the synthetic layout: square objects (x, y, side), each with a 2 x 2
  grid of keypoints; absent: {object index: frames where it is hidden}."""
  h, w = hw
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
  masks = np.zeros((t, h, w), np.uint8)
  k = len(objects)
  points = np.zeros((t, k, 4, 2), np.float32)
  for j, (x, y, side) in enumerate(objects):
    for f in range(t):
      if absent and f in absent.get(j, ()):
        continue
      masks[f, y : y + side, x + f : x + f + side] = j + 1
    offs = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]) * side
    points[:, j] = np.array([x, y]) + offs + np.arange(t)[:, None, None] * np.array([1, 0])
  counts = np.stack([[(m == j + 1).sum() for j in range(k)] for m in masks])
  pix = np.floor(points).astype(int)
  on = masks[np.arange(t)[:, None, None], pix[..., 1], pix[..., 0]]
  pv = on == np.arange(1, k + 1)[None, :, None]
  boxes = np.full((t, k, 4), np.nan, np.float32)
  for f in range(t):
    for j in range(k):
      ys, xs = np.nonzero(masks[f] == j + 1)
      if xs.size:
        boxes[f, j] = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
  return {
    "frames": frames,
    "masks": masks,
    "visible": counts >= 16,
    "boxes_xywh": boxes,
    "points_xy": points,
    "point_visible": pv,
  }


def tight_boxes(masks):
  out = np.zeros(masks.shape[:-2] + (4,), np.float32)
  for idx in np.ndindex(masks.shape[:-2]):
    ys, xs = np.nonzero(masks[idx])
    if xs.size:
      out[idx] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
  return out


# ------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("task", D.TASKS)
def test_batch_shapes_and_dtypes(task):
  cfg = small_cfg()
  b = D.make_batch(0, 1, task, cfg)
  o = 1 if task == "box" else 3
  want = {
    "frames": ((4, 4, S, S, 3), np.float32),
    "masks": ((4, 4, o, S, S), np.bool_),
    "boxes": ((4, 4, o, 4), np.float32),
    "points": ((4, 4, o, 2), np.float32),
    "visible": ((4, 4, o), np.bool_),
    "obj_valid": ((4, o), np.bool_),
  }
  assert set(b) == set(want)
  for k, (shape, dtype) in want.items():
    assert b[k].shape == shape and b[k].dtype == dtype, k
  assert b["obj_valid"][:, 0].all()
  assert (b["visible"][:, 0] == b["obj_valid"]).all()  # valid <=> visible in frame 0
  assert not (b["visible"] & ~b["obj_valid"][:, None]).any()
  # frames are normalised: their unnormalised values lie in [0, 1]
  raw = b["frames"] * np.array(IMG_STD, np.float32) + np.array(IMG_MEAN, np.float32)
  assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5
  if task == "point":
    pts = b["points"][b["visible"]]
    assert ((pts >= 0) & (pts < S)).all()
    assert not b["boxes"].any()


def test_padded_objects_are_zero():
  b = D.make_batch(3, 2, "mask", small_cfg(global_batch=8))
  pad = ~b["obj_valid"]
  assert pad.any(), "expected some clip with fewer than 3 objects"
  for k in ("masks", "boxes", "points", "visible"):
    x = np.moveaxis(b[k], 2, 1)  # [B,O,T,...]
    assert not x[pad].any(), k


# ------------------------------------------------------------------------------ determinism
def test_same_step_same_batch_and_steps_differ():
  cfg = small_cfg()
  a = D.make_batch(7, 5, "mask", cfg)
  b = D.make_batch(7, 5, "mask", cfg)
  c = D.make_batch(7, 6, "mask", cfg)
  for k in D.CLIP_KEYS:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["frames"], c["frames"])
  assert not np.array_equal(a["frames"][0], a["frames"][1])  # clips of a step differ too


def test_process_halves_concatenate_to_global_batch():
  cfg = small_cfg()
  full = D.make_batch(1, 9, "point", cfg)
  halves = [D.make_batch(1, 9, "point", cfg, process_index=i, process_count=2) for i in range(2)]
  for k in D.CLIP_KEYS:
    assert halves[0][k].shape[0] == 2
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), full[k])
  with pytest.raises(ValueError, match="process_count"):
    D.make_batch(1, 9, "point", cfg, process_count=3)


def test_iterator_state_restores_exactly():
  cfg = small_cfg(global_batch=2)
  it = D.make_train_iterator(cfg, seed=4)
  for _ in range(3):
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(2)]
  fresh = D.make_train_iterator(cfg, seed=4)
  fresh.set_state(state)
  again = [next(fresh) for _ in range(2)]
  for (ta, ba), (tb, bb) in zip(after, again):
    assert ta == tb
    for k in D.CLIP_KEYS:
      np.testing.assert_array_equal(ba[k], bb[k])
  # the task of each yielded batch is the step's task, and batches start at start_step
  task0, batch0 = next(D.make_train_iterator(cfg, seed=4, start_step=3))
  assert task0 == D.task_for_step(4, 3, cfg.task_probs) == after[0][0]
  np.testing.assert_array_equal(batch0["frames"], after[0][1]["frames"])


# ------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("task", ["mask", "box"])
def test_boxes_are_tight_boxes_of_augmented_masks(task):
  b = D.make_batch(2, 3, task, small_cfg())
  np.testing.assert_array_equal(b["boxes"], tight_boxes(b["masks"]))
  np.testing.assert_array_equal(b["visible"], b["masks"].any((-2, -1)))
  if task == "box":
    assert (b["masks"].sum((-2, -1))[b["visible"]] >= 4).all()


def test_hflip_moves_points_to_s_minus_x_and_mirrors_frames():
  video = square_video()
  out = {}
  for p in (0.0, 1.0):
    cfg = no_color(small_cfg())
    cfg.augment.hflip_p = p
    out[p] = D.make_clip(video, "point", np.random.default_rng(11), cfg)
  a, b = out[0.0], out[1.0]
  np.testing.assert_array_equal(a["visible"], b["visible"])
  vis = a["visible"]
  assert vis[0].all() and a["obj_valid"].all()
  np.testing.assert_allclose(b["points"][vis][:, 0], S - a["points"][vis][:, 0], atol=1e-5)
  np.testing.assert_allclose(b["points"][vis][:, 1], a["points"][vis][:, 1], atol=1e-5)
  np.testing.assert_allclose(b["frames"], a["frames"][:, :, ::-1], atol=0.02)
  # unflipped points are the video points scaled by S / 64 (continuous, x * S / W)
  pts = video["points_xy"].reshape(4, -1, 2) * (S / 64)
  for o in range(3):
    match = np.all(np.abs(pts[0] - a["points"][0, o]) < 1e-4, -1)
    assert match.sum() == 1
    np.testing.assert_allclose(a["points"][:, o], pts[:, np.argmax(match)], atol=1e-4)


@pytest.mark.parametrize("task", ["mask", "point"])
def test_geometry_keeps_masks_and_points_on_their_objects(task):
  """Frames painted with one colour per object: after flip + affine + resize every mask and
  every point still sits on its object's colour (the affine is forced on for points too)."""
  video = square_video()
  palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  video["frames"] = palette[video["masks"]]
  cfg = no_color(small_cfg())
  cfg.augment.affine_tasks = ("mask", "point")
  cfg.augment.hflip_p = 1.0
  fill = []
  for seed in range(4):
    clip = D.make_clip(video, task, np.random.default_rng(seed), cfg)
    raw = clip["frames"] * np.array(IMG_STD) + np.array(IMG_MEAN)
    for o in np.flatnonzero(clip["obj_valid"]):
      vis = clip["visible"][:, o]
      if task == "mask":
        colour = raw[clip["masks"][:, o]].mean(0)
        assert colour.max() > 0.8 and np.sort(colour)[1] < 0.05, colour
      else:
        px = np.floor(clip["points"][vis, o]).astype(int)
        colour = raw[np.flatnonzero(vis), px[:, 1], px[:, 0]]
        assert (colour.max(1) > 0.95).all() and (np.sort(colour, 1)[:, 1] < 0.05).all()
    m = clip["masks"][0, 0]
    ys, xs = np.nonzero(m)
    fill.append(m.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1)))
  if task == "mask":  # the affine was applied: some masks are no longer axis-aligned squares
    assert min(fill) < 0.9, fill


def test_box_task_from_box_only_sequence():
  """SOT sequences (no masks): the box is rasterised, augmented and read back."""
  t, h, w = 4, 48, 96
  boxes = np.array([[10, 6, 30, 20], [12, 8, 30, 20], [0, 0, 0, 0], [16, 10, 30, 20]], float)
  seq = Sequence(
    "sot",
    "box",
    ArrayFrames(np.zeros((t, h, w, 3), np.uint8), "mem"),
    [str(i) for i in range(t)],
    boxes_xywh=boxes,
  )
  video = D.sequence_to_video(seq, range(t))
  assert video["boxes_xywh"].shape == (t, 1, 4) and video["visible"][:, 0].tolist() == [
    True,
    True,
    False,
    True,
  ]
  cfg = no_color(small_cfg())
  cfg.augment.hflip_p = 0.0
  clip = D.make_clip(video, "box", np.random.default_rng(0), cfg)
  assert clip["visible"][:, 0].tolist() == [True, True, False, True]
  sx, sy = S / w, S / h
  want = np.array([[10 * sx, 6 * sy, 40 * sx, 26 * sy]])
  np.testing.assert_allclose(clip["boxes"][0], want, atol=1.0)
  np.testing.assert_array_equal(clip["boxes"], tight_boxes(clip["masks"]))


# ------------------------------------------------------------------------------ sampling
def test_task_frequencies_follow_probs():
  probs = (0.1, 0.4, 0.5)
  tasks = [D.task_for_step(0, s, probs) for s in range(2000)]
  for task, p in zip(D.TASKS, probs):
    n = tasks.count(task)
    assert abs(n - 2000 * p) < 4 * math.sqrt(2000 * p * (1 - p)), (task, n)
  assert tasks == [D.task_for_step(0, s, probs) for s in range(2000)]
  assert set(D.task_for_step(0, s, (0.0, 1.0, 0.0)) for s in range(50)) == {"box"}


def test_objects_valid_only_when_visible_in_first_frame():
  # object 2 is hidden in frame 0 only; object 3 has 2 x 2 = 4 pixels, too few (<= 5) for the
  # mask sampler; so the mask task keeps object 1 alone.
  video = square_video(objects=((8, 8, 20), (36, 30, 16), (50, 4, 2)), absent={1: (0,)})
  cfg = small_cfg()
  for seed in range(6):
    clip = D.make_clip(video, "mask", np.random.default_rng(seed), cfg)
    assert clip["obj_valid"].tolist() == [True, False, False]
    assert clip["visible"][0, 0] and clip["masks"][0, 0].sum() > 40  # object 1: 20 x 20 px
  for seed in range(6):  # the point task: tracks of hidden objects are not visible in frame 0
    clip = D.make_clip(video, "point", np.random.default_rng(seed), cfg)
    assert clip["obj_valid"].all() and clip["visible"][0].all()
  b = D.make_batch(5, 0, "mask", small_cfg(global_batch=8))
  assert (b["visible"][:, 0] == b["obj_valid"]).all()


def test_dataset_source_davis_layout(tmp_path):
  """A two-sequence DAVIS tree as a mask source: ids remapped, windows on annotated frames."""
  root = tmp_path / "davis"
  for name in ("a", "b"):
    img_dir = root / "JPEGImages" / "480p" / name
    ann_dir = root / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for i in range(6):
      img = np.full((40, 56, 3), 60 + 20 * i, np.uint8)
      cv2.imwrite(str(img_dir / f"{i:05d}.jpg"), img)
      ids = np.zeros((40, 56), np.uint8)
      ids[5:20, 4 + i : 20 + i] = 3  # palette ids 3 and 7 -> objects 1, 2
      ids[22:36, 30:50] = 7
      save_palette_png(str(ann_dir / f"{i:05d}.png"), ids)
  sets = root / "ImageSets" / "2017"
  sets.mkdir(parents=True)
  (sets / "train.txt").write_text("a\nb\n")
  cfg = small_cfg(global_batch=2)
  cfg.sources = [
    dict(
      kind="dataset",
      name="davis2017",
      root=str(root),
      split="train",
      weight=1.0,
      tasks=("mask", "box"),
    )
  ]
  cfg.task_probs = (0.5, 0.5, 0.0)
  b = D.make_batch(0, 0, "mask", cfg)
  assert b["masks"].shape == (2, 4, 3, S, S)
  assert b["obj_valid"].sum(1).tolist() == [2, 2]
  np.testing.assert_array_equal(b["boxes"], tight_boxes(b["masks"]))
  seq = D._source_dataset(dict(cfg.sources[0])).sequence("a")
  video = D.sequence_to_video(seq, [1, 2])
  assert video["obj_ids"].tolist() == [3, 7] and set(np.unique(video["masks"])) == {0, 1, 2}
  task, batch = next(D.make_train_iterator(cfg, seed=0))
  assert task in ("mask", "box") and batch["frames"].shape[0] == 2


# ------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
  "field, value, match",
  [
    ("sources", [dict(kind="webdataset")], r"sources\[0\]\.kind"),
    ("sources", [dict(kind="synthetic", wieght=1)], r"sources\[0\].*unknown fields"),
    ("sources", [dict(kind="dataset", name="davis2017")], r"sources\[0\]\.root"),
    ("task_probs", (0.5, 0.5, 0.5), "task_probs"),
    ("task_probs", (0.5, 0.5), "task_probs"),
    ("num_frames", 0, "num_frames"),
    ("image_size", -1, "image_size"),
    ("global_batch", 0, "global_batch"),
  ],
)
def test_bad_config_names_the_field(field, value, match):
  cfg = small_cfg()
  setattr(cfg, field, value)
  with pytest.raises(ValueError, match=match):
    D.check_data_config(cfg)
  with pytest.raises(ValueError, match=match):
    D.make_train_iterator(cfg, seed=0)


def test_bad_task_and_missing_ground_truth():
  with pytest.raises(ValueError, match="task"):
    D.make_batch(0, 0, "segment", small_cfg())
  video = square_video()
  del video["points_xy"]
  with pytest.raises(ValueError, match="points_xy"):
    D.make_clip(video, "point", np.random.default_rng(0), small_cfg())
  with pytest.raises(ValueError, match="task_probs"):
    D.task_for_step(0, 0, (1.0, 1.0, 0.0))


# ------------------------------------------------------------------------------ curriculum
def _curriculum_cfg():
  base = small_cfg().sources[0]
  return small_cfg(
    sources=[
      dict(base, difficulty="static", steps=(0, 3)),
      dict(base, difficulty="normal", steps=(3, 10)),
    ]
  )


def test_curriculum_windows_pick_the_source_of_the_step():
  """A source with steps=(first, stop) serves only those steps: the static stage's clips keep
  every object where it was (the same mask on every frame), the normal stage's move."""
  cfg = no_color(_curriculum_cfg())
  cfg.augment.affine_tasks = ()
  cfg.augment.hflip_p = 0.0

  def moves(step):
    m = D.make_batch(0, step, "mask", cfg)["masks"]  # [B,T,O,S,S]
    return bool(np.any(m[:, 1:] != m[:, :1]))

  assert not any(moves(s) for s in (0, 1, 2))
  assert all(moves(s) for s in (3, 4))


def test_curriculum_gap_is_a_clear_error():
  cfg = _curriculum_cfg()
  with pytest.raises(ValueError, match="at step 12"):
    D.make_batch(0, 12, "mask", cfg)  # after every window: no source
  bad = small_cfg(sources=[dict(small_cfg().sources[0], steps=(5, 5))])
  with pytest.raises(ValueError, match=r"sources\[0\]\.steps"):
    D.check_data_config(bad)
  late = small_cfg(sources=[dict(small_cfg().sources[0], steps=(2, 9))])
  with pytest.raises(ValueError, match="at step 0"):
    D.make_train_iterator(late, seed=0)  # nothing serves the first steps


def test_task_stages_override_task_probs_in_their_window():
  """A mask-only first stage: its steps draw only mask; later steps follow task_probs; the
  iterator yields the scheduled task; bad entries name themselves."""
  cfg = small_cfg(task_stages=(((0, 6), (1.0, 0.0, 0.0)),), task_probs=(0.0, 0.0, 1.0))
  assert D.task_probs_at(cfg, 0) == (1.0, 0.0, 0.0) == D.task_probs_at(cfg, 5)
  assert D.task_probs_at(cfg, 6) == (0.0, 0.0, 1.0)
  it = D.make_train_iterator(cfg, seed=3)
  tasks = [next(it)[0] for _ in range(8)]
  assert tasks == ["mask"] * 6 + ["point"] * 2
  # a stage drawing a task no source serves then is found before training starts
  point_only = small_cfg(
    task_stages=(((2, 4), (0.5, 0.0, 0.5)),),
    task_probs=(0.0, 0.0, 1.0),
    sources=[dict(small_cfg().sources[0], tasks=("point",))],
  )
  with pytest.raises(ValueError, match="'mask' task at step 2"):
    D.make_train_iterator(point_only, seed=0)
  for bad, match in [
    ((((0, 6), (0.5, 0.5)),), r"task_stages\[0\]"),
    ((((4, 4), (1.0, 0.0, 0.0)),), r"task_stages\[0\] stop step"),
    (((0, 6),), r"task_stages\[0\]"),
  ]:
    with pytest.raises(ValueError, match=match):
      D.check_data_config(small_cfg(task_stages=bad))
