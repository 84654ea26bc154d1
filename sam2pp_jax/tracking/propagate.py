"""Whole-video tracking: prompt on frame 0, then a `lax.scan` over frames carrying a MemoryBank.

Objects are a batch axis; the task is static. Follows the reference predictor's per-frame
recipe (see shared/parity/README.md "What the reference does per task").
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.model.resize import resize_bilinear
from sam2pp_jax.tracking import prompts
from sam2pp_jax.tracking.memory_bank import MemoryBank, bf16_round


@dataclass(frozen=True)
class PromptInputs:
  """Model-resolution prompt of frame 0 for B objects (numpy, built on the host)."""

  mask_input: np.ndarray | None      # [B,S,S] float32: binary mask or Gaussian heatmap
  point_coords: np.ndarray | None    # [B,P,2] model pixels
  point_labels: np.ndarray | None    # [B,P] int32


def prepare_prompt(task: str, prompt: dict, video_hw, image_size: int, radius: int = 5,
                   sigma: float = 2.0) -> PromptInputs:
  """Video-resolution prompts -> model inputs, with the reference's exact arithmetic.

  mask: {"mask": [B,H,W] bool}; box: {"box_xyxy": [B,4]}; point: {"points_xy": [B,P,2],
  "point_labels": [B,P]} (the heatmap is the max of the positive points' Gaussians).
  """
  s = image_size
  if task == "mask":
    m = np.stack([prompts.mask_to_model_res(x, s) for x in np.asarray(prompt["mask"])])
    return PromptInputs(m.astype(np.float32), None, None)
  if task == "box":
    pts, labels = zip(*(prompts.box_to_points(b, video_hw, s)
                        for b in np.asarray(prompt["box_xyxy"], np.float32).reshape(-1, 4)))
    return PromptInputs(None, np.stack(pts), np.stack(labels).astype(np.int32))
  if task == "point":
    xy = np.asarray(prompt["points_xy"], np.float32)
    xy = xy.reshape(xy.shape[0], -1, 2)
    labels = np.asarray(prompt.get("point_labels", np.ones(xy.shape[:2])), np.int32)
    labels = labels.reshape(xy.shape[:2])
    coords = np.stack([prompts.to_model_coords(p, video_hw, s) for p in xy])
    heat = np.zeros((xy.shape[0], s, s), np.float32)
    for i in range(xy.shape[0]):
      for (x, y), l in zip(coords[i], labels[i]):
        if l == 1:
          heat[i] = np.maximum(heat[i], prompts.gaussian_point_mask(x, y, (s, s), radius, sigma))
    return PromptInputs(heat, coords, labels)
  raise ValueError(f"unknown task {task!r}")


def encode_frames(model, params, frames, task: str, chunk: int = 4) -> dict:
  """Image features of all frames [T,...] (batch 1 per frame), in jitted chunks of `chunk`."""
  enc = _encode_fn(model, task)
  t = frames.shape[0]
  outs = []
  for i in range(0, t, chunk):
    x = jnp.asarray(frames[i:i + chunk])
    n = x.shape[0]
    if n < chunk:   # pad the last chunk so one compiled shape serves the whole video
      x = jnp.concatenate([x, jnp.zeros((chunk - n,) + x.shape[1:], x.dtype)])
    e = enc(params, x)
    outs.append({k: e[k][:n] for k in ("vision", "vision_pos", "s0", "s1")})
  return {k: jnp.concatenate([o[k] for o in outs]) for k in outs[0]}


_ENCODE_CACHE: dict = {}


def _encode_fn(model, task):
  """One jitted encoder per (model, task); the model object is kept alive with its entry."""
  key = (id(model), task)
  if key not in _ENCODE_CACHE:
    _ENCODE_CACHE[key] = (model, jax.jit(
        lambda p, x: model.apply({"params": p}, x, task=task, method="encode_image")))
  return _ENCODE_CACHE[key][1]


def _apply(model, params, method, *args, **kw):
  return model.apply({"params": params}, *args, method=method, **kw)


def _bcast(x, b):
  """[1,...] frame features -> [B,...] (one copy per object)."""
  return jnp.broadcast_to(x, (b,) + x.shape[1:])


def _prompt_frame(model, params, feats0, pr: dict, task: str):
  """Frame-0 outputs: low-res logits, score, pointer, box (box task) for B objects."""
  b = pr["point_coords"].shape[0] if pr["mask_input"] is None else pr["mask_input"].shape[0]
  vision, s0, s1 = (_bcast(feats0[k], b) for k in ("vision", "s0", "s1"))
  if task == "box":
    nm = _apply(model, params, "no_memory_features", vision)
    o = _apply(model, params, "sam_heads", nm, s0, s1, pr["point_coords"], pr["point_labels"],
               None, task=task, multimask_output=True)
  else:
    o = _apply(model, params, "prompt_as_output", vision, s0, s1, pr["mask_input"],
               pr["point_coords"], pr["point_labels"], task=task)
  return o


def _frame_memory(model, params, vision, low_res, score, task):
  """Memory of a frame from its low-res logits upsampled to SxS; features bf16-rounded."""
  high = _apply(model, params, "upsample_to_image", low_res)
  feats, pos = _apply(model, params, "encode_memory", vision, high, score, task=task)
  return bf16_round(feats), pos


def _track_jit(model, task: str, num_frames: int, cond_capacity: int):
  """The jitted whole-video function (after encoding) for one static configuration."""
  c = model.config

  def run(params, feats, pr):
    b = (pr["point_coords"] if pr["mask_input"] is None else pr["mask_input"]).shape[0]
    o0 = _prompt_frame(model, params, {k: v[:1] for k, v in feats.items()}, pr, task)
    v0 = _bcast(feats["vision"][:1], b)
    mem0, pos0 = _frame_memory(model, params, v0, o0["low_res_masks"],
                               o0["object_score_logits"], task)
    hw = mem0.shape[1] * mem0.shape[2]
    bank = MemoryBank.empty(b, hw, int(c.mem_dim), int(c.hidden_dim),
                            num_maskmem=int(c.num_maskmem),
                            max_obj_ptrs=int(c.max_obj_ptrs_in_encoder),
                            cond_capacity=cond_capacity)
    bank = bank.write_cond(0, 0, mem0, pos0, o0["obj_ptr"])
    tpos = params["maskmem_tpos_enc"][:, 0, 0]
    ptr_pe = lambda rel, tdm: _apply(model, params, "obj_ptr_pos_encoding", rel, tdm)
    n_ptr = bank.num_ptr_tokens

    def step(bank, xs):
      t, vis, vpos, s0, s1 = xs
      vis, vpos, s0, s1 = (_bcast(x[None], b) for x in (vis, vpos, s0, s1))
      mem, mpos, mmask = bank.select(t, num_frames, tpos, ptr_pe)
      cond = _apply(model, params, "condition_on_memory", vis, vpos, mem, mpos, mmask,
                    task=task, num_obj_ptr_tokens=n_ptr)
      o = _apply(model, params, "sam_heads", cond, s0, s1, task=task, multimask_output=True)
      feats_t, pos_t = _frame_memory(model, params, vis, o["low_res_masks"],
                                     o["object_score_logits"], task)
      bank = bank.write(t, feats_t, pos_t, o["obj_ptr"])
      y = {"low_res": o["low_res_masks"], "score": o["object_score_logits"][:, 0],
           "obj_ptr": o["obj_ptr"], "maskmem": feats_t}
      if task == "box":
        y["box"] = o["boxes"]
      return bank, y

    xs = (jnp.arange(1, num_frames, dtype=jnp.int32), feats["vision"][1:],
          feats["vision_pos"][1:], feats["s0"][1:], feats["s1"][1:])
    bank, ys = jax.lax.scan(step, bank, xs)
    y0 = {"low_res": o0["low_res_masks"], "score": o0["object_score_logits"][:, 0],
          "obj_ptr": o0["obj_ptr"], "maskmem": mem0}
    if task == "box":
      y0["box"] = o0["boxes"]
    out = jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), y0, ys)
    return out, bank, pos0[0]

  return jax.jit(run)


_TRACK_CACHE: dict = {}


def track_video(model, params, frames, video_hw, task: str, prompt: dict | PromptInputs, *,
                chunk: int = 4, cond_capacity: int = 2, return_bank: bool = False) -> dict:
  """Track B objects prompted on frame 0 through frames [T,S,S,3] (normalised, NHWC).

  Returns numpy dict: low_res_mask_logits [T,B,S/4,S/4], video_res_mask_logits [T,B,H,W],
  object_score_logits [T,B], obj_ptr [T,B,C], maskmem_features_bf16 [T,B,h,w,Cm],
  maskmem_pos_enc [h,w,Cm], visible [T,B]; box: pred_box_xyxy(_norm) [T,B,4]; point:
  point_xy [T,B,2] (x, y). With return_bank, also the final MemoryBank under "bank".
  """
  s = int(model.config.image_size)
  h, w = int(video_hw[0]), int(video_hw[1])
  if not isinstance(prompt, PromptInputs):
    prompt = prepare_prompt(task, prompt, (h, w), s, int(model.config.point_gaussian_radius),
                            float(model.config.point_gaussian_sigma))
  num_frames = int(frames.shape[0])
  if num_frames < 1:
    raise ValueError("need at least one frame")
  feats = encode_frames(model, params, frames, task, chunk)
  key = (id(model), task, num_frames, cond_capacity)
  if key not in _TRACK_CACHE:
    _TRACK_CACHE[key] = (model, _track_jit(model, task, num_frames, cond_capacity))
  fn = _TRACK_CACHE[key][1]
  pr = {k: None if v is None else jnp.asarray(v) for k, v in vars(prompt).items()}
  out, bank, pos = fn(params, feats, pr)
  low = out["low_res"]
  video = resize_bilinear(low.reshape((-1,) + low.shape[2:])[..., None], (h, w))[..., 0]
  video = video.reshape(low.shape[:2] + (h, w))
  res = {"low_res_mask_logits": low, "video_res_mask_logits": video,
         "object_score_logits": out["score"], "obj_ptr": out["obj_ptr"],
         "maskmem_features_bf16": out["maskmem"], "maskmem_pos_enc": pos,
         "visible": out["score"] > 0}
  if task == "box":
    res["pred_box_xyxy_norm"] = out["box"]
    res["pred_box_xyxy"] = out["box"] * jnp.asarray([w, h, w, h], jnp.float32)
  if task == "point":
    flat = jnp.argmax(video.reshape(video.shape[:2] + (-1,)), axis=-1)   # first max, row-major
    res["point_xy"] = jnp.stack([flat % w, flat // w], axis=-1)
  res = {k: np.asarray(v) for k, v in res.items()}
  if return_bank:
    res["bank"] = bank
  return res
