"""Video input matching the reference predictor's preprocessing.

Reference behaviour (``sam2/utils/misc.py`` ``load_video_frames*`` of the reference repo):

* A directory of frames: file names whose extension is one of ``.jpg .jpeg .JPG .JPEG
  .png`` are sorted with ``natsort.natsorted`` (natural order: digit runs compare as
  integers, so ``2.jpg < 10.jpg`` and ``frame2 < frame10``); each image is opened with PIL,
  ``convert("RGB")``, ``resize((S, S))`` (PIL default filter for RGB = BICUBIC, the aspect
  ratio is NOT kept), ``/ 255.0`` in float64, stored as float32, then ``(x - mean) / std``
  in float32.
* An ``.mp4`` file: the reference decodes with ``decord`` and lets the decoder resize
  (ffmpeg's scaler).  We decode with OpenCV and resize with the PIL-bicubic port below, so
  video-file inputs are *not* bit-identical to the reference (frame folders are).

Differences / choices here (documented on purpose):

* Frame extensions are matched case-insensitively (``.PNG`` is accepted; the reference
  would ignore it).  Natural sort is natsort's default key (as the reference), with ties
  between differently padded equal numbers (``1.jpg`` / ``01.jpg``) broken by the plain
  string, so the order never depends on ``os.listdir``.
* Images are decoded with OpenCV (``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION`` so EXIF
  rotation is *not* applied, like ``PIL.Image.open``), converted BGR->RGB.  For PNG this is
  exact; for JPEG both libraries use libjpeg(-turbo) ISLOW defaults and normally agree.
* Resizing never needs pillow: :func:`pil_resize_bicubic` is a numpy port of Pillow's
  ``Resample.c`` 8-bit path (verified bit-exact against pillow 13 in the tests; see its
  docstring for the pass-order rule that changed in Pillow 13).

Public API
----------
``VideoError(ValueError)``; ``VideoFrames`` (frames uint8 [T,H,W,3] RGB, frame_names,
source, fps); ``load_video(path)``; ``natural_sort_key(name)``; ``read_rgb_image(path)``;
``pil_resize_bicubic(img_u8, (out_h, out_w))``; ``normalize_u8(frames_u8)``;
``preprocess(frames_u8, image_size) -> float32 [T,S,S,3]``;
``load_video_for_model(path, image_size) -> (float32 [T,S,S,3], video_h, video_w, VideoFrames)``;
``open_video(path) -> VideoSource`` (lazy: frames decoded on demand, for long videos) and
``ModelFrames(source, image_size)`` (its preprocessed float32 [T,S,S,3] view, sliced on demand).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
from typing import List, Optional, Tuple

import natsort
import numpy as np

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class VideoError(ValueError):
  """Raised for unusable video inputs; the message names the path and a remedy."""


@dataclasses.dataclass
class VideoFrames:
  frames: np.ndarray  # uint8 [T, H, W, 3] RGB
  frame_names: List[str]
  source: str
  fps: Optional[float] = None

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])

  @property
  def height(self) -> int:
    return int(self.frames.shape[1])

  @property
  def width(self) -> int:
    return int(self.frames.shape[2])


# --------------------------------------------------------------------------- loading


_NATSORT_KEY = natsort.natsort_keygen()


def natural_sort_key(name: str):
  """natsort's default key (``'a10b' -> ('a', 10, 'b')``), then the plain name for ties."""
  return (_NATSORT_KEY(name), name)


def _cv2():
  import cv2  # local import: keeps module import cheap

  return cv2


def read_rgb_image(path: str) -> np.ndarray:
  """One frame file -> uint8 [H,W,3] RGB (OpenCV, EXIF orientation ignored like PIL)."""
  cv2 = _cv2()
  flags = cv2.IMREAD_COLOR | getattr(cv2, "IMREAD_IGNORE_ORIENTATION", 0)
  try:
    data = np.fromfile(path, dtype=np.uint8)
  except OSError as e:
    raise VideoError(f"cannot read frame file {path!r}: {e}; check permissions") from e
  img = cv2.imdecode(data, flags) if data.size else None
  if img is None:
    raise VideoError(
      f"cannot decode image {path!r} (corrupt or not an image); "
      "re-export the frame or remove it from the folder"
    )
  if img.dtype != np.uint8:  # 16-bit PNG etc.: same 8-bit reduction PIL's RGB convert does
    img = (img >> 8).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
  return np.ascontiguousarray(img[:, :, ::-1])


