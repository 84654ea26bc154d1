"""Checks and layout of user input to the predictor: videos, clicks, boxes (host side)."""

from __future__ import annotations

import os

import numpy as np

from sam2pp_jax.io.video import ModelFrames, VideoFrames, VideoSource, open_video, preprocess
from sam2pp_jax.tracking import prompts


def session_video(video, image_size: int, video_hw=None):
  """A path / VideoSource / VideoFrames / uint8 [T,H,W,3] / float32 [T,S,S,3] -> (images, (H, W)).

  Paths and VideoSources stay on disk: `images` is then a lazy `ModelFrames` (frames decoded and
  preprocessed per slice), so a long video is never held in memory whole."""
  s = image_size
  if isinstance(video, (str, os.PathLike)):
    video = open_video(video)
  if isinstance(video, VideoSource):
    images, h, w = ModelFrames(video, s), video.height, video.width
  elif isinstance(video, VideoFrames):
    images, h, w = preprocess(video.frames, s), video.height, video.width
  else:
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3:
      raise ValueError(
        f"video has shape {arr.shape}; give uint8 frames [T,H,W,3], "
        f"preprocessed float32 frames [T,{s},{s},3] or a path"
      )
    if arr.dtype == np.uint8:
      images, (h, w) = preprocess(arr, s), arr.shape[1:3]
    else:
      if arr.shape[1:3] != (s, s):
        raise ValueError(
          f"preprocessed video has frames of {arr.shape[1:3]}; the model "
          f"takes {s}x{s} (or give uint8 frames to be resized)"
        )
      if video_hw is None:
        raise ValueError(
          "video_hw is required with preprocessed frames: give the original "
          "(height, width) so outputs are resized back to it"
        )
      images, (h, w) = arr.astype(np.float32), video_hw
  if images.shape[0] < 1:
    raise ValueError("video has no frames; give at least one frame")
  return images, (int(h), int(w))


def user_points(
  points, labels, video_hw, image_size: int, normalize: bool, box=None, allow_empty: bool = False
):
  """Validated clicks -> model-scale float32 [P,2], int32 [P] (P may be 0 with a box)."""
  if (points is None) != (labels is None):
    raise ValueError("points and labels must be given together (one label per point)")
  if points is None and box is None:
    raise ValueError("give points with labels, or a box")
  if points is None:
    return np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
  xy = np.asarray(points, np.float32).reshape(-1, 2) if np.size(points) else None
  lab = np.asarray(labels).reshape(-1)
  if xy is None:
    if allow_empty and lab.size == 0:
      return np.zeros((0, 2), np.float32), np.zeros((0,), np.int32)
    raise ValueError("points is empty; give at least one (x, y) point")
  if lab.shape[0] != xy.shape[0]:
    raise ValueError(
      f"points has {xy.shape[0]} points but labels has {lab.shape[0]} "
      "labels; give one label per point"
    )
  if normalize:
    xy, lab = prompts.check_points(xy, lab, video_hw)
    return prompts.to_model_coords(xy, video_hw, image_size), lab
  xy, lab = prompts.check_points(xy, lab, (1, 1))
  return (xy * np.float32(image_size)).astype(np.float32), lab


def user_box(box, video_hw, image_size: int, normalize: bool):
  """Validated box (x0, y0, x1, y1) -> its two corner points [2,2] at model scale."""
  if normalize:
    b = prompts.check_box(box, video_hw)
    return prompts.box_to_points(b, video_hw, image_size)[0]
  b = prompts.check_box(box, (1, 1))
  return (b.reshape(2, 2) * np.float32(image_size)).astype(np.float32)
