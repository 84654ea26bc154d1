"""`open_video` / `ModelFrames`: the lazy path gives exactly `load_video` / `preprocess`'s frames
and keeps only a bounded number of decoded frames."""

import cv2
import numpy as np
import pytest

from sam2pp_jax.io import video as vio


def _frames(t=7, h=24, w=40):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _frame_dir(tmp_path, frames):
  d = tmp_path / "frames"
  d.mkdir()
  for i, f in enumerate(frames):
    cv2.imwrite(str(d / f"{i}.png"), f[..., ::-1])  # natural order: 2.png < 10.png
  return d


def test_frame_dir_matches_eager_loader(tmp_path):
  d = _frame_dir(tmp_path, _frames(12))
  eager = vio.load_video(d)
  lazy = vio.open_video(d, cache_frames=3)
  assert lazy.frame_names == eager.frame_names
  assert (lazy.num_frames, lazy.height, lazy.width) == (12, 24, 40)
  for t in (5, 0, 11, 5, 2):  # out of order, with cache evictions
    np.testing.assert_array_equal(lazy.frame(t), eager.frames[t])
  assert len(lazy._cache) <= 3
  mf = vio.ModelFrames(lazy, 16)
  assert mf.shape == (12, 16, 16, 3)
  np.testing.assert_array_equal(mf[3:9], vio.preprocess(eager.frames[3:9], 16))
  np.testing.assert_array_equal(mf[-1], vio.preprocess(eager.frames[-1:], 16)[0])


def test_video_file_matches_eager_loader(tmp_path):
  path = str(tmp_path / "v.avi")
  wr = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 24))
  for f in _frames(9):
    wr.write(f[..., ::-1])
  wr.release()
  eager = vio.load_video(path)
  lazy = vio.open_video(path, cache_frames=2)
  assert lazy.num_frames == eager.num_frames == 9
  for t in (4, 8, 1, 4):  # backwards seeks re-open the decoder
    np.testing.assert_array_equal(lazy.frame(t), eager.frames[t])


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(vio.VideoError, match="does not exist"):
    vio.open_video(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(vio.VideoError, match="no frames found"):
    vio.open_video(tmp_path / "empty")
  frames = _frames(3)
  d = _frame_dir(tmp_path, frames)
  cv2.imwrite(str(d / "2.png"), np.zeros((10, 10, 3), np.uint8))
  src = vio.open_video(d)
  with pytest.raises(vio.VideoError, match="same size"):
    src.frame(2)
  with pytest.raises(IndexError, match="outside"):
    src.frame(3)
