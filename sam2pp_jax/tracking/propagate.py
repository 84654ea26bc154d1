"""Whole-video tracking: prompt on one frame, then a `lax.scan` over frames carrying a MemoryBank.

Objects are a batch axis; the task is static. Follows the reference predictor's per-frame
recipe (see shared/parity/README.md "What the reference does per task").

Device memory is flat in the video length: frames are encoded inside the scan, `chunk` frames
at a time (an outer scan over chunks, an inner scan over the chunk's frames), so only one
chunk's image features exist at once. Only the per-frame outputs (low-res logits, scores,
pointers, bf16 memories) are stacked over time; video-resolution post-processing also runs in
chunks.

Prompting on frame k and tracking forward is tracking frames[k:] from their frame 0; tracking
in reverse from k is tracking frames[k::-1] forward. Both keep the whole video's length as
`num_frames` (the pointer normaliser min(T, max_obj_ptrs) - 1). This is exact for the
reference: its `_prepare_memory_conditioned_features` uses memories at frame_idx -+ d and signs
the pointer offsets with tpos_sign_mul = -1 in reverse, so (frame_idx - t) * -1 = k - f, the
forward distance in the reversed clip; memory_temporal_stride_for_eval is 1.
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


FEATURE_KEYS = ("vision", "vision_pos", "s0", "s1")


def encode_frames(model, params, frames, task: str, chunk: int = 4) -> dict:
  """Image features of all frames [T,...] (batch 1 per frame), in jitted chunks of `chunk`.

  Holds every frame's features on the device (grows with T); `track_video` does not use it
  but accepts its result as `features=` (e.g. features cached for interactive use).
  """
  enc = _encode_fn(model, task)
  t = frames.shape[0]
  outs = []
  for i in range(0, t, chunk):
    x = jnp.asarray(frames[i:i + chunk])
    n = x.shape[0]
    if n < chunk:   # pad the last chunk so one compiled shape serves the whole video
      x = jnp.concatenate([x, jnp.zeros((chunk - n,) + x.shape[1:], x.dtype)])
    e = enc(params, x)
    outs.append({k: e[k][:n] for k in FEATURE_KEYS})
  return {k: jnp.concatenate([o[k] for o in outs]) for k in outs[0]}


_ENCODE_CACHE: dict = {}


def _encode_fn(model, task):
  """One jitted encoder per (model, task); the model object is kept alive with its entry."""
  key = (model, task)   # equal models (same config) share compiled functions
  if key not in _ENCODE_CACHE:
    _ENCODE_CACHE[key] = (model, jax.jit(
        lambda p, x: model.apply({"params": p}, x, task=task, method="encode_image")))
  return _ENCODE_CACHE[key][1]


def _apply(model, params, method, *args, **kw):
  return model.apply({"params": params}, *args, method=method, **kw)


def _encode(model, params, x, task):
  """[N,S,S,3] frames -> the tracker's features dict (traced inside the scan)."""
  e = _apply(model, params, "encode_image", x, task=task)
  return {k: e[k] for k in FEATURE_KEYS}


def _bcast(x, b):
  """[1,...] frame features -> [B,...] (one copy per object)."""
  return jnp.broadcast_to(x, (b,) + x.shape[1:])


def _prompt_frame(model, params, feats0, pr: dict, task: str):
  """Prompt-frame outputs: low-res logits, score, pointer, box (box task) for B objects."""
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


_PROGRESS: list = []   # the active progress callback of the running track_video call


def _report_progress(t):
  if _PROGRESS and _PROGRESS[-1] is not None:
    _PROGRESS[-1](int(t))


