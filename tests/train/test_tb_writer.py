"""TensorBoard logging (tensorboardX): the event files the trainer's Logger writes are read back
record by record (TFRecord framing with masked CRC-32C, checked by an independent CRC below,
and Event protos) and must hold exactly the logged scalars."""

import glob
import json
import math
import os
import struct

import numpy as np
import pytest
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2


def _crc32c(data: bytes) -> int:
  """Bitwise CRC-32C (Castagnoli, reflected 0x82F63B78): slow, independent of tensorboardX."""
  c = 0xFFFFFFFF
  for b in data:
    c ^= b
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
  return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
  c = _crc32c(data)
  return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
  """Event protos of one event file; ValueError naming the offset on a bad or cut record."""
  buf = open(path, "rb").read()
  out, pos = [], 0
  while pos < len(buf):
    if len(buf) - pos < 12:
      raise ValueError(f"truncated record header at offset {pos}")
    (n,) = struct.unpack("<Q", buf[pos : pos + 8])
    if struct.unpack("<I", buf[pos + 8 : pos + 12])[0] != _masked(buf[pos : pos + 8]):
      raise ValueError(f"length CRC mismatch at offset {pos}")
    if len(buf) - pos < 16 + n:
      raise ValueError(f"truncated record at offset {pos}")
    data = buf[pos + 12 : pos + 12 + n]
    if struct.unpack("<I", buf[pos + 12 + n : pos + 16 + n])[0] != _masked(data):
      raise ValueError(f"data CRC mismatch at offset {pos}")
    out.append(event_pb2.Event.FromString(data))
    pos += 16 + n
  return out


def scalars(logdir):
  """[(step, tag, value)] of every event file under logdir, in file then record order."""
  files = sorted(
    glob.glob(os.path.join(str(logdir), "**", "events.out.tfevents.*"), recursive=True)
  )
  assert files, f"no event file under {logdir}"
  return [
    (e.step, v.tag, v.simple_value) for f in files for e in read_events(f) for v in e.summary.value
  ]


def test_crc32c_known_vectors():
  assert _crc32c(b"123456789") == 0xE3069283
  assert _crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
  assert _crc32c(b"\xff" * 32) == 0x62A8AB43


def test_summary_writer_round_trip(tmp_path):
  w = SummaryWriter(str(tmp_path))
  w.add_scalar("loss", 0.5, 0)
  w.add_scalar("loss", np.float32(0.25), 1)
  w.add_scalar("metrics/J&F", 0.875, 2**40)
  w.add_scalar("nan", float("nan"), 4)
  w.close()
  (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  events = read_events(path)
  assert events[0].file_version == "brain.Event:2"
  got = scalars(tmp_path)
  # tensorboardX replaces characters outside [-/\w.] in tags (the trainer's tags have none)
  assert [(s, t) for s, t, _ in got] == [
    (0, "loss"),
    (1, "loss"),
    (2**40, "metrics/J_F"),
    (4, "nan"),
  ]
  assert [v for _, _, v in got[:3]] == [0.5, 0.25, 0.875] and math.isnan(got[3][2])


@pytest.mark.parametrize("where", ["length", "data", "cut"])
def test_reader_detects_damage(tmp_path, where):
  """The read-back is a real check: a flipped or missing byte fails it."""
  w = SummaryWriter(str(tmp_path))
  w.add_scalar("a", 1.0, 1)
  w.close()
  (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  buf = bytearray(open(path, "rb").read())
  second = 16 + struct.unpack("<Q", buf[:8])[0]
  if where == "cut":
    buf = buf[:-2]
  else:
    buf[second + (0 if where == "length" else 12 + 3)] ^= 0x01
  open(path, "wb").write(bytes(buf))
  with pytest.raises(ValueError, match=f"offset {second}"):
    read_events(path)


def test_trainer_logger_writes_scalars_and_truncates_jsonl(tmp_path):
  from sam2pp_jax.train.trainer import Logger

  with open(tmp_path / "metrics.jsonl", "w") as f:  # a killed run logged past step 2
    for s in (1, 2, 3):
      f.write(json.dumps({"step": s, "task": "mask", "core_loss": 1.0}) + "\n")
  log = Logger(str(tmp_path), resume_step=2, quiet=True)
  assert [json.loads(ln)["step"] for ln in open(tmp_path / "metrics.jsonl")] == [1, 2]
  log.log(3, "mask", {"core_loss": np.float32(0.5), "grad_norm": 2.0}, {"train_seconds": 1.5})
  log.log(4, "box", {"core_loss": 0.25}, {})
  log.close()
  assert sorted(scalars(tmp_path / "tb")) == [
    (3, "mask/core_loss", 0.5),
    (3, "mask/grad_norm", 2.0),
    (4, "box/core_loss", 0.25),
  ]
  recs = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in recs] == [1, 2, 3, 4]
  assert recs[2] == {
    "step": 3,
    "task": "mask",
    "core_loss": 0.5,
    "grad_norm": 2.0,
    "train_seconds": 1.5,
  }
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tb"]  # no temp files left


def test_tensorboard_reads_the_files(tmp_path):
  try:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  except ImportError:
    pytest.skip("tensorboard package not installed; cross-check against its reader skipped")
  w = SummaryWriter(str(tmp_path))
  w.add_scalar("loss", 0.5, 3)
  w.close()
  (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  events = list(EventFileLoader(path).Load())
  got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert got == [(3, "loss", 0.5)]
