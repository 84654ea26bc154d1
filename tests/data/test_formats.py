"""Benchmark readers (sam2pp_jax.data.formats): tiny datasets written with writers.py, read back."""

import os
import pickle

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from sam2pp_jax.data.formats import DatasetError, known_datasets, open_dataset  # noqa: E402
from sam2pp_jax.data.formats import writers as wr  # noqa: E402
from sam2pp_jax.io.png import save_palette_png  # noqa: E402
from sam2pp_jax.model.presets import TASKS  # noqa: E402

H, W = 32, 48
JPEG_TOL = 8  # max abs error of a quality-100 JPEG of these smooth frames (measured: <= 5)


def make_frames(t, seed=0):
  """Smooth frames: R ramps in x, G in y, B = 20 + 19*i tells frame i apart (order checks)."""
  y, x = np.mgrid[0:H, 0:W]
  return np.stack(
    [np.stack([(x * 5 + seed) % 256, y * 7, np.full_like(x, 20 + 19 * i)], -1) for i in range(t)]
  ).astype(np.uint8)


def rect(y0, y1, x0, x1, value=1):
  m = np.zeros((H, W), np.uint8)
  m[y0:y1, x0:x1] = value
  return m


def assert_frame(seq, i, expected, exact=False):
  got = seq.frame(i)
  assert got.dtype == np.uint8 and got.shape == (H, W, 3)
  err = np.abs(got.astype(int) - expected.astype(int)).max()
  assert err == 0 if exact else err <= JPEG_TOL, f"frame {i}: max error {err}"


def box_seq(t, absent=(), seed=0):
  boxes = np.array([[2.5 + i, 3.25 + i, 10.0 + i, 8.5] for i in range(t)])
  boxes[list(absent)] = np.nan
  return {"frames": make_frames(t, seed), "boxes_xywh": boxes}


def point_seq(t, seed=0):
  rng = np.random.default_rng(seed)
  pts = np.stack([rng.uniform([0, 0], [W - 1, H - 1], (3, 2)) for _ in range(t)])
  vis = np.ones((t, 3), bool)
  vis[:2, 1] = False  # track 1 first visible at frame 2
  vis[-1, 0] = False  # track 0 occluded on the last frame
  vis[:, 2] = False  # track 2 never visible
  return {"frames": make_frames(t, seed), "points_xy": pts, "point_visible": vis}


# ------------------------------------------------------------------------------ VOS
def test_davis2017(tmp_path):
  masks = [rect(2, 10, 3, 12) + rect(15, 25, 20, 30, 2) for _ in range(5)]
  masks[3] = masks[3] + rect(0, 2, 40, 46, 3)  # object 3 appears late: not prompted in DAVIS
  seqs = {
    "bike": {"frames": make_frames(5), "masks": np.stack(masks)},
    "car": {"frames": make_frames(4, 9), "masks": {0: rect(5, 9, 5, 9, 1)}},
  }
  wr.write_davis2017(str(tmp_path), seqs, quality=100)
  ds = open_dataset("davis2017", tmp_path)
  assert (ds.task, ds.split, ds.sequence_names()) == ("mask", "val", ["bike", "car"])
  seq = ds.sequence("bike")
  assert seq.frame_names == ["00000", "00001", "00002", "00003", "00004"]
  assert (seq.num_frames, len(seq), seq.video_hw) == (5, 5, (H, W))
  for i in range(5):
    assert_frame(seq, i, seqs["bike"]["frames"][i])
    np.testing.assert_array_equal(seq.gt_masks(i), masks[i])
  assert seq[1:3].shape == (2, H, W, 3) and seq[-1][0, 0, 2] == seq.frame(4)[0, 0, 2]
  prompts = seq.prompts()
  assert len(prompts) == 1
  p = seq.first_prompt("mask")
  assert (p["frame"], p["obj_ids"]) == (0, [1, 2])
  np.testing.assert_array_equal(p["prompt"]["mask"], np.stack([masks[0] == 1, masks[0] == 2]))
  assert ds.sequence("car").gt_masks(1) is None


