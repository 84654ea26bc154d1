"""Dependency-free TensorBoard scalar event writer/reader (TFRecord framing + hand-encoded protos).

Lets training log curves TensorBoard can display without pulling in tensorflow or tensorboardX.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from typing import Iterator, List, Mapping, Optional, Tuple

FILE_VERSION = "brain.Event:2"
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_F32_MAX = 3.4028234663852886e38


def _make_crc32c_table():
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
  """CRC-32C (Castagnoli, reflected poly 0x82F63B78); `crc` continues a previous value."""
  table = _CRC32C_TABLE
  c = crc ^ _U32
  for b in data:
    c = table[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ _U32


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2^32)."""
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + _MASK_DELTA) & _U32


# ---------------------------------------------------------------- protobuf encoding

def _varint(n: int) -> bytes:
  n &= _U64  # negative int64 -> two's complement, 10 bytes, as protobuf does
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint((field << 3) | wire)


def _len_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def _f32(value: float) -> bytes:
  v = float(value)
  if math.isfinite(v) and abs(v) > _F32_MAX:  # struct refuses; float32 cast would overflow
    v = math.copysign(math.inf, v)
  return struct.pack("<f", v)


def _encode_value(tag: str, value: float) -> bytes:
  """Summary.Value {string tag = 1; float simple_value = 2;}"""
  if not isinstance(tag, str):
    raise TypeError(f"tag must be str, got {type(tag).__name__}")
  return _len_delimited(1, tag.encode("utf-8")) + _key(2, 5) + _f32(value)


def _encode_event(wall_time: float, step: int = 0, file_version: Optional[str] = None,
                  values: Optional[List[Tuple[str, float]]] = None) -> bytes:
  """Event {double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;}"""
  out = _key(1, 1) + struct.pack("<d", float(wall_time))
  if step:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _len_delimited(3, file_version.encode("utf-8"))
  if values is not None:
    summary = b"".join(_len_delimited(1, _encode_value(t, v)) for t, v in values)
    out += _len_delimited(5, summary)
  return out


def _frame(data: bytes) -> bytes:
  """TFRecord: u64 len, masked crc(len), data, masked crc(data); all little endian."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data
          + struct.pack("<I", masked_crc32c(data)))


# ---------------------------------------------------------------- writer

class EventWriter:
  """Appends scalar summaries to a fresh `events.out.tfevents.<time>.<host><suffix>` file.

  If that name already exists (two writers in the same second), `.<n>` is appended before the
  suffix; TensorBoard picks up any file whose name contains "tfevents".
  """

  def __init__(self, logdir: str, filename_suffix: str = ""):
    os.makedirs(logdir, exist_ok=True)
    self.logdir = logdir
    now = time.time()
    base = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
    n = 0
    while True:
      path = base + (f".{n}" if n else "") + filename_suffix
      try:
        self._f = open(path, "xb")
        break
      except FileExistsError:
        n += 1
    self.path = path
    self._f.write(_frame(_encode_event(now, file_version=FILE_VERSION)))
    self._f.flush()

  @property
  def closed(self) -> bool:
    return self._f.closed

  def _write(self, step: int, values: List[Tuple[str, float]], wall_time: Optional[float]):
    if self._f.closed:
      raise ValueError(f"EventWriter for {self.path} is closed")
    wt = time.time() if wall_time is None else wall_time
    self._f.write(_frame(_encode_event(wt, step=step, values=values)))

  def scalar(self, tag: str, value: float, step: int, wall_time: Optional[float] = None):
    """Log one scalar (stored as float32, like TensorBoard's simple_value)."""
    self._write(step, [(tag, float(value))], wall_time)

  def scalars(self, values: Mapping[str, float], step: int, wall_time: Optional[float] = None):
    """Log several scalars at one step, as one event whose summary holds them all."""
    items = [(t, float(v)) for t, v in values.items()]
    if items:
      self._write(step, items, wall_time)

  def flush(self):
    if not self._f.closed:
      self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.flush()
      self._f.close()

  def __enter__(self) -> "EventWriter":
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    f = getattr(self, "_f", None)
    if f is not None and not f.closed:
      f.close()


# ---------------------------------------------------------------- reader

def read_records(path: str) -> Iterator[Tuple[int, bytes]]:
  """Yield (offset, data) of each TFRecord in `path`, checking both CRCs.

  A bad CRC or a truncated record raises ValueError naming the file and the record's offset.
  """
  with open(path, "rb") as f:
    buf = f.read()
  pos, end = 0, len(buf)
  while pos < end:
    if pos + 12 > end:
      raise ValueError(f"{path}: truncated record header at offset {pos}")
    header = buf[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (len_crc,) = struct.unpack("<I", buf[pos + 8:pos + 12])
    if masked_crc32c(header) != len_crc:
      raise ValueError(f"{path}: corrupt record length (crc mismatch) at offset {pos}")
    start = pos + 12
    if start + length + 4 > end:
      raise ValueError(f"{path}: truncated record data at offset {pos}")
    data = buf[start:start + length]
    (data_crc,) = struct.unpack("<I", buf[start + length:start + length + 4])
    if masked_crc32c(data) != data_crc:
      raise ValueError(f"{path}: corrupt record data (crc mismatch) at offset {pos}")
    yield pos, data
    pos = start + length + 4


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("truncated varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
  """Yield (field, wire, value) of a protobuf message; value is int, or bytes for wire 1/2/5."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      val, pos = _read_varint(buf, pos)
    elif wire == 1:
      val, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      n, pos = _read_varint(buf, pos)
      val, pos = buf[pos:pos + n], pos + n
    elif wire == 5:
      val, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f"unsupported wire type {wire}")
    if pos > len(buf):
      raise ValueError("truncated field")
    yield field, wire, val


def parse_event(data: bytes) -> dict:
  """Decode the Event fields we write: wall_time, step, file_version?, values [(tag, value)]."""
  ev = {"wall_time": 0.0, "step": 0, "values": []}
  for field, wire, val in _fields(data):
    if field == 1 and wire == 1:
      ev["wall_time"] = struct.unpack("<d", val)[0]
    elif field == 2 and wire == 0:
      ev["step"] = val - (1 << 64) if val >= 1 << 63 else val
    elif field == 3 and wire == 2:
      ev["file_version"] = val.decode("utf-8")
    elif field == 5 and wire == 2:
      for sfield, swire, sval in _fields(val):
        if sfield != 1 or swire != 2:
          continue
        tag, simple = None, None
        for vfield, vwire, vval in _fields(sval):
          if vfield == 1 and vwire == 2:
            tag = vval.decode("utf-8")
          elif vfield == 2 and vwire == 5:
            simple = struct.unpack("<f", vval)[0]
        if tag is not None and simple is not None:
          ev["values"].append((tag, simple))
  return ev


def read_events(path: str) -> List[dict]:
  """All events of one event file, in order (see parse_event)."""
  out = []
  for offset, data in read_records(path):
    try:
      out.append(parse_event(data))
    except ValueError as e:
      raise ValueError(f"{path}: malformed event at offset {offset}: {e}") from None
  return out


def read_scalars(path: str) -> List[Tuple[int, str, float]]:
  """(step, tag, value) of every simple_value scalar in an event file, or in all
  `*tfevents*` files of a directory (sorted by name), in file order."""
  if os.path.isdir(path):
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if "tfevents" in n)
  else:
    files = [path]
  out = []
  for p in files:
    for ev in read_events(p):
      out.extend((ev["step"], tag, value) for tag, value in ev["values"])
  return out
