"""`track_step`: THE per-frame function of SAM 2++ tracking, shared by every caller.

The scan (`propagate.py`), the interactive predictor (`predictor/`) and training
(`train/forward.py`, which adds prompt simulation and corrective clicks, as SAM 2's trainer
wraps `_track_step`) all call it. A frame: [select memory, condition on it] -> prompt encoder +
decoder, choose a candidate -> [refine hook] -> encode its memory -> write it into the bank.
Every difference between the callers is a named argument of `track_step`, never a second path.
"""

from __future__ import annotations

from typing import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp

from sam2pp_jax.model.sam2pp import NO_OBJ_SCORE
from sam2pp_jax.tracking.memory.policy import RELEASED, Candidates, MemoryPolicy
from sam2pp_jax.tracking.memory_bank import (
  MemoryBank,
  MemorySlots,
  bf16_round,
  bucket_index,
  present_buckets,
)

ROUTES = ("prompt_as_output", "no_memory", "memory")
WRITES = ("none", "ring", "cond")
FEATURE_KEYS = ("vision", "vision_pos", "s0", "s1")


@flax.struct.dataclass
class FramePrompt:
  """One frame's prompt for B objects, fixed shapes; None fields are absent (static).

  point_coords [B,P,2] model pixels with point_labels [B,P] int32 (1 positive, 0 negative,
  2/3 box corners, -1 not-a-point); mask [B,H',W']: for "prompt_as_output" the binary mask or
  Gaussian heatmap at SxS, for the decoder routes a dense mask prompt (a mask at SxS or the
  previous low-res logits), resized to the prompt encoder's input as the reference does.
  """

  point_coords: jax.Array | None = None
  point_labels: jax.Array | None = None
  mask: jax.Array | None = None

  @property
  def batch(self) -> int | None:
    for x in (self.point_coords, self.mask):
      if x is not None:
        return int(x.shape[0])
    return None


@flax.struct.dataclass
class StepOut:
  """Outputs of one frame for B objects (M = the decoder's multimask candidates).

  low_res [B,S/4,S/4] chosen logits; high_res [B,S,S] the output at model resolution (the
  exact prompt logits on "prompt_as_output", else low_res upsampled); score [B] object score
  logit; obj_ptr [B,C]; box [B,4] normalised xyxy (box task, else None); candidates:
  multi_high_res [B,M,S,S], ious [B,M], multi_boxes [B,M,4] (box task), candidate_valid [M]
  (single-mask steps: only candidate 0); pix [B,h,w,C] the features the heads decoded
  (memory-conditioned or not; training's corrective clicks re-use them); maskmem [B,HW,Cm]
  the frame's memory rounded to bf16 (as the reference stores it), maskmem_pos [HW,Cm]
  (None without encode_memory); extra: whatever the refine hook adds (training records).
  """

  low_res: jax.Array
  high_res: jax.Array
  score: jax.Array
  obj_ptr: jax.Array
  box: jax.Array | None
  multi_high_res: jax.Array
  ious: jax.Array
  multi_boxes: jax.Array | None
  candidate_valid: jax.Array
  pix: jax.Array
  maskmem: jax.Array | None = None
  maskmem_pos: jax.Array | None = None
  extra: object = None
  candidates: Candidates | None = None  # every candidate, for a memory policy's choice
  memory_meta: dict | None = None  # what the memory policy recorded for the frame's slot
  policy_state: object = None  # the memory policy's state after this frame's choice


def _apply(model, params, method, *args, rngs=None, **kw):
  return model.apply({"params": params}, *args, method=method, rngs=rngs, **kw)


def _dropout(dropout_key, t=None) -> dict:
  """apply() kwargs that switch a module's dropout on (training) or leave it off (None)."""
  if dropout_key is None:
    return {}
  key = dropout_key if t is None else jax.random.fold_in(dropout_key, jnp.asarray(t, jnp.int32))
  return {"rngs": {"dropout": key}, "deterministic": False}


