"""TensorBoard event writer: crc32c vectors, write/read round trip, framing, corruption detection."""

import math
import os
import struct

import numpy as np
import pytest

from sam2pp_jax.train import tb_writer
from sam2pp_jax.train.tb_writer import EventWriter, crc32c, read_events, read_scalars


def test_crc32c_known_vectors():
  assert crc32c(b"") == 0
  assert crc32c(b"123456789") == 0xE3069283
  assert crc32c(b"a") == 0xC1D04330
  assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
  assert crc32c(b"\xff" * 32) == 0x62A8AB43
  assert crc32c(bytes(range(32))) == 0x46DD794E
  # incremental use equals one-shot
  assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_masked_crc_formula():
  c = crc32c(b"hello")
  expect = ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
  assert tb_writer.masked_crc32c(b"hello") == expect


def test_varint_negative_step_round_trip():
  assert tb_writer._varint(300) == b"\xac\x02"
  assert len(tb_writer._varint(-1)) == 10
  ev = tb_writer.parse_event(tb_writer._encode_event(1.5, step=-7, values=[("x", 1.0)]))
  assert ev["step"] == -7 and ev["wall_time"] == 1.5


def test_write_read_round_trip(tmp_path):
  logdir = tmp_path / "logs" / "run"
  with EventWriter(str(logdir), filename_suffix=".v2") as w:
    w.scalar("loss", 0.5, step=0)
    w.scalar("loss", np.float32(0.25), step=1, wall_time=123.0)
    w.scalars({"lr": 1e-4, "metrics/J&F": 0.875, "ünï": -3.0}, step=2 ** 40)
    w.scalar("big", 1e300, step=3)
    w.scalar("nan", float("nan"), step=4)
    path = w.path
  assert w.closed
  name = os.path.basename(path)
  assert name.startswith("events.out.tfevents.") and name.endswith(".v2")
  assert os.path.dirname(path) == str(logdir)

  got = read_scalars(path)
  assert [(s, t) for s, t, _ in got] == [
      (0, "loss"), (1, "loss"), (2 ** 40, "lr"), (2 ** 40, "metrics/J&F"), (2 ** 40, "ünï"),
      (3, "big"), (4, "nan")]
  vals = [v for _, _, v in got]
  assert vals[:5] == [0.5, 0.25, float(np.float32(1e-4)), 0.875, -3.0]
  assert vals[5] == math.inf and math.isnan(vals[6])
  assert read_events(path)[2]["wall_time"] == 123.0
  # a directory reads all its event files
  from_dir = read_scalars(str(logdir))
  assert from_dir[:6] == got[:6] and from_dir[6][:2] == (4, "nan") and math.isnan(from_dir[6][2])


def test_first_record_is_file_version(tmp_path):
  w = EventWriter(str(tmp_path))
  w.flush()
  events = read_events(w.path)
  assert len(events) == 1
  assert events[0]["file_version"] == "brain.Event:2"
  assert events[0]["values"] == [] and events[0]["step"] == 0
  assert abs(events[0]["wall_time"] - int(os.path.basename(w.path).split(".")[3])) < 2
  w.close()
  with pytest.raises(ValueError):
    w.scalar("x", 1.0, step=0)


def test_two_writers_same_dir_do_not_clobber(tmp_path):
  with EventWriter(str(tmp_path)) as a, EventWriter(str(tmp_path)) as b:
    a.scalar("a", 1.0, step=1)
    b.scalar("b", 2.0, step=1)
  assert a.path != b.path
  assert sorted(read_scalars(str(tmp_path))) == [(1, "a", 1.0), (1, "b", 2.0)]


def test_framing_layout(tmp_path):
  with EventWriter(str(tmp_path)) as w:
    w.scalar("t", 2.0, step=5)
  buf = open(w.path, "rb").read()
  (n,) = struct.unpack("<Q", buf[:8])
  assert struct.unpack("<I", buf[8:12])[0] == tb_writer.masked_crc32c(buf[:8])
  data = buf[12:12 + n]
  assert struct.unpack("<I", buf[12 + n:16 + n])[0] == tb_writer.masked_crc32c(data)
  assert data[:1] == b"\x09" and b"brain.Event:2" in data


@pytest.mark.parametrize("where", ["length", "data"])
def test_flipped_byte_detected(tmp_path, where):
  with EventWriter(str(tmp_path)) as w:
    w.scalar("a", 1.0, step=1)
    w.scalar("b", 2.0, step=2)
  buf = bytearray(open(w.path, "rb").read())
  first_len = struct.unpack("<Q", buf[:8])[0]
  second = 16 + first_len
  idx = second + (0 if where == "length" else 12 + 3)
  buf[idx] ^= 0x01
  open(w.path, "wb").write(bytes(buf))
  with pytest.raises(ValueError, match=rf"{os.path.basename(w.path)}.*offset {second}"):
    read_scalars(w.path)


def test_truncated_file_detected(tmp_path):
  with EventWriter(str(tmp_path)) as w:
    w.scalar("a", 1.0, step=1)
  buf = open(w.path, "rb").read()
  open(w.path, "wb").write(buf[:-2])
  with pytest.raises(ValueError, match="truncated"):
    read_scalars(w.path)


def test_tensorboard_reads_our_file(tmp_path):
  try:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  except ImportError:
    pytest.skip("tensorboard package not installed; cross-check against its reader skipped")
  with EventWriter(str(tmp_path)) as w:
    w.scalar("loss", 0.5, step=3)
    w.scalars({"a": 1.0, "b": 2.0}, step=4)
  events = list(EventFileLoader(w.path).Load())
  assert events[0].file_version == "brain.Event:2"
  got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert got == [(3, "loss", 0.5), (4, "a", 1.0), (4, "b", 2.0)]
