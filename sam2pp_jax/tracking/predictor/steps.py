"""The predictor's compiled calls: `track_step` on one frame for a group of objects, and the
memory of a prompted frame at consolidation. One jit per static signature (jax's own cache)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from sam2pp_jax.tracking.memory.policy import RELEASED
from sam2pp_jax.tracking.memory_bank import MemoryBank
from sam2pp_jax.tracking.step import frame_memory, track_step


def _stored(out) -> dict:
  """What the predictor stores per object and frame (memories as bfloat16, exact), with the
  memory policy's slot metadata (iou, motion) and its state after the frame."""
  meta = out.memory_meta or {}
  b = out.score.shape[0]
  return {
    "low_res": out.low_res,
    "score": out.score,
    "obj_ptr": out.obj_ptr,
    "box": out.box,
    "maskmem": None if out.maskmem is None else out.maskmem.astype(jnp.bfloat16),
    "iou": meta.get("iou", jnp.zeros((b,))),
    "motion": meta.get("motion", jnp.full((b,), jnp.nan)),
    "policy_state": out.policy_state,
  }


@partial(
  jax.jit,
  static_argnames=("model", "task", "route", "multimask", "num_frames", "encode_memory", "memory"),
)
def frame_step(
  model,
  params,
  feats,
  slots,
  pos,
  t,
  reverse,
  prompt,
  *,
  task,
  route,
  multimask,
  num_frames,
  encode_memory,
  memory=RELEASED,
  policy_state=None,
):
  """track_step on frame t; the bank is built from host slots (None: no memory route).
  memory / policy_state: the memory policy and the objects' state before the frame."""
  bank = None if slots is None else MemoryBank.from_slots(slots, pos)
  if bank is not None:  # the policy's view reads its state from the bank
    bank = bank.replace(policy_state=policy_state)
  _, out = track_step(
    model,
    params,
    feats,
    bank,
    t,
    prompt,
    task=task,
    route=route,
    multimask=multimask,
    num_frames=num_frames,
    reverse=reverse,
    write="none",
    encode_memory=encode_memory,
    memory=memory,
    policy_state=policy_state,
  )
  return _stored(out)


@partial(jax.jit, static_argnames=("model", "task", "binarize"))
def prompt_memory(model, params, vision, low_res, score, *, task, binarize=False):
  """Memory of consolidated prompt outputs: ([B,HW,Cm] bfloat16, pos [HW,Cm]); binarize: from
  the logits > 0 (a memory policy's binarize_prompt_memory, on conditioning frames)."""
  mem, pos = frame_memory(model, params, vision, low_res, score, task=task, binarize=binarize)
  return mem.astype(jnp.bfloat16), pos
