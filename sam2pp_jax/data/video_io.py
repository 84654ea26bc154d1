"""Video input / mask PNG I/O matching the reference predictor's preprocessing.

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
  would ignore it).  Natural sort is a local re-implementation of natsort's default
  algorithm (alternating text / integer chunks, ties broken by the plain string).
* Images are decoded with OpenCV (``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION`` so EXIF
  rotation is *not* applied, like ``PIL.Image.open``), converted BGR->RGB.  For PNG this is
  exact; for JPEG both libraries use libjpeg(-turbo) ISLOW defaults and normally agree.
* Runtime never needs pillow: :func:`pil_resize_bicubic` is a numpy port of Pillow's
  ``Resample.c`` 8-bit path (verified bit-exact against pillow 13 in the tests; see its
  docstring for the pass-order rule that changed in Pillow 13).

Public API
----------
``VideoError(ValueError)``; ``VideoFrames`` (frames uint8 [T,H,W,3] RGB, frame_names,
source, fps); ``load_video(path)``; ``natural_sort_key(name)``;
``pil_resize_bicubic(img_u8, (out_h, out_w))``; ``normalize_u8(frames_u8)``;
``preprocess(frames_u8, image_size) -> float32 [T,S,S,3]``;
``load_video_for_model(path, image_size) -> (float32 [T,S,S,3], video_h, video_w, VideoFrames)``;
``save_palette_png(path, mask_ids, palette=None)``; ``read_palette_png(path) -> (ids, palette)``;
``davis_palette()``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import struct
import tempfile
import zlib
from typing import List, Optional, Tuple

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


_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(name: str):
    """natsort-style key: ``'a10b' -> ('a', 10, 'b')`` (always str,int,str,... alternating)."""
    parts = _DIGITS.split(name)
    key = tuple(int(p) if i % 2 else p for i, p in enumerate(parts))
    return key + (name,)


def _cv2():
    import cv2  # local import: keeps module import cheap

    return cv2


def _read_rgb_image(path: str) -> np.ndarray:
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
    names = [
        p
        for p in os.listdir(path)
        if os.path.splitext(p)[1].lower() in FRAME_EXTENSIONS
        and os.path.isfile(os.path.join(path, p))
    ]
    if not names:
        raise VideoError(
            f"no frames found in directory {path!r}: expected .jpg/.jpeg/.png files "
            "(e.g. 00000.jpg, 00001.jpg, ...); extract them with "
            "`ffmpeg -i video.mp4 -q:v 2 -start_number 0 DIR/%05d.jpg` or pass the video file"
        )
    names.sort(key=natural_sort_key)
    frames = []
    ref_shape = None
    for name in names:
        img = _read_rgb_image(os.path.join(path, name))
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
    if not os.path.exists(path):
        raise VideoError(
            f"video path {path!r} does not exist; pass an existing video file "
            "(.mp4/.avi) or a directory of .jpg/.png frames"
        )
    if os.path.isdir(path):
        return _load_frame_dir(path)
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
    for axis in ((1, 0) if horizontal_first else (0, 1)):
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


# --------------------------------------------------------------------------- palette PNG

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def davis_palette(n: int = 256) -> np.ndarray:
    """The standard DAVIS / PASCAL VOC colour map, uint8 [n, 3]."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def save_palette_png(path, mask_ids: np.ndarray, palette=None) -> None:
    """Write uint8 [H,W] index image as an 8-bit palette PNG, atomically (tmp + os.replace)."""
    path = os.fspath(path)
    ids = np.asarray(mask_ids)
    if ids.ndim != 2:
        raise ValueError(f"mask_ids must be [H,W], got shape {ids.shape}")
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError("mask ids must be in 0..255 for an 8-bit palette PNG")
        ids = ids.astype(np.uint8)
    pal = davis_palette() if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    if not 1 <= pal.shape[0] <= 256:
        raise ValueError(f"palette must have 1..256 entries, got {pal.shape[0]}")
    h, w = ids.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), ids], axis=1).tobytes()  # filter 0
    png = (
        _PNG_SIG
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
        + _chunk(b"PLTE", pal.tobytes())
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )
    atomic_write_bytes(path, png)