def _batched(x, b: int):
  """[1,...] frame features -> [b,...] (objects of one frame share its features)."""
  return x if x.shape[0] == b else jnp.broadcast_to(x, (b,) + x.shape[1:])


def frame_features(model, params, images, *, task: str, dropout_key=None) -> dict:
  """[N,S,S,3] normalised frames -> the step's features {vision, vision_pos, s0, s1} [N,...].
  dropout_key (training): apply the trunk's drop-path with this key."""
  e = _apply(model, params, "encode_image", images, task=task, **_dropout(dropout_key))
  return {k: e[k] for k in FEATURE_KEYS}


def count_clicks(labels, task: str):
  """Clicks of a prompt for the multimask rule: a box's two corners do not count (box task).

  labels [..., P] int (numpy or jnp, -1 = padding). Returns the count per leading index.
  """
  real = labels >= 0
  n = real.sum(-1)
  if task == "box":
    n = n - (labels >= 2).sum(-1)
  return n


def use_multimask(n_clicks, config):
  """SAM 2's rule for tracking and prompting alike: multimask for min..max clicks (0..1)."""
  lo, hi = int(config.multimask_min_pt_num), int(config.multimask_max_pt_num)
  return (n_clicks >= lo) & (n_clicks <= hi)


# ---------------------------------------------------------------------------------- decode
def decode_heads(
  model, params, pix, feats, prompt: FramePrompt, *, task: str, multimask, presence=None
) -> StepOut:
  """Prompt encoder + decoder + candidate choice + pointer on features `pix` [B,h,w,C].

  Candidates are padded to the decoder's M; a single-mask step (multimask False, static or
  traced) has only candidate 0 valid. presence (a float, static): also return every
  candidate gated at this object-score threshold (`candidates`, for a memory policy)."""
  mask = None if prompt.mask is None else prompt.mask[..., None]
  o = _apply(
    model,
    params,
    "sam_heads",
    pix,
    feats["s0"],
    feats["s1"],
    prompt.point_coords,
    prompt.point_labels,
    mask,
    task=task,
    multimask_output=multimask,
  )
  m = int(model.config.decoder.num_multimask_outputs)
  s = int(model.config.image_size)
  mm = o["multi_masks"]
  b, k = mm.shape[:2]
  high = _apply(model, params, "upsample_to_image", mm.reshape((b * k,) + mm.shape[2:]))
  pad = lambda a: jnp.pad(a, [(0, 0), (0, m - k)] + [(0, 0)] * (a.ndim - 2))
  valid = jnp.arange(m) < k
  if not isinstance(multimask, bool):
    valid = jnp.where(multimask, valid, jnp.arange(m) < 1)
  boxes = o["multi_boxes"]
  cands = None
  if presence is not None:
    cands = _candidates(model, params, o, float(presence), m, valid)
  return StepOut(
    low_res=o["low_res_masks"],
    high_res=o["high_res_masks"],
    score=o["object_score_logits"][:, 0],
    obj_ptr=o["obj_ptr"],
    box=o["boxes"],
    multi_high_res=pad(high.reshape((b, k, s, s))),
    ious=pad(o["ious"]),
    multi_boxes=None if boxes is None else pad(boxes),
    candidate_valid=valid,
    pix=pix,
    candidates=cands,
  )


def _candidates(model, params, o, threshold: float, m: int, valid) -> Candidates:
  """Every candidate of a sam_heads output with the presence gate at `threshold`."""
  dec = o["raw"]
  score = o["object_score_logits"]  # [B,1]
  present = score > threshold
  low = jnp.where(present[:, :, None, None], dec["masks"], NO_OBJ_SCORE)  # [B,k,h,w]
  b, k = low.shape[:2]
  tokens = dec["sam_tokens_out"]
  ptr = _apply(model, params, "candidate_pointers", tokens, score, threshold)
  ptr = jnp.broadcast_to(ptr, (b, k, ptr.shape[-1]))  # one token for every candidate
  s = int(model.config.image_size)
  high = _apply(model, params, "upsample_to_image", low.reshape((b * k,) + low.shape[2:]))
  boxes = dec["boxes"]
  if boxes is not None:
    boxes = jnp.where(present[:, :, None], boxes, 0.0)
  pad = lambda a: jnp.pad(a, [(0, 0), (0, m - k)] + [(0, 0)] * (a.ndim - 2))
  return Candidates(
    low_res=pad(low),
    high_res=pad(high.reshape((b, k, s, s))),
    obj_ptr=pad(ptr),
    boxes=None if boxes is None else pad(boxes),
    valid=valid,
  )


