"""Tests for sam2pp_jax.io: video loading, PIL-exact preprocessing (io.video), palette PNGs
(io.png), atomic writes (io.atomic)."""

import os
import struct
import zlib

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from sam2pp_jax.io import atomic, png  # noqa: E402
from sam2pp_jax.io import video as vio  # noqa: E402
from sam2pp_jax.io.video import VideoError  # noqa: E402

FIXTURE = "/work/shared/parity/dev_small_seed0_box.npz"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _png(path, rgb):
  assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def _flat(value, h=24, w=32):
  img = np.zeros((h, w, 3), np.uint8)
  img[...] = (value, 255 - value, (value * 7) % 256)
  return img


# --------------------------------------------------------------------------- video files


def test_mp4_round_trip(tmp_path):
  path = str(tmp_path / "clip.mp4")
  h, w, n = 48, 64, 6
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
  if not writer.isOpened():
    pytest.skip("OpenCV build cannot write mp4v")
  values = [20 + 40 * i for i in range(n)]
  for v in values:
    writer.write(np.full((h, w, 3), v, np.uint8))
  writer.release()
  vf = vio.load_video(path)
  assert vf.frames.dtype == np.uint8
  assert vf.frames.shape == (n, h, w, 3)
  assert (vf.num_frames, vf.height, vf.width) == (n, h, w)
  assert vf.frame_names == [f"{i:05d}" for i in range(n)]
  assert vf.source == os.path.abspath(path)
  assert vf.fps == pytest.approx(10.0)
  means = vf.frames.reshape(n, -1).mean(1)
  np.testing.assert_allclose(means, values, atol=4)  # lossy codec, order preserved
  x, vh, vw, vf2 = vio.load_video_for_model(path, 32)
  assert x.shape == (n, 32, 32, 3) and x.dtype == np.float32 and (vh, vw) == (h, w)


# --------------------------------------------------------------------------- frame folders


def test_natural_sort_key():
  from natsort import natsorted

  names = ["frame10.jpg", "frame2.jpg", "frame1.jpg", "10.jpg", "9.jpg", "a.jpg", "00011.jpg"]
  got = sorted(names, key=vio.natural_sort_key)
  assert got == ["9.jpg", "10.jpg", "00011.jpg", "a.jpg", "frame1.jpg", "frame2.jpg", "frame10.jpg"]
  assert got == natsorted(names)  # the reference sorts frame names with natsort
  # a name that is a prefix of another (the former hand-written key raised TypeError here)
  assert sorted(["car1", "car", "car10", "car2"], key=vio.natural_sort_key) == [
    "car",
    "car1",
    "car2",
    "car10",
  ]
  # DAVIS / GOT-10k style zero-padded names: numeric order
  pad = [f"{i:08d}.jpg" for i in (10, 2, 1, 100)]
  assert sorted(pad, key=vio.natural_sort_key) == natsorted(pad) == sorted(pad)
  # equal numbers padded differently: natsort keeps the input (os.listdir) order; we break the
  # tie by the plain name so the order never depends on the file system
  for perm in (["1.jpg", "01.jpg", "001.jpg"], ["001.jpg", "1.jpg", "01.jpg"]):
    assert sorted(perm, key=vio.natural_sort_key) == ["001.jpg", "01.jpg", "1.jpg"]


def test_frame_folder_order_and_filtering(tmp_path):
  # natural order (2 < 9 < 10), mixed extensions; non-images and sub-directories ignored
  order = ["0.png", "1.png", "2.png", "9.png", "10.png", "11.PNG"]
  for i, name in enumerate(order):
    _png(tmp_path / name, _flat(10 * i + 5))
  (tmp_path / "notes.txt").write_text("not a frame")
  os.mkdir(tmp_path / "12.jpg")
  vf = vio.load_video(tmp_path)
  assert vf.frame_names == order
  assert vf.frames.shape == (len(order), 24, 32, 3)
  for i in range(len(order)):
    np.testing.assert_array_equal(vf.frames[i], _flat(10 * i + 5))  # RGB, exact for PNG
  assert vf.fps is None


def test_jpeg_folder(tmp_path):
  for i in range(3):
    assert cv2.imwrite(str(tmp_path / f"{i:05d}.jpg"), np.full((16, 20, 3), 60 * i + 30, np.uint8))
  vf = vio.load_video(str(tmp_path))
  assert vf.frames.shape == (3, 16, 20, 3)
  np.testing.assert_allclose(vf.frames.reshape(3, -1).mean(1), [30, 90, 150], atol=2)


# --------------------------------------------------------------------------- errors