def default_permissions(path: str, directory: bool = False) -> None:
    """Give a temp file/dir (created 0600/0700 by tempfile) the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder + os.replace (never partial)."""
    path = os.path.abspath(os.fspath(path))
    d, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _unfilter(data: bytes, h: int, stride: int) -> np.ndarray:
    buf = np.frombuffer(data, np.uint8)
    if buf.size < h * (stride + 1):
        raise ValueError("truncated image data")
    buf = buf[: h * (stride + 1)].reshape(h, stride + 1)
    if not buf[:, 0].any():  # every row unfiltered (what PIL writes for palette images)
        return buf[:, 1:].copy()
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        ft, line = int(buf[y, 0]), buf[y, 1:]
        if ft == 0:
            cur = line.copy()
        elif ft == 1:  # Sub, bpp = 1
            cur = (np.cumsum(line, dtype=np.int64) & 0xFF).astype(np.uint8)
        elif ft == 2:  # Up
            cur = line + prev
        elif ft in (3, 4):
            cur = np.empty(stride, np.uint8)
            left = 0
            for x in range(stride):
                up = int(prev[x])
                if ft == 3:
                    pred = (left + up) >> 1
                else:
                    ul = int(prev[x - 1]) if x else 0
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if (pa <= pb and pa <= pc) else (up if pb <= pc else ul)
                left = (int(line[x]) + pred) & 0xFF
                cur[x] = left
        else:
            raise ValueError(f"bad PNG filter type {ft}")
        out[y] = cur
        prev = cur
    return out


def _palette_ids_via_opencv(data: bytes, raw: bytes, h: int, stride: int, plte: np.ndarray):
    """Index map through OpenCV's decoder when rows use the Average/Paeth filters (our
    unfilter is a Python loop for those): decode to colours, map colours back to indices.
    Exact only when the palette's colours are distinct; returns None otherwise."""
    filters = np.frombuffer(raw, np.uint8)[: h * (stride + 1)][:: stride + 1]
    if not np.any(filters >= 3):
        return None
    packed = (plte[:, 0].astype(np.int64) << 16) | (plte[:, 1].astype(np.int64) << 8) | plte[:, 2]
    if np.unique(packed).size != packed.size:
        return None
    cv2 = _cv2()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.shape[:2] != (h, stride):
        return None
    key = (img[..., 2].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 0]
    order = np.argsort(packed)
    pos = np.searchsorted(packed[order], key)
    pos = np.minimum(pos, packed.size - 1)
    if not np.array_equal(packed[order][pos], key):
        return None
    return np.ascontiguousarray(order[pos].astype(np.uint8))


def _parse_palette_png(data: bytes):
    """Return (ids uint8 [H,W], palette uint8 [N,3]) or None if not a simple palette PNG."""
    if not data.startswith(_PNG_SIG):
        return None
    pos, ihdr, plte, idat = 8, None, None, []
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"PLTE":
            plte = np.frombuffer(body, np.uint8).reshape(-1, 3).copy()
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if ihdr is None:
        return None
    w, h, depth, ctype, _, _, interlace = ihdr
    if ctype != 3 or interlace != 0 or depth not in (1, 2, 4, 8):
        return None
    stride = (w * depth + 7) // 8
    raw = zlib.decompress(b"".join(idat))
    if depth == 8 and plte is not None:
        fast = _palette_ids_via_opencv(data, raw, h, stride, plte)
        if fast is not None:
            return fast, plte
    rows = _unfilter(raw, h, stride)
    if depth == 8:
        ids = rows[:, :w]
    else:
        bits = np.unpackbits(rows, axis=1).reshape(h, stride * 8 // depth, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        ids = (bits * weights).sum(-1).astype(np.uint8)[:, :w]
    return np.ascontiguousarray(ids), plte


def read_palette_png(path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a mask PNG as index values: (ids [H,W], palette [N,3] or None).

    8-bit (or 1/2/4-bit) non-interlaced palette PNGs are parsed here (OpenCV would expand
    them to colours); anything else falls back to OpenCV (single-channel images keep their
    values, colour images are converted to grayscale) with palette ``None``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"mask file {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        parsed = _parse_palette_png(data)
    except (ValueError, zlib.error, struct.error) as e:
        raise VideoError(f"cannot decode palette PNG {path!r}: {e}; re-save the mask") from e
    if parsed is not None:
        return parsed
    cv2 = _cv2()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise VideoError(f"cannot decode mask image {path!r} (corrupt or not an image)")
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
    return img, None
