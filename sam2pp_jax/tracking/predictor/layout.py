"""Which stored memories a frame attends to, laid out as the fixed-shape bank's slots.

The reference concatenates the selected conditioning frames, the num_maskmem-1 nearest
tracked frames (in the tracking direction) and up to min(T, max_obj_ptrs)-1 object pointers;
here those choices become slot frame indices (EMPTY where absent) filled from the host store.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sam2pp_jax.tracking.memory_bank import EMPTY


def select_cond(f: int, cond: dict, max_cond: int):
  """(selected, unselected) conditioning frames, the temporally closest ones first."""
  if max_cond == -1 or len(cond) <= max_cond:
    return sorted(cond), []
  sel = []
  before = [t for t in cond if t < f]
  after = [t for t in cond if t >= f]
  if before:
    sel.append(max(before))
  if after:
    sel.append(min(after))
  rest = sorted((t for t in cond if t not in sel), key=lambda t: abs(t - f))
  sel += rest[: max_cond - len(sel)]
  return sorted(sel), sorted(t for t in cond if t not in sel)


def memory_layout(
  o,
  f: int,
  reverse: bool,
  t_total: int,
  *,
  num_maskmem: int,
  max_obj_ptrs: int,
  max_cond: int,
  memory=None,
):
  """(cond frames, spatial slot frames, pointer slot frames by distance 1..max_ptrs-1) that
  frame f of object `o` attends to; EMPTY where absent. Spatial slots: SAM 2's frames by
  distance 1..num_maskmem-1, or (a gated policy such as SAMURAI) its chosen frames, newest
  first (the policy's view then gives them temporal rows by rank), or (DAM4SAM) the frames of
  the slots of the object's policy state. Pointer slots: by distance, or (DAM4SAM) the frames
  of the pointer slots of its state."""
  sel, unsel = select_cond(f, o.out["cond"], max_cond)
  unsel = set(unsel)
  sign = -1 if reverse else 1
  have = lambda t: t in o.out["non_cond"] or t in unsel
  gated = getattr(memory, "host_memory_frames", None)
  own = getattr(memory, "host_memory_slots", None)  # a policy's own slot list (DAM4SAM)
  if own is not None:
    mem = tuple(own(o, f, sign, have, num_maskmem - 1))
  elif gated is not None:
    got = gated(f, sign, t_total, o.out["non_cond"], have, max_obj_ptrs, num_maskmem - 1)
    mem = tuple(got) + (EMPTY,) * (num_maskmem - 1 - len(got))
  else:
    mem = tuple(f - d * sign if have(f - d * sign) else EMPTY for d in range(1, num_maskmem))
  own_ptr = getattr(memory, "host_pointer_slots", None)  # a policy's own pointer list (DAM4SAM)
  if own_ptr is not None:
    return tuple(sel), mem, tuple(own_ptr(o, have, max_obj_ptrs - 1))
  ptr = [EMPTY] * (max_obj_ptrs - 1)
  for d in range(1, min(t_total, max_obj_ptrs)):
    t = f - d * sign
    if t < 0 or t >= t_total:
      break
    if have(t):
      ptr[d - 1] = t
  return tuple(sel), mem, tuple(ptr)


def bank_slots(objs, layout, hw: int, mem_dim: int, hidden_dim: int) -> dict:
  """Per-slot per-object memories of a layout (zeros in empty slots), for
  MemoryBank.from_slots. The conditioning capacity is rounded up to a power of two (>= 2) so
  few shapes are compiled."""
  sel, mem, ptr = layout
  k = max(2, 1 << (len(sel) - 1).bit_length()) if sel else 2
  cond_frames = list(sel) + [EMPTY] * (k - len(sel))
  z_mem = jnp.zeros((hw, mem_dim), jnp.bfloat16)
  z_ptr = jnp.zeros((hidden_dim,), jnp.float32)
  slot = lambda t, key, z: tuple(z if t == EMPTY else o.stored_output(t)[key] for o in objs)
  return {
    "cond_feats": tuple(slot(t, "maskmem", z_mem) for t in cond_frames),
    "cond_ptr": tuple(slot(t, "obj_ptr", z_ptr) for t in cond_frames),
    "cond_frame": np.asarray(cond_frames, np.int32),
    "mem_feats": tuple(slot(t, "maskmem", z_mem) for t in mem),
    "mem_frame": np.asarray(mem, np.int32),
    "ptr": tuple(slot(t, "obj_ptr", z_ptr) for t in ptr),
    "ptr_frame": np.asarray(ptr, np.int32),
  }