def test_error_missing_path(tmp_path):
  p = str(tmp_path / "nope.mp4")
  with pytest.raises(VideoError, match="does not exist") as e:
    vio.load_video(p)
  assert p in str(e.value)
  assert isinstance(e.value, ValueError)


def test_error_empty_or_unreadable_video(tmp_path):
  p = tmp_path / "empty.mp4"
  p.write_bytes(b"")
  with pytest.raises(VideoError) as e:
    vio.load_video(p)
  assert str(p) in str(e.value) and "re-encode" in str(e.value)
  q = tmp_path / "garbage.avi"
  q.write_bytes(os.urandom(2048))
  with pytest.raises(VideoError, match="garbage.avi"):
    vio.load_video(q)


def test_error_unsupported_and_single_image(tmp_path):
  p = tmp_path / "clip.xyz"
  p.write_bytes(b"abc")
  with pytest.raises(VideoError, match="unsupported"):
    vio.load_video(p)
  img = tmp_path / "00000.png"
  _png(img, _flat(3))
  with pytest.raises(VideoError, match="single image"):
    vio.load_video(img)


def test_error_dir_without_frames(tmp_path):
  (tmp_path / "readme.txt").write_text("x")
  with pytest.raises(VideoError, match="no frames found") as e:
    vio.load_video(tmp_path)
  assert str(tmp_path) in str(e.value) and "ffmpeg" in str(e.value)


def test_error_frame_size_mismatch(tmp_path):
  _png(tmp_path / "0.png", _flat(1, 24, 32))
  _png(tmp_path / "1.png", _flat(2, 24, 32))
  _png(tmp_path / "2.png", _flat(3, 20, 30))
  _png(tmp_path / "3.png", _flat(4, 10, 10))
  with pytest.raises(VideoError) as e:
    vio.load_video(tmp_path)
  msg = str(e.value)
  assert "'2.png'" in msg and "30x20" in msg and "32x24" in msg and "'0.png'" in msg
  assert "3.png" not in msg


def test_error_corrupt_image(tmp_path):
  _png(tmp_path / "0.png", _flat(1))
  (tmp_path / "1.jpg").write_bytes(b"\xff\xd8\xff garbage " + os.urandom(64))
  with pytest.raises(VideoError, match="corrupt") as e:
    vio.load_video(tmp_path)
  assert os.path.join(str(tmp_path), "1.jpg") in str(e.value)


# --------------------------------------------------------------------------- normalisation


def test_normalize_matches_reference_formula():
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  ref = ((u8 / 255.0).astype(np.float32) - MEAN) / STD  # float64 /255 -> f32 -> f32 ops
  got = vio.normalize_u8(u8)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, ref)
  lut = ((np.arange(256) / 255.0).astype(np.float32)[None] - MEAN[:, None]) / STD[:, None]
  for c in range(3):
    np.testing.assert_array_equal(got[..., c], lut[c][u8[..., c]])


@pytest.mark.skipif(not os.path.exists(FIXTURE), reason="parity fixture not present")
def test_fixture_frames_are_lut_of_uint8():
  """inputs/frames must be lut[c, u8] for some uint8 image: recover it and re-normalise."""
  z = np.load(FIXTURE)
  frames = z["inputs/frames"]  # [T,3,S,S]
  if "inputs/frames_u8" in z.files:
    u8 = z["inputs/frames_u8"]
  else:
    lut = vio.normalize_u8(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1))  # [256,3]
    u8 = np.empty(frames.transpose(0, 2, 3, 1).shape, np.uint8)
    nhwc = frames.transpose(0, 2, 3, 1)
    for c in range(3):
      assert np.all(np.diff(lut[:, c]) > 0)
      idx = np.clip(np.searchsorted(lut[:, c], nhwc[..., c]), 0, 255)
      u8[..., c] = idx
  np.testing.assert_array_equal(vio.normalize_u8(u8).transpose(0, 3, 1, 2), frames)


# --------------------------------------------------------------------------- PIL-exact resize


def test_resize_identity_and_shapes():
  img = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
  out = vio.pil_resize_bicubic(img, (9, 11))
  np.testing.assert_array_equal(out, img)
  assert out is not img
  assert vio.pil_resize_bicubic(img[..., 0], (4, 5)).shape == (4, 5)
  flat = np.full((30, 40, 3), 77, np.uint8)  # constant image stays constant, up and down
  for size in [(7, 9), (64, 50), (256, 256)]:
    assert np.all(vio.pil_resize_bicubic(flat, size) == 77)
  with pytest.raises(TypeError):
    vio.pil_resize_bicubic(img.astype(np.float32), (4, 4))


