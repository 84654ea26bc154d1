"""Training forward for one batch of clips of one task: prompt simulation, memory-conditioned
tracking through the clip with the tracker's own MemoryBank and model entry points, and
iterative corrective clicks, all inside one jit with fixed shapes.

Per batch (as the reference draws them per forward): 1 or 2 initial conditioning frames (frame 0
and a random later one; point task: 1), mask-input vs point-input prompts with the reference's
probabilities, and - for point inputs - corrective clicks on the initial conditioning frames and,
when only one was drawn, possibly on one extra random frame, which then becomes a conditioning
frame (add_all_frames_to_correct_as_cond). Frames are processed conditioning frames first, then
the rest in time order; a `lax.switch` picks each frame's branch, so only one runs.

Known differences from the reference (documented, not hidden):
  * box task, clean-box frames: the reference feeds the GT mask as the output (and the box as
    points); we run the inference path (box points through the heads), so training and
    inference take the same prompt path;
  * peft's LoRA dropout is not modelled (LoRA factors are merged before the apply);
  * stored memories are bf16-rounded as in the tracker (MemoryBank), a straight-through cast.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections

from sam2pp_jax.tracking.memory_bank import MemoryBank
from sam2pp_jax.train import prompt_sim

FEATURE_KEYS = ("vision", "vision_pos", "s0", "s1")
# init-frame prompt kinds; a frame's branch is its kind (init frames) or B_TRACK
PROMPT_OUT, BOX_CLEAN, BOX_NOISY, CLICK = 0, 1, 2, 3
B_TRACK = 3


def default_prompt_config() -> ml_collections.ConfigDict:
  """Prompt-simulation numbers of the released three-task training config (model section)."""
  return ml_collections.ConfigDict(dict(
      prob_to_use_pt_input=0.5,        # prob_to_use_pt_input_for_train
      prob_to_use_box_input=0.5,       # prob_to_use_box_input_for_train
      num_init_cond_frames=2,          # num_init_cond_frames_for_train (rand 1..2)
      num_frames_to_correct=2,         # num_frames_to_correct_for_train (rand)
      num_correction_pt_per_frame=7,   # num_correction_pt_per_frame
      prob_to_sample_from_gt=0.1,      # prob_to_sample_from_gt_for_train
      box_noise=0.1, box_noise_bound=20.0,   # SAM defaults of sample_(noised_)box_points
      point_radius=5, point_sigma=2.0,       # Gaussian prompt/target (inference values)
      remat=False,                           # recompute frame steps / encoder in backward
  ))


def _apply(model, params, method, *args, **kw):
  return model.apply({"params": params}, *args, method=method, **kw)


def _use_multimask(task: str, n_points: int, has_box: bool) -> bool:
  """SAM 2++'s rule (multimask_output_in_sam, for tracking too, 0 <= points <= 1); for the box
  task a box prompt's two corners do not count."""
  n = n_points - (2 if (task == "box" and has_box) else 0)
  return 0 <= n <= 1


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
  if task == "box":            # an invisible later frame is dropped as a conditioning frame
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
  correct = (is_init & use_pt) | is_extra     # point inputs get corrective clicks
  write_cond = is_init | is_extra
  cond_slot = jnp.where(k == 0, 0, 1)
  return {"order": order, "branch": branch, "kind": kind, "correct": correct,
          "write_cond": write_cond, "cond_slot": cond_slot, "use_pt": use_pt,
          "two_cond": two_cond, "kinds": kinds, "extra": extra,
          "frame_keys": jax.random.split(ks[3], t_)}


# ------------------------------------------------------------------------------ one frame
P_INIT = 2       # prompt slots of a frame before corrections (a box's two corners)