def _track_jit(model, task: str, num_frames: int, cond_capacity: int, chunk: int,
               encoded: bool, progress: bool = False):
  """The jitted whole-video function for one static configuration.

  run(params, xs, pr): xs is frames [T,S,S,3] (encoded=False: encoded chunk-wise inside the
  scan) or a features dict of [T,...] arrays (encoded=True). Frame 0 of xs is the prompt frame.
  """
  c = model.config

  def run(params, xs, pr):
    b = (pr["point_coords"] if pr["mask_input"] is None else pr["mask_input"]).shape[0]
    first = jax.tree.map(lambda a: a[:1], xs)
    f0 = first if encoded else _encode(model, params, first, task)
    o0 = _prompt_frame(model, params, f0, pr, task)
    v0 = _bcast(f0["vision"], b)
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
    y0 = {"low_res": o0["low_res_masks"], "score": o0["object_score_logits"][:, 0],
          "obj_ptr": o0["obj_ptr"], "maskmem": mem0}
    if task == "box":
      y0["box"] = o0["boxes"]

    t_total = jax.tree.leaves(xs)[0].shape[0]
    n = t_total - 1
    if n == 0:
      return jax.tree.map(lambda a: a[None], y0), bank, pos0[0]

    def step(bank, x):
      t, f = x
      vis, vpos, s0, s1 = (_bcast(f[k][None], b) for k in FEATURE_KEYS)
      mem, mpos, mmask = bank.select(t, num_frames, tpos, ptr_pe)
      cond = _apply(model, params, "condition_on_memory", vis, vpos, mem, mpos, mmask,
                    task=task, num_obj_ptr_tokens=n_ptr)
      o = _apply(model, params, "sam_heads", cond, s0, s1, task=task, multimask_output=True)
      feats_t, pos_t = _frame_memory(model, params, vis, o["low_res_masks"],
                                     o["object_score_logits"], task)
      new = bank.write(t, feats_t, pos_t, o["obj_ptr"])
      # padding frames past the clip's end leave the bank untouched
      bank = jax.tree.map(lambda a, o_: jnp.where(t < t_total, a, o_), new, bank)
      y = {"low_res": o["low_res_masks"], "score": o["object_score_logits"][:, 0],
           "obj_ptr": o["obj_ptr"], "maskmem": feats_t}
      if task == "box":
        y["box"] = o["boxes"]
      if progress:   # host callback with the clip-relative frame index (no numeric effect)
        jax.debug.callback(_report_progress, t, ordered=True)
      return bank, y

    def chunk_body(bank, x):
      ts, frames_c = x
      feats = frames_c if encoded else _encode(model, params, frames_c, task)
      return jax.lax.scan(step, bank, (ts, feats))

    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def blocks(a):
      a = a[1:]
      if pad:
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
      return a.reshape((n_chunks, chunk) + a.shape[1:])

    ts = jnp.arange(1, 1 + n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)
    bank, ys = jax.lax.scan(chunk_body, bank, (ts, jax.tree.map(blocks, xs)))
    ys = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], ys)
    out = jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), y0, ys)
    return out, bank, pos0[0]

  return jax.jit(run)