def test_davis2017_errors(tmp_path):
  wr.write_davis2017(
    str(tmp_path), {"car": {"frames": make_frames(3), "masks": {1: rect(5, 9, 5, 9)}}}
  )
  ds = open_dataset("davis2017", tmp_path)
  with pytest.raises(DatasetError, match="first-frame annotation .*00000.png"):
    ds.sequence("car")
  os.remove(tmp_path / "ImageSets" / "2017" / "val.txt")
  with pytest.raises(DatasetError, match="val.txt"):
    open_dataset("davis2017", tmp_path)


def _sparse_vos(tmp_path, writer, **kw):
  names = ["00000", "00005", "00010", "00015", "00020"]
  m0 = rect(2, 10, 3, 12, 1)
  m2 = m0 + rect(15, 25, 20, 30, 2)
  seqs = {
    "a": {"frames": make_frames(5), "names": names, "masks": {0: m0, 2: m2}},
    "b": {"frames": make_frames(3, 4), "masks": {0: rect(1, 4, 1, 4, 5)}},
  }
  writer(str(tmp_path), seqs, quality=100, **kw)
  return seqs, m0, m2


def test_youtubevos_sparse_objects(tmp_path):
  seqs, m0, m2 = _sparse_vos(tmp_path, wr.write_youtubevos)
  ds = open_dataset("youtubevos", tmp_path)
  assert (ds.split, ds.sequence_names()) == ("valid", ["a", "b"])
  seq = ds.sequence("a")
  assert seq.frame_names == seqs["a"]["names"]
  assert seq.annotated_mask_frames == [0, 2]
  assert seq.gt_masks(1) is None
  np.testing.assert_array_equal(seq.gt_masks(2), m2)
  assert_frame(seq, 3, seqs["a"]["frames"][3])
  groups = seq.prompts()
  assert [(g["frame"], g["obj_ids"]) for g in groups] == [(0, [1]), (2, [2])]
  np.testing.assert_array_equal(groups[1]["prompt"]["mask"][0], m2 == 2)
  assert seq.first_prompt()["frame"] == 0
  assert seq.meta["objects"]["2"]["frames"][0] == "00010"
  assert ds.sequence("b").first_prompt()["obj_ids"] == [5]


def test_youtubevos_meta_mismatch(tmp_path):
  _sparse_vos(tmp_path, wr.write_youtubevos)
  os.remove(tmp_path / "valid" / "Annotations" / "a" / "00010.png")
  with pytest.raises(DatasetError, match="object 2 .*00010.png"):
    open_dataset("youtubevos", tmp_path).sequence("a")


def test_mose_split_folder_and_errors(tmp_path):
  _, m0, _ = _sparse_vos(tmp_path, wr.write_mose)
  assert not (tmp_path / "valid" / "meta.json").exists()
  ds = open_dataset("mose", tmp_path / "valid")  # the split folder itself works as root
  assert [g["frame"] for g in ds.sequence("a").prompts()] == [0, 2]
  with pytest.raises(DatasetError, match="does not exist"):
    open_dataset("mose", tmp_path / "nowhere")
  with pytest.raises(DatasetError, match="'mask' benchmark"):
    open_dataset("mose", tmp_path, task="box")