def _decode(
  model,
  params,
  feats,
  bank,
  t,
  prompt,
  *,
  task,
  route,
  multimask,
  num_frames,
  reverse,
  future_cond_ptrs,
  dropout_key=None,
  memory: MemoryPolicy = RELEASED,
  present_only: bool = True,
) -> StepOut:
  """One static route (see the module docstring)."""
  vision = feats["vision"]
  if route == "prompt_as_output":
    o = _apply(
      model,
      params,
      "prompt_as_output",
      vision,
      feats["s0"],
      feats["s1"],
      prompt.mask,
      prompt.point_coords,
      prompt.point_labels,
      task=task,
      presence_threshold=memory.presence_threshold,  # SAMURAI: its gate on every pointer
    )
    m = int(model.config.decoder.num_multimask_outputs)
    pad = lambda a: jnp.pad(a, [(0, 0), (0, m - 1)] + [(0, 0)] * (a.ndim - 2))
    return StepOut(
      low_res=o["low_res_masks"],
      high_res=o["high_res_masks"],
      score=o["object_score_logits"][:, 0],
      obj_ptr=o["obj_ptr"],
      box=o["boxes"],
      multi_high_res=pad(o["high_res_masks"][:, None]),
      ious=pad(o["ious"]),
      multi_boxes=None if task != "box" else pad(o["boxes"][:, None]),
      candidate_valid=jnp.arange(m) < 1,
      pix=vision,
    )
  if route == "no_memory":
    pix = _apply(model, params, "no_memory_features", vision)
  elif route == "memory":
    tpos = params["maskmem_tpos_enc"][:, 0, 0]
    ptr_pe = lambda rel, tdm: _apply(model, params, "obj_ptr_pos_encoding", rel, tdm)
    view = memory.view(bank, t, reverse)
    slots = bank.slots(
      t, num_frames, tpos, ptr_pe, reverse=reverse, future_cond_ptrs=future_cond_ptrs, view=view
    )
    attend = lambda sl: _condition(model, params, feats, sl, task, _dropout(dropout_key, t))
    if present_only:
      buckets = present_buckets(*slots.capacity)
      branches = [lambda s=slots, n=n: attend(s.present(*n)) for n in buckets]
      pix = jax.lax.switch(bucket_index(buckets, *slots.num_present()), branches)
    else:
      pix = attend(slots)
  else:
    raise ValueError(f"route={route!r} is unknown; use one of {ROUTES}")
  presence = memory.presence_threshold if memory.needs_candidates else None
  return decode_heads(
    model, params, pix, feats, prompt, task=task, multimask=multimask, presence=presence
  )


def _condition(model, params, feats, slots: MemorySlots, task: str, dropout: dict):
  """Memory attention of the frame's features over `slots` (all of them, masked)."""
  mem, mpos, mmask, key_scale = slots.flatten()
  scaled = {} if key_scale is None else {"key_scale": key_scale}  # SAM2Long's key factors
  return _apply(
    model,
    params,
    "condition_on_memory",
    feats["vision"],
    feats["vision_pos"],
    mem,
    mpos,
    mmask,
    task=task,
    num_obj_ptr_tokens=slots.num_ptr_tokens,
    **scaled,
    **dropout,
  )


