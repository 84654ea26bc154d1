"""Whole-video tracking: prompt on one frame, then a `lax.scan` over frames carrying a MemoryBank.

Objects are a batch axis; the task is static. Follows the reference predictor's per-frame
recipe (see shared/parity/README.md "What the reference does per task").

Device memory is flat in the video length: frames stay on the host and are fed `chunk` at a
time to one jitted chunk step (encode the chunk, scan over its frames carrying the donated
memory bank), called from a Python loop; each chunk's outputs (low-res logits, scores,
pointers, bf16 memories, and the video-resolution logits computed per chunk) are copied into
host numpy arrays at once, so nothing on the device is stacked over time.

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
from sam2pp_jax.tracking.point_readout import check_readout, read_points


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


def _init_jit(model, task: str, cond_capacity: int, encoded: bool):
  """Jitted prompt frame: init(params, first, pr) -> (y0, bank, pos0).

  `first` is the prompt frame [1,S,S,3] (encoded=False) or its features dict of [1,...] arrays.
  """
  c = model.config

  def init(params, first, pr):
    b = (pr["point_coords"] if pr["mask_input"] is None else pr["mask_input"]).shape[0]
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
    y0 = {"low_res": o0["low_res_masks"], "score": o0["object_score_logits"][:, 0],
          "obj_ptr": o0["obj_ptr"], "maskmem": mem0}
    if task == "box":
      y0["box"] = o0["boxes"]
    return jax.tree.map(lambda a: a[None], y0), bank, pos0[0]

  return jax.jit(init)


def _step_jit(model, task: str, num_frames: int, encoded: bool):
  """The jitted chunk step, one compiled function for every chunk of the video.

  step(params, bank, xs, ts, valid) -> (bank, ys): xs is a chunk of K frames [K,S,S,3]
  (encoded=False: encoded here, as one batch of K) or a features dict of [K,...] arrays
  (encoded=True); ts [K] int32 clip-relative frame indices; valid [K] bool (False for the
  host-side padding of the last chunk: those frames leave the bank untouched). ys: per-frame
  outputs stacked over the K frames. The bank (argument 1) is donated.
  """

  def run(params, bank, xs, ts, valid):
    b = bank.cond_ptr.shape[0]
    tpos = params["maskmem_tpos_enc"][:, 0, 0]
    ptr_pe = lambda rel, tdm: _apply(model, params, "obj_ptr_pos_encoding", rel, tdm)
    n_ptr = bank.num_ptr_tokens
    feats = xs if encoded else _encode(model, params, xs, task)

    def step(bank, x):
      t, ok, f = x
      vis, vpos, s0, s1 = (_bcast(f[k][None], b) for k in FEATURE_KEYS)
      mem, mpos, mmask = bank.select(t, num_frames, tpos, ptr_pe)
      cond = _apply(model, params, "condition_on_memory", vis, vpos, mem, mpos, mmask,
                    task=task, num_obj_ptr_tokens=n_ptr)
      o = _apply(model, params, "sam_heads", cond, s0, s1, task=task, multimask_output=True)
      feats_t, pos_t = _frame_memory(model, params, vis, o["low_res_masks"],
                                     o["object_score_logits"], task)
      new = bank.write(t, feats_t, pos_t, o["obj_ptr"])
      # padding frames past the clip's end leave the bank untouched
      bank = jax.tree.map(lambda a, o_: jnp.where(ok, a, o_), new, bank)
      y = {"low_res": o["low_res_masks"], "score": o["object_score_logits"][:, 0],
           "obj_ptr": o["obj_ptr"], "maskmem": feats_t}
      if task == "box":
        y["box"] = o["boxes"]
      return bank, y

    return jax.lax.scan(step, bank, (ts, valid, feats))

  return jax.jit(run, donate_argnums=(1,))


def _post_jit(hw, task, point_readout, image_size):
  """Video-resolution logits (and the point, see point_readout.py) of a block's low-res logits."""
  h, w = hw

  def post(low):
    video = resize_bilinear(low.reshape((-1,) + low.shape[2:])[..., None], (h, w))[..., 0]
    video = video.reshape(low.shape[:2] + (h, w))
    out = {"video": video}
    if task == "point":
      out["point_xy"] = read_points(point_readout, low, video, image_size, (h, w))
    return out

  return jax.jit(post)