# ------------------------------------------------------------------------------ SOT
def test_got10k_absent_boxes(tmp_path):
  seqs = {
    "GOT-10k_Val_000001": box_seq(6, absent=[3]),
    "GOT-10k_Val_000002": box_seq(4, absent=[0], seed=3),
  }
  wr.write_got10k(str(tmp_path), seqs, quality=100)
  ds = open_dataset("got10k", tmp_path)
  assert ds.sequence_names() == list(seqs)
  seq = ds.sequence("GOT-10k_Val_000001")
  assert seq.frame_names[:2] == ["00000001", "00000002"] and seq.video_hw == (H, W)
  assert_frame(seq, 5, seqs["GOT-10k_Val_000001"]["frames"][5])
  want = seqs["GOT-10k_Val_000001"]["boxes_xywh"]
  np.testing.assert_array_equal(seq.gt_boxes_xywh, want)  # NaN row 3 included
  np.testing.assert_array_equal(seq.gt_visible, [1, 1, 1, 0, 1, 1])
  np.testing.assert_array_equal(seq.raw_boxes_xywh[3], [0, 0, 0, 0])
  np.testing.assert_array_equal(seq.meta["cover"], [8, 8, 8, 0, 8, 8])
  p = seq.first_prompt("box")
  assert (p["frame"], p["obj_ids"]) == (0, [1])
  np.testing.assert_allclose(p["prompt"]["box_xyxy"], [[2.5, 3.25, 12.5, 11.75]])
  p2 = ds.sequence("GOT-10k_Val_000002").first_prompt()  # absent on frame 0
  assert p2["frame"] == 1
  np.testing.assert_allclose(p2["prompt"]["box_xyxy"], [[3.5, 4.25, 14.5, 12.75]])


def test_got10k_test_split_and_errors(tmp_path):
  wr.write_got10k(str(tmp_path), {"GOT-10k_Test_000001": box_seq(5)}, split="test", first_only=True)
  seq = open_dataset("got10k", tmp_path, split="test").sequence("GOT-10k_Test_000001")
  assert seq.meta["box_rows"] == 1
  np.testing.assert_array_equal(seq.gt_visible, [1, 0, 0, 0, 0])
  assert np.isnan(seq.gt_boxes_xywh[1:]).all() and np.isnan(seq.raw_boxes_xywh[1:]).all()
  wr.write_got10k(str(tmp_path), {"bad": box_seq(6)})
  wr.write_boxes(str(tmp_path / "val" / "bad" / "groundtruth.txt"), box_seq(3)["boxes_xywh"])
  with pytest.raises(DatasetError, match="3 box rows for 6 frames"):
    open_dataset("got10k", tmp_path).sequence("bad")
  (tmp_path / "val" / "bad" / "groundtruth.txt").write_text("1,2,3\n")
  with pytest.raises(DatasetError, match="groundtruth.txt' line 1: 3 values"):
    open_dataset("got10k", tmp_path).sequence("bad")


def test_lasot_occlusion_flags(tmp_path):
  s1 = box_seq(5)
  s1["out_of_view"] = [0, 0, 1, 0, 0]
  s1["full_occlusion"] = [0, 0, 0, 0, 1]
  wr.write_lasot(str(tmp_path), {"airplane-1": s1, "cat-3": box_seq(4, seed=5)}, quality=100)
  ds = open_dataset("lasot", tmp_path)
  assert ds.sequence_names() == ["airplane-1", "cat-3"]
  seq = ds.sequence("airplane-1")
  assert seq.meta["class"] == "airplane" and seq.frame_names[0] == "00000001"
  np.testing.assert_array_equal(seq.gt_visible, [1, 1, 0, 1, 0])
  assert np.isnan(seq.gt_boxes_xywh[[2, 4]]).all()
  np.testing.assert_array_equal(seq.gt_boxes_xywh[[0, 1, 3]], s1["boxes_xywh"][[0, 1, 3]])
  assert_frame(seq, 4, s1["frames"][4])
  os.remove(tmp_path / "cat" / "cat-3" / "groundtruth.txt")
  with pytest.raises(DatasetError, match="groundtruth.txt' is missing"):
    ds.sequence("cat-3")


