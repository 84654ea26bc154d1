"""Palette (indexed-colour) PNG masks, DAVIS / YouTube-VOS style: pixel value = object id.

Masks are written as 8-bit palette PNGs with unfiltered rows and one zlib (level 6) stream,
byte-identical to what Pillow writes for them. Reading takes a numpy/zlib fast path for exactly
such files (DAVIS and YouTube-VOS annotations, Pillow's and our own output): measured in
`bench/eval_metrics.py`, Pillow's decoder is slower on them and OpenCV slower still (it only
decodes palette PNGs to colours). Every other palette PNG (1/2/4-bit, filtered rows,
interlaced) is decoded by Pillow; images without a palette fall back to OpenCV (single-channel
files keep their values, colour files are converted to grayscale) with palette ``None``.

Public API: ``davis_palette(n=256)``; ``save_palette_png(path, mask_ids, palette=None)``
(atomic); ``read_palette_png(path) -> (ids uint8 [H,W], palette uint8 [N,3] or None)``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Optional, Tuple

import numpy as np

from sam2pp_jax.io.atomic import atomic_write_bytes
from sam2pp_jax.io.video import VideoError

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
  return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def save_palette_png(path, mask_ids: np.ndarray, palette=None) -> None:
  """Write uint8 [H,W] index image as an 8-bit palette PNG (DAVIS palette by default),
  atomically."""
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
  raw = np.concatenate([np.zeros((h, 1), np.uint8), ids], axis=1).tobytes()  # filter 0 rows
  atomic_write_bytes(
    path,
    _PNG_SIG
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
    + _chunk(b"PLTE", pal.tobytes())
    + _chunk(b"IDAT", zlib.compress(raw, 6))
    + _chunk(b"IEND", b""),
  )


def _read_plain_palette_png(data: bytes):
  """(ids, palette) of an 8-bit, non-interlaced palette PNG whose rows are all unfiltered;
  None for any other file (the caller hands those to Pillow)."""
  if not data.startswith(_PNG_SIG) or data[12:16] != b"IHDR":
    return None
  w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
  if (depth, ctype, interlace) != (8, 3, 0):
    return None
  pos, plte, idat = 8, None, []
  while pos + 8 <= len(data):
    (n,) = struct.unpack(">I", data[pos : pos + 4])
    tag = data[pos + 4 : pos + 8]
    if tag == b"PLTE":
      plte = np.frombuffer(data[pos + 8 : pos + 8 + n], np.uint8).reshape(-1, 3).copy()
    elif tag == b"IDAT":
      idat.append(data[pos + 8 : pos + 8 + n])
    elif tag == b"IEND":
      break
    pos += 12 + n
  rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
  if plte is None or rows.size < h * (w + 1):
    return None
  rows = rows[: h * (w + 1)].reshape(h, w + 1)
  if rows[:, 0].any():  # a filtered row: Pillow undoes the filters
    return None
  return rows[:, 1:].copy(), plte


def read_palette_png(path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """Read a mask PNG as index values: (ids [H,W], palette [N,3] or None).

  Palette PNGs give their indices and palette; anything else is decoded by OpenCV
  (single-channel images keep their values, colour images are converted to grayscale) with
  palette ``None``.
  """
  from PIL import Image, UnidentifiedImageError

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoError(f"mask file {path!r} does not exist")
  with open(path, "rb") as f:
    data = f.read()
  try:
    plain = _read_plain_palette_png(data)
    if plain is not None:
      return plain
    with Image.open(io.BytesIO(data), formats=("PNG",)) as im:
      if im.mode == "P":
        return np.array(im), np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
  except UnidentifiedImageError:
    pass  # not a PNG: OpenCV below
  except (OSError, SyntaxError, ValueError, zlib.error, struct.error) as e:
    raise VideoError(f"cannot decode palette PNG {path!r}: {e}; re-save the mask") from e
  import cv2

  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
  if img is None:
    raise VideoError(f"cannot decode mask image {path!r} (corrupt or not an image)")
  if img.ndim == 3:
    code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    img = cv2.cvtColor(img, code)
  return img, None