_INIT_CACHE: dict = {}
_STEP_CACHE: dict = {}
_POST_CACHE: dict = {}


def clip_indices(total: int, prompt_frame: int = 0, reverse: bool = False) -> np.ndarray:
  """Original frame indices processed, in processing order (prompt frame first)."""
  k = prompts.check_frame_index(prompt_frame, total)
  return np.arange(k, -1, -1) if reverse else np.arange(k, total)


def track_video(model, params, frames, video_hw, task: str, prompt: dict | PromptInputs, *,
                chunk: int = 4, cond_capacity: int = 2, return_bank: bool = False,
                prompt_frame: int = 0, reverse: bool = False, num_frames: int | None = None,
                features: dict | None = None, video_res: bool = True,
                point_readout: str = "argmax", progress=None) -> dict:
  """Track B objects prompted on frame `prompt_frame` through T frames [S,S,3] (normalised).

  `frames`: a numpy [T,S,S,3] array or any sequence-like with `__len__` and `__getitem__(i)`
  returning frame i as [S,S,3] (e.g. a lazy loader); frames stay on the host and only the
  current chunk's are materialised (as float32) and copied to the device. Tracks frames
  prompt_frame..T-1 (or prompt_frame..0 with reverse): the prompt frame by one jitted call,
  then one jitted chunk step (encode `chunk` frames as a batch, scan over them carrying the
  donated MemoryBank) per chunk, called from a Python loop; the last chunk is padded on the
  host (padding frames leave the bank untouched). Each chunk's outputs (and video-res logits)
  are copied into preallocated numpy arrays at once, so device memory does not depend on T.
  `features` (a dict of [T,...] arrays from `encode_frames`) skips the encoder. `num_frames`
  (default T) is the video length the pointer normaliser uses. `progress(i)` is called on the
  host after each chunk, for each clip frame i of the chunk (i = 1..T'-1, also for padding
  frames i >= T').

  Returns numpy dict, time axis in processing order (prompt frame first): frame_idx [T'] (the
  original index of each output frame), low_res_mask_logits [T',B,S/4,S/4],
  video_res_mask_logits [T',B,H,W] (omitted when video_res=False), object_score_logits [T',B],
  obj_ptr [T',B,C], maskmem_features_bf16 [T',B,h,w,Cm], maskmem_pos_enc [h,w,Cm],
  visible [T',B]; box: pred_box_xyxy(_norm) [T',B,4]; point: point_xy [T',B,2] (x, y; int32
  video pixels with point_readout="argmax", the reference's readout, float32 with
  "soft_argmax", the training readout; see point_readout.py).
  With return_bank, also the final MemoryBank under "bank".
  """
  check_readout(point_readout)
  s = int(model.config.image_size)
  h, w = int(video_hw[0]), int(video_hw[1])
  chunk = int(chunk)
  if chunk < 1:
    raise ValueError(f"chunk={chunk}: give a chunk size >= 1")
  if not isinstance(prompt, PromptInputs):
    prompt = prepare_prompt(task, prompt, (h, w), s, int(model.config.point_gaussian_radius),
                            float(model.config.point_gaussian_sigma))
  encoded = features is not None
  total = len(frames) if not encoded else int(features["vision"].shape[0])
  if total < 1:
    raise ValueError("need at least one frame")
  idx = clip_indices(total, prompt_frame, reverse)
  num_frames = total if num_frames is None else int(num_frames)
  if num_frames < len(idx):
    raise ValueError(f"num_frames={num_frames} is shorter than the {len(idx)} frames tracked")
  n_out = len(idx)
  chunk = max(1, min(chunk, n_out - 1))

  if encoded:
    def gather(ii, n):   # features of clip frames ii (original indices), on the device
      return {key: jnp.asarray(features[key][ii]) for key in FEATURE_KEYS}
  else:
    def gather(ii, n):   # only these frames are read and copied, as float32, padded to n
      if isinstance(frames, (np.ndarray, jax.Array)):
        x = np.asarray(frames[ii], np.float32)   # fancy indexing copies just this chunk
      else:   # any sequence-like (__len__, __getitem__ -> [S,S,3] frame), e.g. a lazy loader
        x = np.stack([np.asarray(frames[int(i)], np.float32) for i in ii])
      if len(ii) < n:   # host-side padding of the last chunk (repeats its last frame)
        x = np.concatenate([x, np.repeat(x[-1:], n - len(ii), axis=0)])
      return jnp.asarray(x)

  ikey = (model, task, cond_capacity, encoded)
  if ikey not in _INIT_CACHE:
    _INIT_CACHE[ikey] = (model, _init_jit(model, task, cond_capacity, encoded))
  skey = (model, task, num_frames, encoded)
  if skey not in _STEP_CACHE:
    _STEP_CACHE[skey] = (model, _step_jit(model, task, num_frames, encoded))
  init, step = _INIT_CACHE[ikey][1], _STEP_CACHE[skey][1]
  post = None
  if video_res or task == "point":
    pkey = (h, w, task, point_readout, s)
    if pkey not in _POST_CACHE:
      _POST_CACHE[pkey] = _post_jit((h, w), task, point_readout, s)
    post = _POST_CACHE[pkey]
  pr = {k_: None if v is None else jnp.asarray(v) for k_, v in vars(prompt).items()}

  host: dict = {}   # output name -> preallocated numpy [T',...], filled chunk by chunk

  def put(start, m, ys):
    """Copy the first m frames of a block of device outputs to host rows start..start+m."""
    blk = dict(ys)
    if post is not None:   # video-res logits of this block (fixed block shape)
      blk.update({("post", k_): v for k_, v in post(ys["low_res"]).items()
                  if video_res or k_ != "video"})
    for k_, v in blk.items():
      v = np.asarray(v)
      if k_ not in host:
        host[k_] = np.empty((n_out,) + v.shape[1:], v.dtype)
      host[k_][start:start + m] = v[:m]

  y0, bank, pos = init(params, gather(idx[:1], 1), pr)
  # the prompt frame's block: pad to `chunk` so the post-processing shape is shared
  y0p = y0 if chunk == 1 or post is None else jax.tree.map(
      lambda a: jnp.concatenate([a, jnp.zeros((chunk - 1,) + a.shape[1:], a.dtype)]), y0)
  put(0, 1, y0p)
  for i in range(1, n_out, chunk):
    ii = idx[i:i + chunk]
    m = len(ii)
    if encoded and m < chunk:   # features: pad by repeating the last index (no reads)
      ii = np.concatenate([ii, np.repeat(ii[-1:], chunk - m)])
    ts = np.arange(i, i + chunk, dtype=np.int32)
    bank, ys = step(params, bank, gather(ii, chunk), jnp.asarray(ts), jnp.asarray(ts < n_out))
    put(i, m, ys)
    del ys
    if progress is not None:
      for t in range(i, i + chunk):
        progress(int(t))

  res = {"frame_idx": idx, "low_res_mask_logits": host["low_res"],
         "object_score_logits": host["score"], "obj_ptr": host["obj_ptr"],
         "maskmem_features_bf16": host["maskmem"], "maskmem_pos_enc": np.asarray(pos),
         "visible": host["score"] > 0}
  if task == "box":
    res["pred_box_xyxy_norm"] = host["box"]
    res["pred_box_xyxy"] = host["box"] * np.asarray([w, h, w, h], np.float32)
  if video_res:
    res["video_res_mask_logits"] = host[("post", "video")]
  if task == "point":
    res["point_xy"] = host[("post", "point_xy")]
  if return_bank:
    res["bank"] = bank
  return res