def test_trackingnet_first_box_only(tmp_path):
  s = box_seq(12)
  wr.write_trackingnet(str(tmp_path), {"vid_b": s, "vid_a": box_seq(3, seed=1)}, quality=100)
  ds = open_dataset("trackingnet", tmp_path)
  assert (ds.split, ds.sequence_names()) == ("TEST", ["vid_a", "vid_b"])
  seq = ds.sequence("vid_b")
  assert seq.frame_names == [str(i) for i in range(12)]  # natural order: 9 < 10
  assert_frame(seq, 10, s["frames"][10])
  np.testing.assert_array_equal(seq.gt_visible, [1] + [0] * 11)
  np.testing.assert_array_equal(seq.gt_boxes_xywh[0], s["boxes_xywh"][0])
  assert seq.first_prompt()["frame"] == 0
  import shutil

  shutil.rmtree(tmp_path / "TEST" / "frames" / "vid_a")
  with pytest.raises(DatasetError, match="vid_a' does not exist"):
    ds.sequence("vid_a")


# ------------------------------------------------------------------------------ points
def test_tapvid_davis_pickle_pixel_convention(tmp_path):
  t = 4
  pts = np.zeros((2, t, 2), np.float32)
  pts[0] = [0.5, 0.25]  # -> (24, 8) with x*W, y*H; x*(W-1) would give 23.5
  pts[1] = [1.0, 1.0]  # the far image corner -> (W, H)
  occ = np.zeros((2, t), bool)
  occ[1, :2] = True
  entry = {"video": make_frames(t), "points": pts, "occluded": occ}
  with open(tmp_path / "tapvid_davis.pkl", "wb") as f:
    pickle.dump({"goat": entry}, f)
  ds = open_dataset("tapvid_davis", tmp_path)
  assert ds.sequence_names() == ["goat"] and ds.task == "point"
  seq = ds.sequence("goat")
  assert seq.frame_names == ["00000", "00001", "00002", "00003"]
  assert_frame(seq, 2, entry["video"][2], exact=True)
  np.testing.assert_array_equal(seq.gt_points_xy[:, 0], [[24.0, 8.0]] * t)
  np.testing.assert_array_equal(seq.gt_points_xy[:, 1], [[W, H]] * t)
  np.testing.assert_array_equal(seq.gt_point_visible[:, 1], [0, 0, 1, 1])
  groups = seq.prompts()
  assert [(g["frame"], g["obj_ids"]) for g in groups] == [(0, [0]), (2, [1])]
  np.testing.assert_array_equal(groups[0]["prompt"]["points_xy"], [[[24.0, 8.0]]])
  np.testing.assert_array_equal(groups[1]["prompt"]["point_labels"], [[1]])
  same = open_dataset("tapvid_davis", tmp_path / "tapvid_davis.pkl").sequence("goat")
  np.testing.assert_array_equal(same.gt_points_xy, seq.gt_points_xy)


def test_tapvid_davis_pickle_errors(tmp_path):
  with open(tmp_path / "tapvid_davis.pkl", "wb") as f:
    pickle.dump({"goat": {"video": make_frames(2), "points": np.zeros((1, 2, 2))}}, f)
  with pytest.raises(DatasetError, match="'occluded'"):
    open_dataset("tapvid_davis", tmp_path).sequence("goat")
  (tmp_path / "tapvid_davis.pkl").write_bytes(b"not a pickle")
  with pytest.raises(DatasetError, match="unreadable"):
    open_dataset("tapvid_davis", tmp_path)


