"""Deterministic weights for parity fixtures: each tensor is a function of (key, shape, seed).

The rule (shared with the fixture generator, see ../shared/parity/README.md): seed =
crc32(f"{base_seed}/{key}"), u = PCG64(seed).random(shape), x = (2u-1)*sqrt(3); then by role:
running_var -> 0.5+u, running_mean -> 0.1x, 1-D weight/gamma -> 1+0.1x, other 1-D -> 0.1x,
>=2-D -> x/sqrt(prod(shape[1:])); num_batches_tracked -> 0; cast to float32.
"""

from __future__ import annotations

import math
import zlib
from typing import Mapping, Sequence

import numpy as np


def det_tensor(key: str, shape: Sequence[int], base_seed: int = 0) -> np.ndarray:
  shape = tuple(int(s) for s in shape)
  if key.endswith("num_batches_tracked"):
    return np.zeros(shape, np.int64)
  rng = np.random.Generator(np.random.PCG64(zlib.crc32(f"{base_seed}/{key}".encode())))
  u = rng.random(shape)
  x = (2.0 * u - 1.0) * math.sqrt(3.0)
  if key.endswith("running_var"):
    v = 0.5 + u
  elif key.endswith("running_mean"):
    v = 0.1 * x
  elif len(shape) <= 1:
    v = 1.0 + 0.1 * x if key.endswith((".weight", ".gamma")) else 0.1 * x
  else:
    v = x / math.sqrt(float(np.prod(shape[1:])))
  return v.astype(np.float32)


def det_state_dict(manifest: Mapping[str, Sequence[int]], base_seed: int = 0) -> dict:
  """{key: shape} -> {key: float32 array}, in manifest order."""
  return {k: det_tensor(k, s, base_seed) for k, s in manifest.items()}