def _post_jit(hw, task):
  """Video-resolution logits (and point argmax) of a block of frames' low-res logits."""
  h, w = hw

  def post(low):
    video = resize_bilinear(low.reshape((-1,) + low.shape[2:])[..., None], (h, w))[..., 0]
    video = video.reshape(low.shape[:2] + (h, w))
    out = {"video": video}
    if task == "point":
      flat = jnp.argmax(video.reshape(video.shape[:2] + (-1,)), axis=-1)  # first max, row-major
      out["point_xy"] = jnp.stack([flat % w, flat // w], axis=-1)
    return out

  return jax.jit(post)


_TRACK_CACHE: dict = {}
_POST_CACHE: dict = {}


def clip_indices(total: int, prompt_frame: int = 0, reverse: bool = False) -> np.ndarray:
  """Original frame indices processed, in processing order (prompt frame first)."""
  k = prompts.check_frame_index(prompt_frame, total)
  return np.arange(k, -1, -1) if reverse else np.arange(k, total)


def track_video(model, params, frames, video_hw, task: str, prompt: dict | PromptInputs, *,
                chunk: int = 4, cond_capacity: int = 2, return_bank: bool = False,
                prompt_frame: int = 0, reverse: bool = False, num_frames: int | None = None,
                features: dict | None = None, video_res: bool = True,
                progress=None) -> dict:
  """Track B objects prompted on frame `prompt_frame` through frames [T,S,S,3] (normalised).

  Tracks frames prompt_frame..T-1 (or prompt_frame..0 with reverse). Frames are encoded
  inside the scan, `chunk` at a time (device memory flat in T); `features` (a dict of [T,...]
  arrays from `encode_frames`) skips the encoder. `num_frames` (default T) is the video length
  the pointer normaliser uses. `progress(i)` is called from the device loop after the i-th
  frame of the clip is tracked (i = 1..T'-1, also for padding frames i >= T').

  Returns numpy dict, time axis in processing order (prompt frame first): frame_idx [T'] (the
  original index of each output frame), low_res_mask_logits [T',B,S/4,S/4],
  video_res_mask_logits [T',B,H,W] (omitted when video_res=False), object_score_logits [T',B],
  obj_ptr [T',B,C], maskmem_features_bf16 [T',B,h,w,Cm], maskmem_pos_enc [h,w,Cm],
  visible [T',B]; box: pred_box_xyxy(_norm) [T',B,4]; point: point_xy [T',B,2] (x, y).
  With return_bank, also the final MemoryBank under "bank".
  """
  s = int(model.config.image_size)
  h, w = int(video_hw[0]), int(video_hw[1])
  chunk = int(chunk)
  if chunk < 1:
    raise ValueError(f"chunk={chunk}: give a chunk size >= 1")
  if not isinstance(prompt, PromptInputs):
    prompt = prepare_prompt(task, prompt, (h, w), s, int(model.config.point_gaussian_radius),
                            float(model.config.point_gaussian_sigma))
  total = int(frames.shape[0]) if features is None else int(features["vision"].shape[0])
  if total < 1:
    raise ValueError("need at least one frame")
  idx = clip_indices(total, prompt_frame, reverse)
  num_frames = total if num_frames is None else int(num_frames)
  if num_frames < len(idx):
    raise ValueError(f"num_frames={num_frames} is shorter than the {len(idx)} frames tracked")
  k = int(idx[0])
  sel = (lambda a: a[k::-1]) if reverse else (lambda a: a[k:])
  if features is None:
    xs = jnp.asarray(sel(np.asarray(frames)) if isinstance(frames, np.ndarray) else
                     sel(frames))
  else:
    xs = {key: sel(jnp.asarray(features[key])) for key in FEATURE_KEYS}
  chunk = max(1, min(chunk, len(idx) - 1))
  key = (model, task, num_frames, cond_capacity, chunk, features is not None,
         progress is not None)
  if key not in _TRACK_CACHE:
    _TRACK_CACHE[key] = (model, _track_jit(model, task, num_frames, cond_capacity, chunk,
                                           features is not None, progress is not None))
  fn = _TRACK_CACHE[key][1]
  pr = {k_: None if v is None else jnp.asarray(v) for k_, v in vars(prompt).items()}
  _PROGRESS.append(progress)
  try:
    out, bank, pos = fn(params, xs, pr)
    jax.block_until_ready(out)
    if progress is not None:
      jax.effects_barrier()
  finally:
    _PROGRESS.pop()
  res = {"frame_idx": idx, "low_res_mask_logits": out["low_res"],
         "object_score_logits": out["score"], "obj_ptr": out["obj_ptr"],
         "maskmem_features_bf16": out["maskmem"], "maskmem_pos_enc": pos,
         "visible": out["score"] > 0}
  if task == "box":
    res["pred_box_xyxy_norm"] = out["box"]
    res["pred_box_xyxy"] = out["box"] * jnp.asarray([w, h, w, h], jnp.float32)
  if video_res or task == "point":
    pkey = (h, w, task)
    if pkey not in _POST_CACHE:
      _POST_CACHE[pkey] = _post_jit((h, w), task)
    post = _POST_CACHE[pkey]
    low = out["low_res"]
    parts = []
    for i in range(0, low.shape[0], chunk):   # blocks of `chunk` frames, to the host at once
      blk = low[i:i + chunk]
      m = blk.shape[0]
      if m < chunk:   # one compiled shape for every block
        blk = jnp.concatenate([blk, jnp.zeros((chunk - m,) + blk.shape[1:], blk.dtype)])
      parts.append({k_: np.asarray(v)[:m] for k_, v in post(blk).items()
                    if video_res or k_ != "video"})
    if video_res:
      res["video_res_mask_logits"] = np.concatenate([p["video"] for p in parts])
    if task == "point":
      res["point_xy"] = np.concatenate([p["point_xy"] for p in parts])
  res = {k_: np.asarray(v) for k_, v in res.items()}
  if return_bank:
    res["bank"] = bank
  return res