def _load_frame_dir(path: str) -> VideoFrames:
  names = _frame_files(path)
  frames = []
  ref_shape = None
  for name in names:
    img = read_rgb_image(os.path.join(path, name))
    if ref_shape is None:
      ref_shape = img.shape
    elif img.shape != ref_shape:
      raise VideoError(
        f"frame {name!r} in {path!r} has size {img.shape[1]}x{img.shape[0]} (WxH) but "
        f"the first frame {names[0]!r} has size {ref_shape[1]}x{ref_shape[0]}; "
        "all frames of a video must have the same size — resize or remove it"
      )
    frames.append(img)
  return VideoFrames(np.stack(frames, 0), names, os.path.abspath(path), None)


def _load_video_file(path: str) -> VideoFrames:
  cv2 = _cv2()
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    cap.release()
    raise VideoError(
      f"cannot open video file {path!r} (unsupported codec or corrupt file); "
      "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`) or extract frames "
      "into a folder of JPEGs"
    )
  fps = cap.get(cv2.CAP_PROP_FPS) or None
  frames = []
  try:
    while True:
      ok, img = cap.read()
      if not ok or img is None:
        break
      if frames and img.shape != frames[0].shape:
        raise VideoError(
          f"frame {len(frames)} of video {path!r} has size "
          f"{img.shape[1]}x{img.shape[0]} (WxH) but frame 0 has size "
          f"{frames[0].shape[1]}x{frames[0].shape[0]}; re-encode the video"
        )
      frames.append(img)
  finally:
    cap.release()
  if not frames:
    raise VideoError(
      f"video file {path!r} contains no decodable frames (empty or corrupt); "
      "re-encode it or extract frames into a folder of JPEGs"
    )
  arr = np.stack(frames, 0)[..., ::-1]
  names = [f"{i:05d}" for i in range(len(frames))]
  return VideoFrames(np.ascontiguousarray(arr), names, os.path.abspath(path), fps)


def load_video(path) -> VideoFrames:
  """Load a video file (.mp4/.avi/...) or a directory of .jpg/.jpeg/.png frames.

  Returns uint8 RGB frames [T,H,W,3] in natural-sort order (directories) or decode order.
  """
  path = os.fspath(path)
  VideoSource._check_path(path)
  if os.path.isdir(path):
    return _load_frame_dir(path)
  return _load_video_file(path)


# --------------------------------------------------------------------------- PIL bicubic

_PRECISION_BITS = 32 - 8 - 2  # Pillow Resample.c


def _bicubic_filter(x: np.ndarray) -> np.ndarray:
  a = -0.5
  x = np.abs(x)
  out = np.zeros_like(x)
  m1 = x < 1.0
  m2 = (x >= 1.0) & (x < 2.0)
  x1 = x[m1]
  out[m1] = ((a + 2.0) * x1 - (a + 3.0)) * x1 * x1 + 1
  x2 = x[m2]
  out[m2] = (((x2 - 5) * x2 + 8) * x2 - 4) * a
  return out