class _Frame:
  """Everything one frame's branches need, shared by all of them."""

  def __init__(self, model, params, task, cfg, bank, num_frames, x):
    self.model, self.params, self.task, self.cfg, self.bank = model, params, task, cfg, bank
    self.num_frames, self.x = num_frames, x
    c = model.config
    self.m = int(c.decoder.num_multimask_outputs)
    self.n_corr = int(cfg.num_correction_pt_per_frame)
    self.s = int(c.image_size)
    self.n = x["vision"].shape[0]

  # -- pieces
  def heads(self, vision, pts=None, labels=None, mask_prompt=None, multi=True):
    return _apply(self.model, self.params, "sam_heads", vision, self.x["s0"], self.x["s1"], pts,
                  labels, mask_prompt, task=self.task, multimask_output=multi)

  def record(self, o, multi) -> Dict[str, jax.Array]:
    """One prediction step with M candidates (single-mask steps: only candidate 0 is real)."""
    mm = o["multi_masks"]
    n, m_ = mm.shape[:2]
    high = _apply(self.model, self.params, "upsample_to_image",
                  mm.reshape((n * m_,) + mm.shape[2:]))
    high = high.reshape((n, m_) + high.shape[1:])
    pad = self.m - m_
    padm = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    cand = jnp.where(jnp.asarray(multi), jnp.arange(self.m) < m_, jnp.arange(self.m) < 1)
    rec = {"masks": padm(high), "ious": padm(o["ious"]), "obj": o["object_score_logits"],
           "cand": cand}
    if self.task == "box":
      rec["boxes"] = padm(o["multi_boxes"])
    return rec

  def empty_prompt(self):
    return (jnp.zeros((self.n, P_INIT, 2), jnp.float32),
            -jnp.ones((self.n, P_INIT), jnp.int32))

  def result(self, o, rec, pix, pts, labels):
    return {"low_res": o["low_res_masks"], "high": o["high_res_masks"],
            "score": o["object_score_logits"], "obj_ptr": o["obj_ptr"], "rec": rec, "pix": pix,
            "pts": pts, "labels": labels}

  def no_mem(self):
    return _apply(self.model, self.params, "no_memory_features", self.x["vision"])

  def with_mem(self):
    bank, t = self.bank, self.x["t"]
    tpos = self.params["maskmem_tpos_enc"][:, 0, 0]
    ptr_pe = lambda rel, tdm: _apply(self.model, self.params, "obj_ptr_pos_encoding", rel, tdm)
    mem, mpos, mmask = bank.select(t, self.num_frames, tpos, ptr_pe, future_cond_ptrs=True)
    return _apply(self.model, self.params, "condition_on_memory", self.x["vision"],
                  self.x["vision_pos"], mem, mpos, mmask, task=self.task,
                  num_obj_ptr_tokens=bank.num_ptr_tokens)

  # -- branches (identical output structures)
  def prompt_out(self):
    """Mask task: the GT mask is the output; point task: the point + Gaussian heatmap."""
    x = self.x
    if self.task == "mask":
      o = _apply(self.model, self.params, "prompt_as_output", x["vision"], x["s0"], x["s1"],
                 x["gt_masks"].astype(jnp.float32), task="mask")
    else:
      heat = prompt_sim.gaussian_heatmaps(x["points"], self.s, int(self.cfg.point_radius),
                                          float(self.cfg.point_sigma))
      o = _apply(self.model, self.params, "prompt_as_output", x["vision"], x["s0"], x["s1"],
                 heat, x["points"][:, None, :], jnp.ones((self.n, 1), jnp.int32), task="point")
    rec = {"masks": jnp.pad(o["high_res_masks"][:, None],
                            [(0, 0), (0, self.m - 1), (0, 0), (0, 0)]),
           "ious": jnp.pad(o["ious"], [(0, 0), (0, self.m - 1)]),
           "obj": o["object_score_logits"], "cand": jnp.arange(self.m) < 1}
    if self.task == "box":
      rec["boxes"] = jnp.zeros((self.n, self.m, 4), jnp.float32)
    pts, labels = self.empty_prompt()
    return self.result(o, rec, x["vision"], pts, labels)

  def init_points(self):
    """A box (clean or noised) or one click from the GT mask, on the no-memory features."""
    x = self.x
    kind = x["kind"]
    if self.task == "mask":       # SAM's box from the GT mask, always noised
      boxes, noise = prompt_sim.mask_to_box(x["gt_masks"]), self.cfg.box_noise
      bpts, blab = prompt_sim.box_points(jax.random.fold_in(x["key"], 7), boxes, self.s, noise,
                                         self.cfg.box_noise_bound)
    else:
      clean = prompt_sim.box_points(jax.random.fold_in(x["key"], 7), x["boxes"], self.s, 0.0)
      noisy = prompt_sim.box_points(jax.random.fold_in(x["key"], 7), x["boxes"], self.s,
                                    self.cfg.box_noise, self.cfg.box_noise_bound)
      bpts = jnp.where(kind == BOX_NOISY, noisy[0], clean[0])
      blab = clean[1]
    cxy, clab = prompt_sim.click_from_errors(jax.random.fold_in(x["key"], 11), x["gt_masks"])
    cpts = jnp.concatenate([cxy, jnp.zeros_like(cxy)], axis=1)
    clabs = jnp.concatenate([clab, -jnp.ones_like(clab)], axis=1)
    is_click = kind == CLICK
    pts = jnp.where(is_click, cpts, bpts)
    labels = jnp.where(is_click, clabs, blab)
    n_eff = jnp.where(is_click, 1, 0 if self.task == "box" else 2)
    multi = (n_eff >= 0) & (n_eff <= 1)
    pix = self.no_mem()
    o = self.heads(pix, pts, labels, multi=multi)
    return self.result(o, self.record(o, multi), pix, pts, labels)

  def track(self):
    pix = self.with_mem()
    o = self.heads(pix)
    pts, labels = self.empty_prompt()
    return self.result(o, self.record(o, True), pix, pts, labels)

  # -- corrective clicks
  def corrections(self, r):
    """`n_corr` clicks from the current error region (uniform; with prob_to_sample_from_gt from
    the GT mask), each re-running the heads with all clicks so far plus the previous low-res
    logits as the mask prompt. One scanned step with a fixed point buffer: slots not yet used
    are not-a-point tokens (the reference's point count grows instead)."""
    x, n, p = self.x, self.n, P_INIT + self.n_corr
    pts = jnp.concatenate([r["pts"], jnp.zeros((n, self.n_corr, 2), jnp.float32)], axis=1)
    labels = jnp.concatenate([r["labels"], -jnp.ones((n, self.n_corr), jnp.int32)], axis=1)
    n_box = jnp.sum(r["labels"] >= 2, axis=1)[0] if self.task == "box" else 0
    n_real0 = jnp.sum(r["labels"] >= 0, axis=1)[0]
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
      n_eff = n_real0 + i + 1 - n_box
      multi = (n_eff >= 0) & (n_eff <= 1)
      o = self.heads(r["pix"], pts, labels, low[..., None], multi=multi)
      out = {"rec": self.record(o, multi), "ptr": o["obj_ptr"], "score": o["object_score_logits"]}
      return (o["low_res_masks"], o["high_res_masks"], pts, labels), out

    (low, high, _, _), ys = jax.lax.scan(body, (r["low_res"], r["high"], pts, labels),
                                         (jnp.arange(self.n_corr), keys))
    return {"low_res": low, "score": ys["score"][-1], "obj_ptr": ys["ptr"][-1],
            "recs": ys["rec"], "n_steps": jnp.int32(1 + self.n_corr)}

  def no_corrections(self, r):
    zeros = jax.tree.map(lambda a: jnp.zeros((self.n_corr,) + a.shape, a.dtype), r["rec"])
    return {"low_res": r["low_res"], "score": r["score"], "obj_ptr": r["obj_ptr"],
            "recs": zeros, "n_steps": jnp.int32(1)}