def test_tapvid_kinetics_shards_jpeg_bytes(tmp_path):
  a, b, c = point_seq(4), point_seq(3, 1), point_seq(5, 2)
  wr.write_tapvid_pickle(str(tmp_path / "0000_of_0002.pkl"), [a, b], jpeg=True, quality=100)
  wr.write_tapvid_pickle(str(tmp_path / "0001_of_0002.pkl"), [c], jpeg=True, quality=100)
  ds = open_dataset("tapvid_kinetics", tmp_path)
  assert ds.sequence_names() == ["00000", "00001", "00002"]
  seq = ds.sequence("00002")
  assert (seq.num_frames, seq.video_hw) == (5, (H, W))
  assert_frame(seq, 4, c["frames"][4])
  np.testing.assert_allclose(seq.gt_points_xy, c["points_xy"], atol=1e-4)
  np.testing.assert_array_equal(seq.gt_point_visible, c["point_visible"])
  groups = ds.sequence("00000").prompts()  # track 2 is never visible: not prompted
  assert [(g["frame"], g["obj_ids"]) for g in groups] == [(0, [0]), (2, [1])]
  bad = wr.tapvid_entry(a, jpeg=True)
  bad["video"][1] = b"\xff\xd8garbage"
  with open(tmp_path / "0001_of_0002.pkl", "wb") as f:
    pickle.dump([bad], f)
  seq = open_dataset("tapvid_kinetics", tmp_path).sequence("00002")
  assert_frame(seq, 0, a["frames"][0])
  with pytest.raises(DatasetError, match="frame 1 of video '00002'.*cannot decode"):
    seq.frame(1)


def test_tapvid_npz_layout(tmp_path):
  s = point_seq(4)
  wr.write_point_layout(str(tmp_path), {"horse": s}, quality=100)
  seq = open_dataset("tapvid_davis", tmp_path).sequence("horse")
  np.testing.assert_array_equal(seq.gt_points_xy, s["points_xy"].astype(np.float32))
  np.testing.assert_array_equal(seq.gt_point_visible, s["point_visible"])
  assert seq.video_hw == (H, W)
  wr.write_points_npz(
    str(tmp_path / "Points" / "horse.npz"), s["points_xy"], s["point_visible"], (W + 1, H)
  )
  with pytest.raises(DatasetError, match="00000.jpg' is 48x32 .* annotation says 49x32"):
    open_dataset("tapvid_davis", tmp_path).sequence("horse").frame(0)


def test_badja(tmp_path):
  bear = dict(point_seq(5), masks=np.stack([rect(4, 20, 4, 30, 1)] * 5))
  wr.write_badja(str(tmp_path), {"bear": bear, "extra_videos_rs_dog": point_seq(3)})
  ds = open_dataset("badja", tmp_path)
  assert ds.sequence_names() == ["bear"]  # the reference's official list wins
  seq = ds.sequence("bear")
  assert_frame(seq, 3, bear["frames"][3], exact=True)  # PNG frames are lossless
  np.testing.assert_array_equal(seq.gt_masks(2), bear["masks"][2])
  assert seq.tasks == ["mask", "point"] and seq.task == "point"
  np.testing.assert_array_equal(seq.gt_point_visible, bear["point_visible"])
  wr.write_points_npz(
    str(tmp_path / "Points" / "bear.npz"), bear["points_xy"][:4], bear["point_visible"][:4], (W, H)
  )
  with pytest.raises(DatasetError, match="4 frames but the video has 5"):
    ds.sequence("bear")


# ------------------------------------------------------------------------------ TAG
def _tag(tmp_path):
  s = dict(box_seq(5, absent=[2]), **{k: v for k, v in point_seq(5).items() if k != "frames"})
  s["masks"] = {0: rect(2, 10, 3, 12, 1) + rect(15, 25, 20, 30, 2), 3: rect(2, 10, 3, 12, 1)}
  wr.write_tag(str(tmp_path), {"00025": s, "00076": dict(box_seq(3, seed=2))}, quality=100)
  return s