def _write(
  bank: MemoryBank, write, cond_slot, t, out: StepOut, memory: MemoryPolicy, state
) -> MemoryBank:
  """Store the frame's memory: static "none" / "ring" / "cond" or a traced WRITES index.
  `state` is the memory policy's state after this frame's choice ("none" keeps the old)."""

  def ring():
    b = memory.reorder(bank, state, out)  # SAM2Long: rows follow their parent pathway first
    slot, st = memory.ring_slot(state, b, t, out.memory_meta)
    b = b.write(
      t,
      out.maskmem,
      out.maskmem_pos,
      out.obj_ptr,
      slot=slot,
      meta=out.memory_meta,
      ptr_slot=memory.ptr_slot(st),
    )
    return b.replace(policy_state=st)

  def cond():
    b = bank.write_cond(cond_slot, t, out.maskmem, out.maskmem_pos, out.obj_ptr)
    return b.replace(policy_state=state)

  if isinstance(write, str):
    if write not in WRITES:
      raise ValueError(f"write={write!r} is unknown; use one of {WRITES}")
    if write == "none":
      return bank
    return ring() if write == "ring" else cond()
  w = jnp.asarray(write, jnp.int32)
  ring, cond = ring(), cond()
  pick = lambda n, r, c: jnp.where(
    w == WRITES.index("cond"), c, jnp.where(w == WRITES.index("ring"), r, n)
  )
  return jax.tree.map(pick, bank, ring, cond)


# ---------------------------------------------------------------------------------- memory
def frame_memory(model, params, vision, low_res, score, *, task: str, binarize: bool = False):
  """A frame's memory from its chosen low-res logits upsampled to SxS (as the reference's
  predictor does): (features [B,HW,Cm] rounded to bf16, position encoding [HW,Cm]).
  binarize (static): encode the upsampled logits > 0 instead of their sigmoid (a memory
  policy's binarize_prompt_memory, on prompt frames)."""
  high = _apply(model, params, "upsample_to_image", low_res)
  mem, pos = _apply(
    model, params, "encode_memory", vision, high, score[:, None], task=task, binarize=binarize
  )
  b = mem.shape[0]
  return bf16_round(mem.reshape(b, -1, mem.shape[-1])), pos[0].reshape(-1, pos.shape[-1])


