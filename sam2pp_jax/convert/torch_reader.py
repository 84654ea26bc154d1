"""Read PyTorch zip checkpoints (`torch.save`) without torch and without running their pickle.

The pickle inside a `.pt` file may name any Python callable; `torch.load` without
`weights_only` would call it. This reader resolves only the handful of globals a tensor state
dict needs (tensor rebuild, typed storages, OrderedDict) and refuses anything else before it
is imported, so a malicious file executes nothing. Tensors become numpy arrays (bfloat16 via
ml_dtypes) with the stored sizes, strides and offsets.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointReadError(ValueError):
  """The file is not a readable tensor checkpoint; the message names the file and a remedy."""


class UnsafeCheckpointError(CheckpointReadError):
  """The pickle names a global outside the tensor-state-dict allowlist; nothing was run."""


_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
  dtype: Any


@dataclass
class _StorageRef:
  key: str
  dtype: Any
  numel: int


class _TensorRebuild:
  """Stand-in for torch._utils._rebuild_tensor_v2: records the view, builds it lazily."""

  def __init__(self, storage, offset, size, stride, *_ignored):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *rest):
  return data


def _ordered_dict(*args):
  return collections.OrderedDict(*args)


_ALLOWED = {
  ("collections", "OrderedDict"): _ordered_dict,
  ("torch._utils", "_rebuild_tensor_v2"): _TensorRebuild,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  **{("torch", name): _StorageType(dt) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, f, source: str):
    super().__init__(f)
    self.source = source

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
        f"{self.source}: refusing to load: the pickle references the global "
        f"'{module}.{name}', which a tensor state dict never needs; nothing was executed. "
        "Only load checkpoints from sources you trust, and re-save plain state dicts with "
        "torch.save({'model': state_dict})."
      ) from None

  def persistent_load(self, pid):
    if not (
      isinstance(pid, tuple)
      and len(pid) == 5
      and pid[0] == "storage"
      and isinstance(pid[1], _StorageType)
    ):
      raise CheckpointReadError(f"{self.source}: unsupported storage record {pid!r:.80}")
    _, st, key, _location, numel = pid
    return _StorageRef(str(key), st.dtype, int(numel))


def _materialise(obj, storages):
  if isinstance(obj, _TensorRebuild):
    buf = storages[obj.storage.key]
    itemsize = buf.dtype.itemsize
    if not obj.size:
      return buf[obj.offset].copy()
    need = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1
    if min(obj.size) > 0 and need > buf.size:
      raise CheckpointReadError(f"tensor view exceeds its storage {obj.storage.key}")
    n = int(np.prod(obj.size))
    contiguous = tuple(obj.stride) == tuple(
      int(np.prod(obj.size[i + 1 :])) for i in range(len(obj.size))
    )
    if contiguous:  # the common case: a zero-copy view of the file's bytes
      return buf[obj.offset : obj.offset + n].reshape(obj.size)
    view = np.lib.stride_tricks.as_strided(
      buf[obj.offset :], shape=obj.size, strides=[s * itemsize for s in obj.stride]
    )
    return np.ascontiguousarray(view)
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v, storages)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, storages) for v in obj)
  return obj


def read_torch_checkpoint(path) -> Any:
  """The unpickled object of a torch zip checkpoint, tensors as numpy arrays."""
  path = pathlib.Path(path)
  src = str(path)
  if not path.is_file():
    raise CheckpointReadError(f"{src}: no such file")
  if not zipfile.is_zipfile(path):
    raise CheckpointReadError(
      f"{src}: not a PyTorch zip checkpoint (a truncated download, or the legacy non-zip "
      "format from torch < 1.6). Re-save it with torch.save(obj, path) from torch >= 1.6."
    )
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
      pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
      if len(pkl) != 1:
        raise CheckpointReadError(f"{src}: zip has no single data.pkl; not a torch checkpoint")
      root = pkl[0][: -len("data.pkl")]
      order = (
        z.read(root + "byteorder").decode().strip() if root + "byteorder" in names else "little"
      )
      if order != "little":
        raise CheckpointReadError(f"{src}: big-endian checkpoints are not supported")
      import io

      unp = _RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), src)
      obj = unp.load()
      refs: dict[str, _StorageRef] = {}
      _collect_refs(obj, refs)
      storages = {}
      for key, ref in refs.items():
        raw = z.read(f"{root}data/{key}")
        arr = np.frombuffer(raw, dtype=ref.dtype)
        if arr.size < ref.numel:
          raise CheckpointReadError(f"{src}: storage {key} is truncated")
        storages[key] = arr
      return _materialise(obj, storages)
  except (zipfile.BadZipFile, EOFError, KeyError, pickle.UnpicklingError, OSError) as e:
    raise CheckpointReadError(
      f"{src}: corrupt or truncated checkpoint ({type(e).__name__}: {e}); download or save it again"
    ) from None


def _collect_refs(obj, refs):
  if isinstance(obj, _TensorRebuild):
    if not isinstance(obj.storage, _StorageRef):
      raise CheckpointReadError("tensor without a storage record")
    refs.setdefault(obj.storage.key, obj.storage)
  elif isinstance(obj, dict):
    for v in obj.values():
      _collect_refs(v, refs)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _collect_refs(v, refs)


def extract_state_dict(
  obj, source: str = "checkpoint"
) -> "collections.OrderedDict[str, np.ndarray]":
  """`{"model": state_dict}` or a bare state dict -> {key: array}; anything else is an error."""
  if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
    obj = obj["model"]
  if not isinstance(obj, dict) or not obj:
    raise CheckpointReadError(
      f"{source}: expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}"
    )
  bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise CheckpointReadError(
      f"{source}: not a tensor state dict (entries {bad[:5]} are not "
      "tensors); expected a state dict or {'model': state_dict}"
    )
  return collections.OrderedDict(obj)