def _installed_pillow_is_legacy() -> bool:
  """Pillow < 13 runs the horizontal pass first (see pil_resize_bicubic). The oracle is the
  installed Pillow, so the port is checked in the pass order that Pillow uses: the app extra
  (gradio caps pillow < 13) installs a legacy Pillow beside the package."""
  import PIL

  return int(PIL.__version__.split(".")[0]) < 13


def test_resize_matches_pillow_random_sizes():
  from PIL import Image  # the oracle for resizing

  legacy = _installed_pillow_is_legacy()

  rng = np.random.default_rng(0)
  sizes = [1, 2, 3, 5, 7, 8, 13, 31, 64, 100, 240, 257, 320]
  for _ in range(250):
    h, w, oh, ow = (int(v) for v in rng.choice(sizes, 4))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((ow, oh)))
    got = vio.pil_resize_bicubic(img, (oh, ow), legacy)
    assert np.array_equal(ref, got), (h, w, oh, ow)
  for h, w, s in [(240, 320, 256), (480, 854, 512), (700, 300, 256), (60, 1000, 128)]:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((s, s)))
    assert np.array_equal(ref, vio.pil_resize_bicubic(img, (s, s), legacy)), (h, w, s)


def test_preprocess_matches_reference_loader(tmp_path):
  """End to end: the reference's PIL path on a PNG folder == load_video + preprocess."""
  from PIL import Image  # the oracle for resizing

  rng = np.random.default_rng(1)
  yy, xx = np.mgrid[0:240, 0:320]
  for t in range(3):
    base = 128 + 100 * np.sin(xx / (7.0 + t) + yy / 11.0)
    img = np.clip(base[..., None] + rng.normal(0, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
    _png(tmp_path / f"{t:05d}.png", img)
  s = 256
  ref = []
  for t in range(3):  # mirrors the reference _load_img_as_tensor + in-place normalisation
    arr = np.array(Image.open(tmp_path / f"{t:05d}.png").convert("RGB").resize((s, s)))
    ref.append((((arr / 255.0).astype(np.float32)) - MEAN) / STD)
  ref = np.stack(ref)
  got, vh, vw, _ = vio.load_video_for_model(tmp_path, s)
  assert (vh, vw) == (240, 320) and got.shape == (3, s, s, 3) and got.dtype == np.float32
  np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------- palette PNG


def test_palette_png_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 6, (37, 53), dtype=np.uint8)
  path = tmp_path / "00000.png"
  png.save_palette_png(path, ids)
  got, pal = png.read_palette_png(path)
  np.testing.assert_array_equal(got, ids)
  np.testing.assert_array_equal(pal, png.davis_palette())
  assert tuple(pal[1]) == (128, 0, 0) and tuple(pal[2]) == (0, 128, 0)
  # overwrite atomically with a custom palette; no temp files left behind
  custom = np.array([[0, 0, 0], [255, 255, 255], [1, 2, 3]], np.uint8)
  png.save_palette_png(path, (ids % 3).astype(np.int64), custom)
  got, pal = png.read_palette_png(str(path))
  np.testing.assert_array_equal(got, ids % 3)
  np.testing.assert_array_equal(pal, custom)
  assert sorted(os.listdir(tmp_path)) == ["00000.png"]
  with pytest.raises(ValueError):
    png.save_palette_png(tmp_path / "x.png", np.full((2, 2), 300))
  # OpenCV can decode what we wrote (as colours)
  bgr = cv2.imread(str(path))
  np.testing.assert_array_equal(bgr[..., ::-1], custom[ids % 3])


def _chunk(tag, data):
  return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _paeth(a, b, c):
  p = a + b - c
  pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
  return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def test_palette_png_all_filter_types(tmp_path):
  """Rows filtered with None/Sub/Up/Average/Paeth (PNG spec, bpp=1) decode exactly."""
  rng = np.random.default_rng(3)
  h, w = 10, 13
  ids = rng.integers(0, 256, (h, w)).astype(np.int64)
  raw = b""
  prev = np.zeros(w, np.int64)
  for y in range(h):
    ft = y % 5
    row = ids[y]
    out = []
    for x in range(w):
      a = int(row[x - 1]) if x else 0
      b = int(prev[x])
      c = int(prev[x - 1]) if x else 0
      pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ft]
      out.append((int(row[x]) - pred) & 0xFF)
    raw += bytes([ft] + out)
    prev = row
  pal = png.davis_palette().tobytes()
  data = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
    + _chunk(b"PLTE", pal)
    + _chunk(b"IDAT", zlib.compress(raw)[:20])
    + _chunk(b"IDAT", zlib.compress(raw)[20:])  # split IDAT
    + _chunk(b"IEND", b"")
  )
  (tmp_path / "f.png").write_bytes(data)
  got, _ = png.read_palette_png(tmp_path / "f.png")
  np.testing.assert_array_equal(got, ids.astype(np.uint8))