@functools.lru_cache(maxsize=64)
def _resample_coeffs(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Pillow ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for box (0, in_size).

  Returns (indices int64 [out, K], fixed-point weights int32 [out, K]); padded taps have
  weight 0 and a valid (clamped) index.
  """
  support_base = 2.0  # bicubic
  scale = float(np.float32(in_size)) / out_size  # (double)(in1 - in0) / outSize
  filterscale = max(scale, 1.0)
  support = support_base * filterscale
  ksize = int(math.ceil(support)) * 2 + 1
  idx = np.zeros((out_size, ksize), np.int64)
  w = np.zeros((out_size, ksize), np.int32)
  ss = 1.0 / filterscale
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)  # C (int) truncation toward zero
    xmax = min(int(center + support + 0.5), in_size) - xmin
    xs = np.arange(xmax, dtype=np.float64)
    k = _bicubic_filter((xs + xmin - center + 0.5) * ss)
    ww = 0.0  # sequential sum, as in C
    for v in k:
      ww += float(v)
    if ww != 0.0:
      k = k / ww
    scaled = k * float(1 << _PRECISION_BITS)
    fixed = np.where(k < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
    w[xx, :xmax] = fixed.astype(np.int32)
    idx[xx, :xmax] = np.arange(xmin, xmin + xmax)
    idx[xx, xmax:] = xmin
  idx.setflags(write=False)
  w.setflags(write=False)
  return idx, w


def _resample_axis(img: np.ndarray, axis: int, out_size: int) -> np.ndarray:
  idx, w = _resample_coeffs(img.shape[axis], out_size)
  src = np.moveaxis(img, axis, -2)  # [..., in, C]
  acc = np.full(src.shape[:-2] + (out_size, src.shape[-1]), 1 << (_PRECISION_BITS - 1), np.int32)
  for j in range(idx.shape[1]):
    acc += src[..., idx[:, j], :].astype(np.int32) * w[:, j][:, None]
  out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
  return np.moveaxis(out, -2, axis)


def pil_resize_bicubic(
  img: np.ndarray, size_hw: Tuple[int, int], legacy_pass_order: bool = False
) -> np.ndarray:
  """Bit-exact numpy port of ``PIL.Image.fromarray(img).resize((W, H))`` (BICUBIC, 8-bit).

  ``img``: uint8 [H, W, C] or [H, W].  Two separable passes with a clipped uint8
  intermediate; a pass is skipped when that size is unchanged, like Pillow.

  Pass order: Pillow 13 runs the vertical pass first iff
  ``(H_in - H_out) > 0 and (H_in - H_out) > 2 * (W_in - W_out)`` (height shrinks more than
  twice as much as width), otherwise horizontal first; Pillow <= 12 always ran horizontal
  first (``legacy_pass_order=True``).  The order changes the rounding of the uint8
  intermediate (off-by-one pixels), so match the Pillow of the reference environment when it
  matters.  For the parity fixtures (240x320 -> 256x256) both orders are horizontal-first.
  """
  img = np.asarray(img)
  if img.dtype != np.uint8:
    raise TypeError(f"pil_resize_bicubic expects uint8, got {img.dtype}")
  squeeze = img.ndim == 2
  if squeeze:
    img = img[..., None]
  if img.ndim != 3:
    raise ValueError(f"expected [H,W,C] or [H,W], got shape {img.shape}")
  out_h, out_w = int(size_hw[0]), int(size_hw[1])
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f"output size must be positive, got {size_hw}")
  in_h, in_w = img.shape[0], img.shape[1]
  dh, dw = in_h - out_h, in_w - out_w
  horizontal_first = legacy_pass_order or not (dh > 0 and dh > dw * 2)
  out = img
  for axis in (1, 0) if horizontal_first else (0, 1):
    target = out_w if axis == 1 else out_h
    if img.shape[axis] != target:
      out = _resample_axis(out, axis, target)
  if out is img:
    out = img.copy()
  return out[..., 0] if squeeze else out


# --------------------------------------------------------------------------- normalise


@functools.lru_cache(maxsize=4)
def _norm_lut(mean: Tuple[float, ...], std: Tuple[float, ...]) -> np.ndarray:
  v = (np.arange(256) / 255.0).astype(np.float32)  # float64 /255 then stored as float32
  m = np.asarray(mean, np.float32)[:, None]
  s = np.asarray(std, np.float32)[:, None]
  lut = (v[None, :] - m) / s  # float32 arithmetic, like the in-place torch ops
  lut.setflags(write=False)
  return lut  # [C, 256]


def normalize_u8(frames_u8: np.ndarray, mean=IMG_MEAN, std=IMG_STD) -> np.ndarray:
  """uint8 [..., C] -> float32 ``((u8/255.0).astype(f32) - mean) / std`` (exact, via LUT)."""
  frames_u8 = np.asarray(frames_u8)
  if frames_u8.dtype != np.uint8:
    raise TypeError(f"normalize_u8 expects uint8, got {frames_u8.dtype}")
  lut = _norm_lut(tuple(float(x) for x in mean), tuple(float(x) for x in std))
  c = frames_u8.shape[-1]
  if c != lut.shape[0]:
    raise ValueError(f"expected {lut.shape[0]} channels, got {c}")
  out = np.empty(frames_u8.shape, np.float32)
  for ch in range(c):
    out[..., ch] = lut[ch][frames_u8[..., ch]]
  return out


def preprocess(
  frames_u8: np.ndarray,
  image_size: int,
  mean=IMG_MEAN,
  std=IMG_STD,
  legacy_pass_order: bool = False,
) -> np.ndarray:
  """uint8 [T,H,W,3] RGB -> float32 [T,S,S,3], exactly as the reference frame loader
  (PIL bicubic resize to SxS ignoring aspect, then :func:`normalize_u8`)."""
  frames_u8 = np.asarray(frames_u8)
  if frames_u8.ndim != 4 or frames_u8.shape[-1] != 3:
    raise ValueError(f"expected uint8 [T,H,W,3], got shape {frames_u8.shape}")
  s = int(image_size)
  out = np.empty((frames_u8.shape[0], s, s, 3), np.float32)
  for t in range(frames_u8.shape[0]):
    resized = pil_resize_bicubic(frames_u8[t], (s, s), legacy_pass_order)
    out[t] = normalize_u8(resized, mean, std)
  return out


def load_video_for_model(path, image_size: int):
  """``load_video`` + ``preprocess``: (float32 [T,S,S,3], video_h, video_w, VideoFrames)."""
  vf = load_video(path)
  return preprocess(vf.frames, image_size), vf.height, vf.width, vf


# --------------------------------------------------------------------------- lazy access


class VideoSource:
  """A video opened without decoding it: frames are read on demand (a few kept in an LRU), so a
  long video never sits in memory whole. Same frame order, sizes and errors as `load_video`."""

  def __init__(self, path, cache_frames: int = 32):
    path = os.fspath(path)
    self._check_path(path)
    self.source = os.path.abspath(path)
    self._cache: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
    self._cache_frames = max(1, int(cache_frames))
    self._cap, self._cap_pos = None, 0
    self.fps: Optional[float] = None
    if os.path.isdir(path):
      self._files = _frame_files(path)
      self.frame_names = list(self._files)
      first = read_rgb_image(os.path.join(path, self._files[0]))
    else:
      self._files = None
      self.fps, n, first = _probe_video_file(path)
      self.frame_names = [f"{i:05d}" for i in range(n)]
    self._shape = first.shape
    self._remember(0, first)

  @staticmethod
  def _check_path(path: str) -> None:
    if not os.path.exists(path):
      raise VideoError(
        f"video path {path!r} does not exist; pass an existing video file "
        "(.mp4/.avi) or a directory of .jpg/.png frames"
      )
    if os.path.isdir(path):
      return
    ext = os.path.splitext(path)[1].lower()
    if ext in FRAME_EXTENSIONS:
      raise VideoError(
        f"{path!r} is a single image; pass the directory containing the frames instead"
      )
    if ext not in VIDEO_EXTENSIONS:
      raise VideoError(
        f"unsupported video path {path!r} (extension {ext!r}); pass a video file with "
        f"one of {VIDEO_EXTENSIONS} or a directory of .jpg/.png frames"
      )

  @property
  def num_frames(self) -> int:
    return len(self.frame_names)

  @property
  def height(self) -> int:
    return int(self._shape[0])

  @property
  def width(self) -> int:
    return int(self._shape[1])

  def _remember(self, t: int, img: np.ndarray) -> None:
    self._cache[t] = img
    self._cache.move_to_end(t)
    while len(self._cache) > self._cache_frames:
      self._cache.popitem(last=False)

  def frame(self, t: int) -> np.ndarray:
    """Frame t as uint8 [H,W,3] RGB (VideoError if it cannot be decoded or changes size)."""
    t = int(t)
    if not 0 <= t < self.num_frames:
      raise IndexError(f"frame {t} is outside the video's {self.num_frames} frames")
    if t in self._cache:
      self._cache.move_to_end(t)
      return self._cache[t]
    if self._files is not None:
      name = self._files[t]
      img = read_rgb_image(os.path.join(self.source, name))
      where = f"frame {name!r} in {self.source!r}"
    else:
      img = self._decode(t)
      where = f"frame {t} of video {self.source!r}"
    if img.shape != self._shape:
      raise VideoError(
        f"{where} has size {img.shape[1]}x{img.shape[0]} (WxH) but the first frame has size "
        f"{self._shape[1]}x{self._shape[0]}; all frames of a video must have the same size"
      )
    self._remember(t, img)
    return img

  def frames(self, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) as uint8 [n,H,W,3]."""
    return np.stack([self.frame(t) for t in range(start, stop)], 0)

  def _decode(self, t: int) -> np.ndarray:
    # sequential decoding (seeking by CAP_PROP_POS_FRAMES is not frame-exact for every codec):
    # re-open only to go backwards
    cv2 = _cv2()
    if self._cap is None or t < self._cap_pos:
      if self._cap is not None:
        self._cap.release()
      self._cap, self._cap_pos = cv2.VideoCapture(self.source), 0
    while self._cap_pos < t:
      if not self._cap.grab():
        break
      self._cap_pos += 1
    ok, img = self._cap.read()
    if not ok or img is None:
      raise VideoError(
        f"frame {t} of video {self.source!r} could not be decoded (corrupt file?); re-encode "
        "it or extract frames into a folder of JPEGs"
      )
    self._cap_pos += 1
    return np.ascontiguousarray(img[..., ::-1])

  def close(self) -> None:
    if self._cap is not None:
      self._cap.release()
      self._cap = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # interpreter shutdown
      pass


def _frame_files(path: str) -> List[str]:
  names = [
    p
    for p in os.listdir(path)
    if os.path.splitext(p)[1].lower() in FRAME_EXTENSIONS and os.path.isfile(os.path.join(path, p))
  ]
  if not names:
    raise VideoError(
      f"no frames found in directory {path!r}: expected .jpg/.jpeg/.png files "
      "(e.g. 00000.jpg, 00001.jpg, ...); extract them with "
      "`ffmpeg -i video.mp4 -q:v 2 -start_number 0 DIR/%05d.jpg` or pass the video file"
    )
  return sorted(names, key=natural_sort_key)


def _probe_video_file(path: str):
  """(fps, frame count, frame 0) of a video file; counts by grabbing every frame (container
  frame counts are not reliable), decoding only frame 0."""
  cv2 = _cv2()
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise VideoError(
        f"cannot open video file {path!r} (unsupported codec or corrupt file); "
        "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`) or extract frames "
        "into a folder of JPEGs"
      )
    fps = cap.get(cv2.CAP_PROP_FPS) or None
    ok, first = cap.read()
    if not ok or first is None:
      raise VideoError(
        f"video file {path!r} contains no decodable frames (empty or corrupt); "
        "re-encode it or extract frames into a folder of JPEGs"
      )
    n = 1
    while cap.grab():
      n += 1
  finally:
    cap.release()
  return fps, n, np.ascontiguousarray(first[..., ::-1])


def open_video(path, cache_frames: int = 32) -> VideoSource:
  """A lazily decoded video (file or frame folder); see `VideoSource`."""
  return VideoSource(path, cache_frames)


class ModelFrames:
  """The model's view of a `VideoSource`: float32 [T,S,S,3] preprocessed exactly as `preprocess`,
  computed per access (the predictor caches features, so each frame is normally read once)."""

  dtype = np.dtype(np.float32)
  ndim = 4

  def __init__(self, video: VideoSource, image_size: int):
    self.video, self.image_size = video, int(image_size)

  @property
  def shape(self) -> Tuple[int, int, int, int]:
    s = self.image_size
    return (self.video.num_frames, s, s, 3)

  def __len__(self) -> int:
    return self.video.num_frames

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice):
      idx = range(*index.indices(len(self)))
      if not len(idx):
        return np.zeros((0,) + self.shape[1:], np.float32)
      return preprocess(np.stack([self.video.frame(t) for t in idx], 0), self.image_size)
    t = int(index)
    t = t + len(self) if t < 0 else t
    return preprocess(self.video.frame(t)[None], self.image_size)[0]