def _branches(task: str):
  """The frame-branch table of a task, indexed by the B_* constants."""
  if task == "point":
    return ["prompt_out", "prompt_out", "prompt_out", "track"]
  if task == "mask":
    return ["prompt_out", "init_points", "init_points", "track"]
  return ["init_points", "init_points", "init_points", "track"]


# ------------------------------------------------------------------------------ clip
def clip_forward(model, params, batch, key, *, task: str, cfg) -> Dict[str, jax.Array]:
  """Run one batch [B clips, T frames, O objects] through the tracker with simulated prompts.

  batch: frames [B,T,S,S,3]; masks [B,T,O,S,S] bool; boxes [B,T,O,4] xyxy model px; points
  [B,T,O,2]; visible [B,T,O]; obj_valid [B,O]. Objects are flattened to N = B*O and share
  their clip's frame features. Returns the loss inputs, frames in processing order:
  multistep_* [T,S,N,M,...], step_valid [T,S], candidate_valid [T,S,N,M], targets in the same
  order, and the plan.
  """
  c = model.config
  batch = jax.tree.map(jnp.asarray, dict(batch))
  frames = batch["frames"]
  b, t_ = frames.shape[:2]
  o_ = batch["masks"].shape[2]
  n = b * o_
  s = int(c.image_size)

  encode = lambda p, x: _apply(model, p, "encode_image", x, task=task)
  if cfg.get("remat", False):
    encode = jax.checkpoint(encode)
  feats = encode(params, frames.reshape((b * t_,) + frames.shape[2:]))
  per_obj = lambda a: jnp.repeat(a.reshape((b, t_) + a.shape[1:]), o_, axis=0).swapaxes(0, 1)
  feats = {k: per_obj(feats[k]) for k in FEATURE_KEYS}          # [T,N,...]
  flat = lambda a: a.swapaxes(1, 2).reshape((n, t_) + a.shape[3:]).swapaxes(0, 1)  # [T,N,...]
  gt_masks = flat(batch["masks"])
  boxes = flat(batch["boxes"])
  points = flat(batch["points"])
  visible = flat(batch["visible"]) & batch["obj_valid"].reshape(1, n)

  plan = sample_plan(key, task, cfg, t_, jnp.where(batch["obj_valid"].reshape(n, 1),
                                                   visible.T, True))
  xs = {k: feats[k][plan["order"]] for k in FEATURE_KEYS}
  xs.update(t=plan["order"].astype(jnp.int32), gt_masks=gt_masks[plan["order"]],
            boxes=boxes[plan["order"]], points=points[plan["order"]],
            key=plan["frame_keys"], branch=plan["branch"], kind=plan["kind"],
            correct=plan["correct"], write_cond=plan["write_cond"], cond_slot=plan["cond_slot"])

  # memory geometry from a tiny probe of the memory encoder's output shape
  mem_hw = (s // 16) * (s // 16)
  bank = MemoryBank.empty(n, mem_hw, int(c.mem_dim), int(c.hidden_dim),
                          num_maskmem=int(c.num_maskmem),
                          max_obj_ptrs=int(c.max_obj_ptrs_in_encoder), cond_capacity=2)
  names = _branches(task)

  def step(bank, x):
    fr = _Frame(model, params, task, cfg, bank, t_, x)
    r = jax.lax.switch(x["branch"], [getattr(fr, nm) for nm in names])
    if fr.n_corr > 0 and task != "point":
      c_ = jax.lax.cond(x["correct"], fr.corrections, fr.no_corrections, r)
      recs = jax.tree.map(lambda a, b_: jnp.concatenate([a[None], b_]), r["rec"], c_["recs"])
      n_steps = c_["n_steps"]
    else:
      c_ = r
      recs = jax.tree.map(lambda a: a[None], r["rec"])
      n_steps = jnp.int32(1)
    recs["step_valid"] = jnp.arange(recs["obj"].shape[0]) < n_steps
    high = _apply(model, params, "upsample_to_image", c_["low_res"])
    feats_t, pos_t = _apply(model, params, "encode_memory", x["vision"], high, c_["score"],
                            task=task)
    as_cond = bank.write_cond(x["cond_slot"], x["t"], feats_t, pos_t, c_["obj_ptr"])
    as_ring = bank.write(x["t"], feats_t, pos_t, c_["obj_ptr"])
    bank = jax.tree.map(lambda a, b_: jnp.where(x["write_cond"], a, b_), as_cond, as_ring)
    return bank, recs

  _, steps = jax.lax.scan(jax.checkpoint(step) if cfg.get("remat", False) else step, bank, xs)
  out = {
      "multistep_pred_multimasks_high_res": steps["masks"],       # [T,S,N,M,S,S]
      "multistep_pred_ious": steps["ious"],                        # [T,S,N,M]
      "multistep_object_score_logits": steps["obj"],               # [T,S,N,1]
      "step_valid": steps["step_valid"],                           # [T,S]
      "candidate_valid": steps["cand"],                            # [T,S,M]
  }
  if task == "box":
    out["multistep_pred_multiboxes_xyxy_norm"] = steps["boxes"]
  order = plan["order"]
  targets = {"masks": gt_masks[order], "boxes": boxes[order], "points": points[order],
             "visibles": visible[order]}
  if task == "point":   # soft Gaussian targets around the GT points
    heat = jax.vmap(lambda p: prompt_sim.gaussian_heatmaps(p, s, int(cfg.point_radius),
                                                           float(cfg.point_sigma)))(points[order])
    targets["masks"] = heat * visible[order][..., None, None]
  valid = jnp.broadcast_to(batch["obj_valid"].reshape(1, n), (t_, n))
  return {"outputs": out, "targets": targets, "valid": valid, "plan": plan}