# ---------------------------------------------------------------------------------- step
def track_step(
  model,
  params,
  feats: Mapping[str, jax.Array],
  bank: MemoryBank | None,
  t,
  prompt: FramePrompt | Mapping[str, FramePrompt] | None = None,
  *,
  task: str,
  route="memory",
  multimask=True,
  num_frames: int = 1,
  reverse=False,
  future_cond_ptrs: bool = False,
  write="ring",
  cond_slot=0,
  encode_memory: bool = True,
  binarize_memory: bool = False,
  refine: Callable[[StepOut], StepOut] | None = None,
  dropout_key=None,
  memory: MemoryPolicy = RELEASED,
  policy_state=None,
  present_only: bool = True,
):
  """One frame t for B objects -> (bank, StepOut). Pure; call it inside jit / scan.

  feats: {vision, vision_pos, s0, s1} of the frame, [B,...] or [1,...] (shared by objects).
  bank: the MemoryBank (may be None when route is not "memory" and write is "none").
  route: "memory" (memory attention over the bank, then the heads), "no_memory" (a new
  conditioning frame: the no-memory embedding, then the heads) or "prompt_as_output" (mask /
  point tasks: the mask or heatmap prompt is the output, the heads run for the pointer); a
  traced int32 index into ROUTES switches between the routes of a dict `prompt` (route ->
  FramePrompt; routes take prompts of different shapes), so the rest compiles once.
  prompt: the frame's FramePrompt (None = no prompt). multimask: bool or traced bool.
  num_frames: the video length for the pointer normaliser min(T, max_obj_ptrs) - 1.
  reverse: tracking backwards (may be traced). future_cond_ptrs: also attend to pointers of
  conditioning frames after t (training; the reference's eval uses only past ones).
  write: "ring" | "cond" (slot `cond_slot`) | "none", or a traced index into WRITES.
  encode_memory: encode the chosen logits (upsampled to SxS) into the frame's memory.
  binarize_memory (static): encode them binarised (logits > 0) instead of their sigmoid; the
  callers pass the policy's binarize_prompt_memory on prompt frames (DAM4SAM, as d4sm).
  refine: a hook StepOut -> StepOut between decoding and memory encoding (training's clicks).
  dropout_key: training only: apply memory attention's dropout (key folded with t); None
  (inference) leaves every dropout off.
  memory: the memory policy (static; tracking/memory): its view of the bank on the memory
  route, its candidate choice on the decoder routes, its ring writes. Its state is the bank's
  policy_state. RELEASED (SAM2()) is the released tracker. policy_state: the policy's state
  when the bank does not carry it (the interactive predictor keeps it per object on the host;
  None: the bank's, or a fresh one); the state after the frame is StepOut.policy_state.
  present_only (static): memory attention over only the present memories, gathered in the
  reference's order into the smallest of a few static sizes (`present_buckets`, a lax.switch:
  one compiled variant each); False: over every slot of the bank, masked (fixed cost).
  """
  b = bank.cond_ptr.shape[0] if bank is not None else None
  if isinstance(prompt, Mapping):
    b = b or next(p.batch for p in prompt.values() if p is not None and p.batch)
  elif b is None:
    b = prompt.batch if prompt is not None else feats["vision"].shape[0]
  feats = {k: _batched(feats[k], b) for k in FEATURE_KEYS}
  kw = dict(
    task=task,
    multimask=multimask,
    num_frames=num_frames,
    reverse=reverse,
    future_cond_ptrs=future_cond_ptrs,
    dropout_key=dropout_key,
    memory=memory,
    present_only=present_only,
  )
  if isinstance(route, str):
    p = prompt.get(route) if isinstance(prompt, Mapping) else prompt
    out = _decode(
      model, params, feats, bank, t, FramePrompt() if p is None else p, route=route, **kw
    )
  else:
    if not isinstance(prompt, Mapping):
      raise TypeError("a traced route needs a dict route name -> FramePrompt")
    names = [r for r in ROUTES if r in prompt]
    index = jnp.asarray([names.index(r) if r in names else 0 for r in ROUTES], jnp.int32)
    branches = [
      lambda r=r: _decode(model, params, feats, bank, t, prompt[r] or FramePrompt(), route=r, **kw)
      for r in names
    ]
    out = jax.lax.switch(index[jnp.asarray(route, jnp.int32)], branches)
  state = policy_state
  if state is None and bank is not None:
    state = bank.policy_state
  if state is None:
    state = memory.init_state(b)
  if out.candidates is not None:  # a decoder route of a policy that chooses for itself
    if not isinstance(route, str):
      raise ValueError(f"the {memory.name!r} memory policy needs a static route")
    out, state, meta = memory.choose(state, out, out.candidates, t, multimask)
    out = out.replace(memory_meta=meta)
  else:
    out = out.replace(memory_meta=RELEASED.choose(state, out, None, t, multimask)[2])
  out = out.replace(policy_state=state)
  if refine is not None:
    out = refine(out)
  if encode_memory:
    mem, pos = frame_memory(
      model, params, feats["vision"], out.low_res, out.score, task=task, binarize=binarize_memory
    )
    out = out.replace(maskmem=mem, maskmem_pos=pos)
  if bank is not None and not (isinstance(write, str) and write == "none"):
    if not encode_memory:
      raise ValueError("write needs the frame's memory: use encode_memory=True")
    bank = _write(bank, write, cond_slot, t, out, memory, state)
  return bank, out


def new_bank(
  model, batch: int, cond_capacity: int = 2, memory: MemoryPolicy = RELEASED
) -> MemoryBank:
  """An empty bank for `batch` objects with the model's memory geometry and the memory
  policy's initial state."""
  c = model.config
  hw = (int(c.image_size) // 16) ** 2
  bank = MemoryBank.empty(
    batch,
    hw,
    int(c.mem_dim),
    int(c.hidden_dim),
    num_maskmem=int(c.num_maskmem),
    max_obj_ptrs=int(c.max_obj_ptrs_in_encoder),
    cond_capacity=cond_capacity,
  )
  return bank.replace(policy_state=memory.init_state(batch))