def test_tag_three_tasks(tmp_path):
  s = _tag(tmp_path)
  mask = open_dataset("tag", tmp_path, task="mask")
  assert (mask.split, mask.sequence_names()) == ("valid", ["00025", "00076"])
  seq = mask.sequence("00025")
  assert_frame(seq, 4, s["frames"][4])
  assert seq.gt_masks(1) is None
  np.testing.assert_array_equal(seq.gt_masks(3), s["masks"][3])
  assert seq.first_prompt()["obj_ids"] == [1, 2] and len(seq.prompts()) == 1
  box = open_dataset("tag", tmp_path, task="box").sequence("00025")
  np.testing.assert_array_equal(box.gt_visible, [1, 1, 0, 1, 1])
  np.testing.assert_array_equal(box.gt_boxes_xywh, s["boxes_xywh"])
  assert box.first_prompt("box")["obj_ids"] == [1]
  pt = open_dataset("tag", tmp_path / "valid", task="point")  # split folder as root
  assert pt.split == "valid" and pt.sequence_names() == ["00025", "00076"]
  seq = pt.sequence("00025")
  np.testing.assert_allclose(seq.gt_points_xy, s["points_xy"], atol=1e-5)
  assert [g["frame"] for g in seq.prompts()] == [0, 2]


def test_tag_errors(tmp_path):
  _tag(tmp_path)
  with pytest.raises(DatasetError, match="give task="):
    open_dataset("tag", tmp_path)
  with pytest.raises(DatasetError, match="Points/00076.npz' is missing"):
    open_dataset("tag", tmp_path, task="point").sequence("00076")
  os.remove(tmp_path / "valid" / "Visibles" / "00025.txt")
  with pytest.raises(DatasetError, match="Visibles/00025.txt' is missing"):
    open_dataset("tag", tmp_path, task="box").sequence("00025")


# ------------------------------------------------------------------------------ shared
def test_registry_and_bad_frames(tmp_path):
  assert set(known_datasets()) == {
    "davis2017",
    "youtubevos",
    "mose",
    "got10k",
    "lasot",
    "trackingnet",
    "tapvid_davis",
    "tapvid_kinetics",
    "badja",
    "tag",
  }
  with pytest.raises(DatasetError, match="unknown dataset 'davis'; known datasets: badja, davis"):
    open_dataset("davis", tmp_path)
  seqs = {"bike": {"frames": make_frames(4), "masks": {0: rect(2, 9, 2, 9)}}}
  wr.write_davis2017(str(tmp_path), seqs)
  d = tmp_path / "JPEGImages" / "480p" / "bike"
  cv2.imwrite(str(d / "00002.jpg"), np.zeros((H + 2, W, 3), np.uint8))
  (d / "00003.jpg").write_bytes(b"garbage")
  save_palette_png(
    str(tmp_path / "Annotations" / "480p" / "bike" / "00001.png"), np.zeros((H, W + 1), np.uint8)
  )
  seq = open_dataset("davis2017", tmp_path).sequence("bike")
  seq.frame(1)
  with pytest.raises(DatasetError, match="00002.jpg' is 48x34 \\(WxH\\) but frame 0 is 48x32"):
    seq.frame(2)
  with pytest.raises(DatasetError, match="00003.jpg' is unreadable"):
    seq[3]
  with pytest.raises(IndexError):
    seq.frame(4)
  with pytest.raises(DatasetError, match="00001.png' is 49x32"):
    seq.gt_masks(1)


def test_prompts_feed_prepare_prompt(tmp_path):
  from sam2pp_jax.tracking.propagate import prepare_prompt

  s = _tag(tmp_path)
  for task in TASKS:
    seq = open_dataset("tag", tmp_path, task=task).sequence("00025")
    p = seq.first_prompt()
    out = prepare_prompt(task, p["prompt"], seq.video_hw, image_size=64)
    b = len(p["obj_ids"])
    if task == "point":
      assert out.mask.shape == (b, 64, 64) and out.point_coords.shape == (b, 1, 2)
      np.testing.assert_allclose(p["prompt"]["points_xy"][0, 0], s["points_xy"][0, 0], atol=1e-5)
    elif task == "box":
      assert out.point_coords.shape == (1, 2, 2)
    else:
      assert out.mask.shape == (2, 64, 64)
