"""Training forward for one batch of clips of one task: prompt simulation around the tracker's
own per-frame `track_step` (tracking/step.py), scanned over the clip, and iterative corrective
clicks as its refine hook, all inside one jit with fixed shapes.

Per batch (as the reference draws them per forward): 1 or 2 initial conditioning frames (frame 0
and a random later one; point task: 1), mask-input vs point-input prompts with the reference's
probabilities, and - for point inputs - corrective clicks on the initial conditioning frames and,
when only one was drawn, possibly on one extra random frame, which then becomes a conditioning
frame (add_all_frames_to_correct_as_cond). Frames are processed conditioning frames first, then
the rest in time order. A frame's plan branch picks its route (prompt as output / no memory /
memory: a traced route, so `track_step` switches between them and only one runs) and its write
(conditioning slot or ring); the only training-specific code is the prompt simulation and the
corrective clicks, as SAM 2's trainer wraps `_track_step`.

Box task, clean-box conditioning frames: as the reference's `_use_box_as_output`, the GT mask
(+-10 logits) is the frame's output and memory, and the clean box runs through the heads only
for the object pointer (noisy-box and click frames take the inference path).

Mixed precision (config.compute_dtype "bfloat16", `trainer.build_train_model`): the model
computes in bf16 with float32 params; the clip's frame features are kept in bf16, and the heads
return float32 logits, scores and pointers, so the loss inputs and the memory bank are float32.

Known differences from the reference (documented, not hidden):
  * stored memories are bf16-rounded as in the tracker (MemoryBank), a straight-through cast.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections

from sam2pp_jax.model.layers import BLOCK_OUTPUT
from sam2pp_jax.tracking import prompts
from sam2pp_jax.tracking.step import (
  FEATURE_KEYS,
  ROUTES,
  WRITES,
  FramePrompt,
  StepOut,
  count_clicks,
  decode_heads,
  frame_features,
  new_bank,
  track_step,
  use_multimask,
)
from sam2pp_jax.train import prompt_sim

# init-frame prompt kinds; a frame's branch is its kind (init frames) or B_TRACK
PROMPT_OUT, BOX_CLEAN, BOX_NOISY, CLICK = 0, 1, 2, 3
B_TRACK = 3


def default_prompt_config() -> ml_collections.ConfigDict:
  """Prompt-simulation numbers of the released three-task training config (model section)."""
  return ml_collections.ConfigDict(
    dict(
      prob_to_use_pt_input=0.5,  # prob_to_use_pt_input_for_train
      prob_to_use_box_input=0.5,  # prob_to_use_box_input_for_train
      num_init_cond_frames=2,  # num_init_cond_frames_for_train (rand 1..2)
      num_frames_to_correct=2,  # num_frames_to_correct_for_train (rand)
      num_correction_pt_per_frame=7,  # num_correction_pt_per_frame
      prob_to_sample_from_gt=0.1,  # prob_to_sample_from_gt_for_train
      box_noise=0.1,
      box_noise_bound=20.0,  # SAM defaults of sample_(noised_)box_points
      point_radius=5,
      point_sigma=2.0,  # Gaussian prompt/target (inference values)
      remat="none",  # activation recomputation in backward: one of REMAT_POLICIES
      apply_dropout=True,  # memory-attention dropout and trunk drop-path, as model.train()
    )
  )


# Activation recomputation (rematerialisation) of the training forward, by name. Each wraps the
# image encoder (all frames at once) and the per-frame step of the scan:
#   none           keep every activation (fastest backward, most memory)
#   frame          keep only each frame's inputs; recompute the whole frame in backward
#   block          keep the transformer-block outputs (Hiera, memory attention, two-way; tagged
#                  with model.layers.block_output); recompute inside each block
#   dots_saveable  keep every matmul/conv output (jax.checkpoint_policies.dots_saveable)
REMAT_POLICIES = ("none", "frame", "block", "dots_saveable")


def remat_policy(value) -> str:
  """A `prompts.remat` value as a policy name (True/False are "frame"/"none", older configs)."""
  if value is True:
    return "frame"
  if value is False or value is None:
    return "none"
  if value not in REMAT_POLICIES:
    raise ValueError(
      f"prompts.remat = {value!r} is not a remat policy; use one of {REMAT_POLICIES} "
      "(train/forward.py documents what each keeps)"
    )
  return value


def rematerialise(fn, policy: str):
  """`fn` wrapped in jax.checkpoint for the named policy (unchanged for "none")."""
  if policy == "none":
    return fn
  if policy == "frame":
    return jax.checkpoint(fn)
  if policy == "block":
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(BLOCK_OUTPUT))
  return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_saveable)


def encode_frames(model, params, frames, task: str, remat: str, dropout_key=None) -> dict:
  """Image features of [F,S,S,3] frames. Without remat all frames run as one batch; with a
  policy, frame by frame (lax.map) with each frame rematerialised, so the backward recomputes
  one frame's encoder at a time instead of holding every frame's activations at once. Frame i's
  drop-path key is fold_in(dropout_key, i) then (the masks differ from the one-batch call's)."""
  if remat == "none":
    return frame_features(model, params, frames, task=task, dropout_key=dropout_key)

  def one(p, x, i):
    key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
    f = frame_features(model, p, x[None], task=task, dropout_key=key)
    return jax.tree.map(lambda a: a[0], f)

  one = rematerialise(one, remat)
  return jax.lax.map(lambda xi: one(params, *xi), (frames, jnp.arange(frames.shape[0])))


# ------------------------------------------------------------------------------ plan
def sample_plan(key, task: str, cfg, num_frames: int, visible):
  """Batch-level prompt decisions (jnp scalars / [T] arrays); visible [N,T] of real objects."""
  t_ = num_frames
  ks = jax.random.split(key, 8)
  u = jax.random.uniform(ks[0], (6,))
  if task == "point":
    use_pt = jnp.array(False)
    two_cond = jnp.array(False)
  else:
    use_pt = u[0] < cfg.prob_to_use_pt_input
    two_cond = (u[1] < 0.5) if (cfg.num_init_cond_frames > 1 and t_ > 1) else jnp.array(False)
  cond2 = jax.random.randint(ks[1], (), 1, max(t_, 2))
  if task == "box":  # an invisible later frame is dropped as a conditioning frame
    two_cond = two_cond & jnp.all(visible[:, jnp.minimum(cond2, t_ - 1)])

  def kind(uu):
    if task == "point":
      return jnp.array(PROMPT_OUT)
    box = uu < cfg.prob_to_use_box_input
    no_pt = PROMPT_OUT if task == "mask" else BOX_CLEAN
    return jnp.where(use_pt, jnp.where(box, BOX_NOISY, CLICK), no_pt)

  kinds = jnp.stack([kind(u[2]), kind(u[3])])
  # extra frame to correct: only with point inputs, one init frame, and 2 frames to correct
  extra = use_pt & ~two_cond & (cfg.num_frames_to_correct > 1) & (u[4] < 0.5) & (t_ > 1)
  extra_t = jax.random.randint(ks[2], (), 1, max(t_, 2))
  ts = jnp.arange(t_)
  rank = jnp.where(ts == 0, -2, jnp.where(two_cond & (ts == cond2), -1, ts))
  order = jnp.argsort(rank, stable=True)
  k = jnp.arange(t_)
  is_init = (k == 0) | ((k == 1) & two_cond)
  is_extra = extra & (order == extra_t) & ~is_init
  kind = kinds[jnp.minimum(k, 1)]
  branch = jnp.where(is_init, kind, B_TRACK).astype(jnp.int32)
  correct = (is_init & use_pt) | is_extra  # point inputs get corrective clicks
  write_cond = is_init | is_extra
  cond_slot = jnp.where(k == 0, 0, 1)
  return {
    "order": order,
    "branch": branch,
    "kind": kind,
    "correct": correct,
    "write_cond": write_cond,
    "cond_slot": cond_slot,
    "use_pt": use_pt,
    "two_cond": two_cond,
    "kinds": kinds,
    "extra": extra,
    "frame_keys": jax.random.split(ks[3], t_),
  }


# ------------------------------------------------------------------------------ one frame
P_INIT = 2  # prompt slots of a frame before corrections (a box's two corners)
_PA, _NM, _MEM = (ROUTES.index(r) for r in ("prompt_as_output", "no_memory", "memory"))


def _route_table(task: str) -> jax.Array:
  """The ROUTES index of each plan branch (PROMPT_OUT, BOX_CLEAN, BOX_NOISY, CLICK / B_TRACK)."""
  init = {"point": [_PA] * 3, "mask": [_PA, _NM, _NM], "box": [_NM, _PA, _NM]}[task]
  return jnp.asarray(init + [_MEM], jnp.int32)


def _record(out: StepOut) -> Dict[str, jax.Array]:
  """One prediction step's loss inputs: M candidates (single-mask steps: only candidate 0)."""
  rec = {
    "masks": out.multi_high_res,
    "ious": out.ious,
    "obj": out.score[:, None],
    "cand": out.candidate_valid,
  }
  if out.multi_boxes is not None:
    rec["boxes"] = out.multi_boxes
  return rec


def _inclusive_box(masks):
  """SAM 2's training box prompt of a mask: corners at the first and the last pixel's index
  (x_max, y_max), one less than the pixel extent `prompts.mask_to_box` gives; zeros if empty."""
  box = prompts.mask_to_box(masks)
  last = box - jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
  return jnp.where(jnp.any(masks, axis=(-2, -1))[..., None], last, 0.0)


class _Frame:
  """One frame's training-only pieces around `track_step`: its simulated prompts per route
  and the corrective-click refine hook."""

  def __init__(self, model, params, task, cfg, x):
    self.model, self.params, self.task, self.cfg, self.x = model, params, task, cfg, x
    self.n_corr = int(cfg.num_correction_pt_per_frame)
    self.s = int(model.config.image_size)
    self.n = x["vision"].shape[0]

  def empty_points(self):
    return (jnp.zeros((self.n, P_INIT, 2), jnp.float32), -jnp.ones((self.n, P_INIT), jnp.int32))

  def prompt_out(self) -> FramePrompt:
    """Mask task: the GT mask is the output; box task: the GT mask is the output and the clean
    box (corner points) makes the pointer; point task: the point + its Gaussian heatmap."""
    x = self.x
    if self.task == "mask":
      return FramePrompt(mask=x["gt_masks"].astype(jnp.float32))
    if self.task == "box":
      pts, labels = prompt_sim.box_points(jax.random.fold_in(x["key"], 7), x["boxes"], self.s, 0.0)
      return FramePrompt(pts, labels, x["gt_masks"].astype(jnp.float32))
    heat = prompts.gaussian_heatmaps(
      x["points"], self.s, int(self.cfg.point_radius), float(self.cfg.point_sigma)
    )
    return FramePrompt(
      point_coords=x["points"][:, None, :], point_labels=jnp.ones((self.n, 1), jnp.int32), mask=heat
    )

  def init_points(self):
    """A box (clean or noised) or one click from the GT mask: (pts, labels, multimask)."""
    x = self.x
    kind = x["kind"]
    if self.task == "mask":  # SAM's box from the GT mask, always noised
      boxes, noise = _inclusive_box(x["gt_masks"]), self.cfg.box_noise
      bpts, blab = prompt_sim.box_points(
        jax.random.fold_in(x["key"], 7), boxes, self.s, noise, self.cfg.box_noise_bound
      )
    else:
      clean = prompt_sim.box_points(jax.random.fold_in(x["key"], 7), x["boxes"], self.s, 0.0)
      noisy = prompt_sim.box_points(
        jax.random.fold_in(x["key"], 7),
        x["boxes"],
        self.s,
        self.cfg.box_noise,
        self.cfg.box_noise_bound,
      )
      bpts = jnp.where(kind == BOX_NOISY, noisy[0], clean[0])
      blab = clean[1]
    cxy, clab = prompt_sim.click_from_errors(jax.random.fold_in(x["key"], 11), x["gt_masks"])
    cpts = jnp.concatenate([cxy, jnp.zeros_like(cxy)], axis=1)
    clabs = jnp.concatenate([clab, -jnp.ones_like(clab)], axis=1)
    is_click = kind == CLICK
    pts = jnp.where(is_click, cpts, bpts)
    labels = jnp.where(is_click, clabs, blab)
    return pts, labels, use_multimask(count_clicks(labels[0], self.task), self.model.config)

  def corrections(self, out: StepOut, pts, labels) -> StepOut:
    """`n_corr` clicks from the current error region (uniform; with prob_to_sample_from_gt from
    the GT mask), each re-running the heads with all clicks so far plus the previous low-res
    logits as the mask prompt. One scanned step with a fixed point buffer: slots not yet used
    are not-a-point tokens (the reference's point count grows instead)."""
    x, n = self.x, self.n
    pts = jnp.concatenate([pts, jnp.zeros((n, self.n_corr, 2), jnp.float32)], axis=1)
    labels = jnp.concatenate([labels, -jnp.ones((n, self.n_corr), jnp.int32)], axis=1)
    keys = jax.random.split(jax.random.fold_in(x["key"], 13), self.n_corr)

    def body(carry, inp):
      low, high, pts, labels = carry
      i, key = inp
      k1, k2 = jax.random.split(key)
      from_gt = jax.random.uniform(k1) < self.cfg.prob_to_sample_from_gt
      pred = jnp.where(from_gt, False, high > 0)
      new_xy, new_l = prompt_sim.click_from_errors(k2, x["gt_masks"], pred)
      slot = P_INIT + i
      pts = jax.lax.dynamic_update_slice_in_dim(pts, new_xy, slot, axis=1)
      labels = jax.lax.dynamic_update_slice_in_dim(labels, new_l, slot, axis=1)
      multi = use_multimask(count_clicks(labels[0], self.task), self.model.config)
      o = decode_heads(
        self.model,
        self.params,
        out.pix,
        x,
        FramePrompt(pts, labels, low),
        task=self.task,
        multimask=multi,
      )
      ys = {"rec": _record(o), "ptr": o.obj_ptr, "score": o.score}
      return (o.low_res, o.high_res, pts, labels), ys

    (low, _, _, _), ys = jax.lax.scan(
      body, (out.low_res, out.high_res, pts, labels), (jnp.arange(self.n_corr), keys)
    )
    return out.replace(
      low_res=low,
      score=ys["score"][-1],
      obj_ptr=ys["ptr"][-1],
      extra={"recs": ys["rec"], "n_steps": jnp.int32(1 + self.n_corr)},
    )

  def no_corrections(self, out: StepOut, pts, labels) -> StepOut:
    zeros = jax.tree.map(lambda a: jnp.zeros((self.n_corr,) + a.shape, a.dtype), _record(out))
    return out.replace(extra={"recs": zeros, "n_steps": jnp.int32(1)})


# ------------------------------------------------------------------------------ clip
def clip_forward(model, params, batch, key, *, task: str, cfg, plan=None) -> Dict[str, jax.Array]:
  """Run one batch [B clips, T frames, O objects] through the tracker with simulated prompts.

  batch: frames [B,T,S,S,3]; masks [B,T,O,S,S] bool; boxes [B,T,O,4] xyxy model px; points
  [B,T,O,2]; visible [B,T,O]; obj_valid [B,O]. Objects are flattened to N = B*O and share
  their clip's frame features. Each frame is one `track_step` (route and write from the plan;
  `plan` defaults to `sample_plan(key, ...)`). Returns the loss inputs, frames in processing
  order: multistep_* [T,S,N,M,...], step_valid [T,S], candidate_valid [T,S,M], targets in the
  same order, the plan, and each frame's final outputs (frame_outputs: low_res [T,N,S/4,S/4],
  score [T,N], obj_ptr [T,N,C]).
  """
  c = model.config
  batch = jax.tree.map(jnp.asarray, dict(batch))
  frames = batch["frames"]
  b, t_ = frames.shape[:2]
  o_ = batch["masks"].shape[2]
  n = b * o_
  s = int(c.image_size)

  # dropout / drop-path as the reference trains (model.train()); off for equivalence tests
  drop = cfg.get("apply_dropout", True)
  drop_key = jax.random.fold_in(key, 0x0D0) if drop and key is not None else None
  remat = remat_policy(cfg.get("remat", "none"))
  feats = encode_frames(
    model, params, frames.reshape((b * t_,) + frames.shape[2:]), task, remat, drop_key
  )
  per_obj = lambda a: jnp.repeat(a.reshape((b, t_) + a.shape[1:]), o_, axis=0).swapaxes(0, 1)
  feats = {k: per_obj(feats[k]) for k in FEATURE_KEYS}  # [T,N,...]
  flat = lambda a: a.swapaxes(1, 2).reshape((n, t_) + a.shape[3:]).swapaxes(0, 1)  # [T,N,...]
  gt_masks = flat(batch["masks"])
  boxes = flat(batch["boxes"])
  points = flat(batch["points"])
  visible = flat(batch["visible"]) & batch["obj_valid"].reshape(1, n)

  if plan is None:
    plan = sample_plan(
      key, task, cfg, t_, jnp.where(batch["obj_valid"].reshape(n, 1), visible.T, True)
    )
  xs = {k: feats[k][plan["order"]] for k in FEATURE_KEYS}
  xs.update(
    t=plan["order"].astype(jnp.int32),
    gt_masks=gt_masks[plan["order"]],
    boxes=boxes[plan["order"]],
    points=points[plan["order"]],
    key=plan["frame_keys"],
    branch=plan["branch"],
    kind=plan["kind"],
    correct=plan["correct"],
    write_cond=plan["write_cond"],
    cond_slot=plan["cond_slot"],
  )
  routes = _route_table(task)
  corrects = int(cfg.num_correction_pt_per_frame) > 0 and task != "point"
  cond, ring = WRITES.index("cond"), WRITES.index("ring")

  def step(bank, x):
    fr = _Frame(model, params, task, cfg, x)
    route = routes[x["branch"]]
    frame_prompts = {"memory": None}
    pts, labels = fr.empty_points()
    multi = True
    frame_prompts["prompt_as_output"] = fr.prompt_out()
    if task in ("mask", "box"):
      ipts, ilabels, imulti = fr.init_points()
      frame_prompts["no_memory"] = FramePrompt(ipts, ilabels)
      is_init = route == _NM
      pts = jnp.where(is_init, ipts, pts)
      labels = jnp.where(is_init, ilabels, labels)
      multi = jnp.where(is_init, imulti, multi)
    refine = None
    if corrects:
      refine = lambda o: jax.lax.cond(
        x["correct"], fr.corrections, fr.no_corrections, o, pts, labels
      )
    bank, out = track_step(
      model,
      params,
      x,
      bank,
      x["t"],
      frame_prompts,
      task=task,
      route=route,
      multimask=multi,
      num_frames=t_,
      future_cond_ptrs=True,
      write=jnp.where(x["write_cond"], cond, ring),
      cond_slot=x["cond_slot"],
      refine=refine,
      dropout_key=drop_key,
      # every slot, masked: one memory-attention variant to differentiate and compile (a
      # switch over present-memory buckets would compile each bucket's backward too)
      present_only=False,
    )
    first = jax.tree.map(lambda a: a[None], _record(out))
    if corrects:
      recs = jax.tree.map(lambda a, b_: jnp.concatenate([a, b_]), first, out.extra["recs"])
      n_steps = out.extra["n_steps"]
    else:
      recs, n_steps = first, jnp.int32(1)
    recs["step_valid"] = jnp.arange(recs["obj"].shape[0]) < n_steps
    final = {"low_res": out.low_res, "score": out.score, "obj_ptr": out.obj_ptr}
    return bank, (recs, final)

  bank = new_bank(model, n, cond_capacity=2)
  _, (steps, final) = jax.lax.scan(rematerialise(step, remat), bank, xs)
  out = {
    "multistep_pred_multimasks_high_res": steps["masks"],  # [T,S,N,M,S,S]
    "multistep_pred_ious": steps["ious"],  # [T,S,N,M]
    "multistep_object_score_logits": steps["obj"],  # [T,S,N,1]
    "step_valid": steps["step_valid"],  # [T,S]
    "candidate_valid": steps["cand"],  # [T,S,M]
  }
  if task == "box":
    out["multistep_pred_multiboxes_xyxy_norm"] = steps["boxes"]
  order = plan["order"]
  targets = {
    "masks": gt_masks[order],
    "boxes": boxes[order],
    "points": points[order],
    "visibles": visible[order],
  }
  if task == "point":  # soft Gaussian targets around the GT points
    heat = jax.vmap(
      lambda p: prompts.gaussian_heatmaps(p, s, int(cfg.point_radius), float(cfg.point_sigma))
    )(points[order])
    targets["masks"] = heat * visible[order][..., None, None]
  valid = jnp.broadcast_to(batch["obj_valid"].reshape(1, n), (t_, n))
  return {"outputs": out, "targets": targets, "valid": valid, "plan": plan, "frame_outputs": final}