def test_palette_png_fallbacks_and_errors(tmp_path):
  gray = np.random.default_rng(0).integers(0, 4, (8, 9), dtype=np.uint8)
  assert cv2.imwrite(str(tmp_path / "g.png"), gray)
  got, pal = png.read_palette_png(tmp_path / "g.png")
  assert pal is None
  np.testing.assert_array_equal(got, gray)
  with pytest.raises(VideoError, match="does not exist"):
    png.read_palette_png(tmp_path / "missing.png")
  (tmp_path / "bad.png").write_bytes(b"not a png")
  with pytest.raises(VideoError, match="bad.png"):
    png.read_palette_png(tmp_path / "bad.png")


def test_palette_png_pillow_interop(tmp_path):
  from PIL import Image

  ids = np.random.default_rng(0).integers(0, 4, (21, 19), dtype=np.uint8)
  png.save_palette_png(tmp_path / "ours.png", ids)
  im = Image.open(tmp_path / "ours.png")
  assert im.mode == "P"
  np.testing.assert_array_equal(np.array(im), ids)
  for bits in (1, 2, 4, 8):  # low bit-depth palette PNGs written by pillow
    sub = (ids % (1 << min(bits, 2))).astype(np.uint8)
    pim = Image.frombytes("P", (sub.shape[1], sub.shape[0]), sub.tobytes())
    pim.putpalette(png.davis_palette()[: 1 << bits].ravel().tolist())
    p = tmp_path / f"pil{bits}.png"
    pim.save(p, bits=bits)
    got, pal = png.read_palette_png(p)
    np.testing.assert_array_equal(got, sub)
    assert pal is not None


def test_palette_png_truncated_is_a_video_error(tmp_path):
  ids = np.random.default_rng(0).integers(0, 4, (40, 50), dtype=np.uint8)
  png.save_palette_png(tmp_path / "ok.png", ids)
  data = (tmp_path / "ok.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(VideoError, match="cut.png"):
    png.read_palette_png(tmp_path / "cut.png")


def test_palette_png_values_match_the_shared_davis_files():
  """The eval tests' DAVIS-style files: indices equal OpenCV's colours mapped through the
  palette (an independent decoder), palette = DAVIS."""
  import glob

  files = sorted(glob.glob("/work/shared/metrics/vos_dev/**/*.png", recursive=True))
  if not files:
    pytest.skip("shared metric cases not present")
  dav = png.davis_palette()
  for f in files[:: max(1, len(files) // 20)]:
    ids, pal = png.read_palette_png(f)
    assert ids.dtype == np.uint8 and ids.flags.writeable
    np.testing.assert_array_equal(pal[: len(dav)], dav[: len(pal)])
    bgr = cv2.imread(f, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[..., ::-1], pal[ids])


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_get_umask_permissions(tmp_path):
  import stat

  from sam2pp_jax.tracking.outputs import write_mask_dir

  umask = os.umask(0o022)
  try:
    atomic.atomic_write_bytes(tmp_path / "a.txt", b"x")
    d = write_mask_dir(tmp_path / "seq", ["00000.jpg"], [np.zeros((4, 4), np.uint8)])
  finally:
    os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(d).st_mode) == 0o755


def test_atomic_path_publishes_only_on_success(tmp_path):
  target = tmp_path / "out.mp4"
  atomic.atomic_write_text(target, "old")
  with pytest.raises(RuntimeError):
    with atomic.atomic_path(target, suffix=".mp4") as tmp:
      assert tmp.endswith(".mp4") and os.path.dirname(tmp) == str(tmp_path)
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("writer failed")
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.mp4"]
  with atomic.atomic_path(target) as tmp:
    with open(tmp, "w") as f:
      f.write("new")
    assert target.read_text() == "old"  # not visible before the block ends
  assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.mp4"]


def test_atomic_dir_replaces_whole_folder(tmp_path):
  final = tmp_path / "a" / "ckpt"  # parents are created
  with atomic.atomic_dir(final) as tmp:
    (open(os.path.join(tmp, "one"), "w")).close()
  assert os.listdir(final) == ["one"]
  with pytest.raises(KeyError):
    with atomic.atomic_dir(final) as tmp:
      (open(os.path.join(tmp, "two"), "w")).close()
      raise KeyError("stop")
  assert os.listdir(final) == ["one"] and os.listdir(tmp_path / "a") == ["ckpt"]
  with atomic.atomic_dir(final) as tmp:
    (open(os.path.join(tmp, "two"), "w")).close()
  assert os.listdir(final) == ["two"] and os.listdir(tmp_path / "a") == ["ckpt"]
