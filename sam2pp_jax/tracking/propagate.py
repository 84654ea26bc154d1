"""Whole-video tracking: prompt on one frame, then a `lax.scan` over frames carrying a MemoryBank.

Objects are a batch axis; the task is static. Follows the reference predictor's per-frame
recipe (see shared/parity/README.md "What the reference does per task").

Device memory is flat in the video length: frames stay on the host and are fed `chunk` at a
time to one jitted chunk step (a scan over its frames carrying the donated memory bank; each
frame encoded inside the scan, batch 1, on CPU, or the chunk encoded as one batch first on
accelerators: `encode_mode`), called from a Python loop; each chunk's outputs (low-res logits,
scores, pointers, bf16 memories, and the video-resolution logits computed per chunk) are copied
into host numpy arrays at once, so nothing on the device is stacked over time. The padding
frames of the last chunk are skipped (lax.cond), and the bank has one conditioning slot (one
prompted frame).

Prompting on frame k and tracking forward is tracking frames[k:] from their frame 0; tracking
in reverse from k is tracking frames[k::-1] forward. Both keep the whole video's length as
`num_frames` (the pointer normaliser min(T, max_obj_ptrs) - 1). This is exact for the
reference: its `_prepare_memory_conditioned_features` uses memories at frame_idx -+ d and signs
the pointer offsets with tpos_sign_mul = -1 in reverse, so (frame_idx - t) * -1 = k - f, the
forward distance in the reversed clip; memory_temporal_stride_for_eval is 1.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.tracking import prompts
from sam2pp_jax.tracking.memory import MemoryPolicy, get_policy
from sam2pp_jax.tracking.memory.policy import RELEASED
from sam2pp_jax.tracking.point_readout import check_readout
from sam2pp_jax.tracking.postprocess import video_outputs
from sam2pp_jax.tracking.step import (
  FEATURE_KEYS,
  FramePrompt,
  StepOut,
  count_clicks,
  frame_features,
  new_bank,
  track_step,
  use_multimask,
)


def prepare_prompt(
  task: str, prompt: dict, video_hw, image_size: int, radius: int = 5, sigma: float = 2.0
) -> FramePrompt:
  """Video-resolution prompts -> model inputs, with the reference's exact arithmetic.

  mask: {"mask": [B,H,W] bool}; box: {"box_xyxy": [B,4]}; point: {"points_xy": [B,P,2],
  "point_labels": [B,P]} (the heatmap is the max of the positive points' Gaussians).
  """
  s = image_size
  if task == "mask":
    m = np.stack([prompts.mask_to_model_res(x, s) for x in np.asarray(prompt["mask"])])
    return FramePrompt(mask=m.astype(np.float32))
  if task == "box":
    pts, labels = zip(
      *(
        prompts.box_to_points(b, video_hw, s)
        for b in np.asarray(prompt["box_xyxy"], np.float32).reshape(-1, 4)
      )
    )
    return FramePrompt(point_coords=np.stack(pts), point_labels=np.stack(labels).astype(np.int32))
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
    return FramePrompt(point_coords=coords, point_labels=labels, mask=heat)
  raise ValueError(f"unknown task {task!r}")


@partial(jax.jit, static_argnames=("model", "task"))
def _encode(model, params, images, *, task: str) -> dict:
  return frame_features(model, params, images, task=task)


def encode_frames(model, params, frames, task: str, chunk: int = 4) -> dict:
  """Image features of all frames [T,...] (batch 1 per frame), in jitted chunks of `chunk`.

  Holds every frame's features on the device (grows with T); `track_video` does not use it
  but accepts its result as `features=` (e.g. features cached for interactive use).
  """
  t = frames.shape[0]
  outs = []
  for i in range(0, t, chunk):
    x = jnp.asarray(frames[i : i + chunk])
    n = x.shape[0]
    if n < chunk:  # pad the last chunk so one compiled shape serves the whole video
      x = jnp.concatenate([x, jnp.zeros((chunk - n,) + x.shape[1:], x.dtype)])
    e = _encode(model, params, x, task=task)
    outs.append({k: e[k][:n] for k in FEATURE_KEYS})
  return {k: jnp.concatenate([o[k] for o in outs]) for k in outs[0]}


def _rows(out, task: str, memory: MemoryPolicy = RELEASED) -> dict:
  """The per-frame outputs the host keeps (everything else is dead code inside the jit), with
  what the memory policy records per frame (SAM2Long: pathway parents and scores)."""
  y = {"low_res": out.low_res, "score": out.score, "obj_ptr": out.obj_ptr, "maskmem": out.maskmem}
  if task == "box":
    y["box"] = out.box
  y.update(memory.record(out))
  return y


@partial(
  jax.jit,
  static_argnames=("model", "task", "route", "multimask", "cond_capacity", "encoded", "memory"),
)
def _first_frame(
  model, params, first, prompt, *, task, route, multimask, cond_capacity, encoded, memory
):
  """The prompt frame as clip frame 0 -> (bank, rows [1,...], memory pos [HW,Cm]).

  `first` is the frame [1,S,S,3] (encoded=False) or its features dict of [1,...] arrays.
  """
  feats = first if encoded else frame_features(model, params, first, task=task)
  bank = new_bank(model, prompt.batch, cond_capacity, memory)
  bank, out = track_step(
    model,
    params,
    feats,
    bank,
    0,
    prompt,
    task=task,
    route=route,
    multimask=multimask,
    write="cond",
    cond_slot=0,
    binarize_memory=memory.binarize_prompt_memory,
    memory=memory,
  )
  return bank, jax.tree.map(lambda a: a[None], _rows(out, task, memory)), out.maskmem_pos


@partial(jax.jit, static_argnames=("model", "task", "cond_capacity", "memory"))
def _given_first_frame(model, given, *, task, cond_capacity, memory):
  """_first_frame from already decoded prompt-frame outputs (see track_video)."""
  k = memory.rows_per_object
  rep = lambda a: None if a is None else jnp.repeat(jnp.asarray(a), k, axis=0)
  n = given["score"].shape[0] * k
  hm = int(model.config.image_size) // 16
  mem = rep(given["maskmem"]).astype(jnp.float32)
  pos = jnp.asarray(given["maskmem_pos"], jnp.float32)
  bank = new_bank(model, n, cond_capacity, memory).write_cond(
    0,
    0,
    mem.reshape(n, hm, hm, -1),
    pos.reshape(1, hm, hm, -1),
    rep(given["obj_ptr"]).astype(jnp.float32),
  )
  out = StepOut(
    low_res=rep(given["low_res"]),
    high_res=None,
    score=rep(given["score"]),
    obj_ptr=rep(given["obj_ptr"]),
    box=rep(given.get("box")),
    multi_high_res=None,
    ious=None,
    multi_boxes=None,
    candidate_valid=None,
    pix=None,
    maskmem=mem,
    policy_state=bank.policy_state,
  )
  return bank, jax.tree.map(lambda a: a[None], _rows(out, task, memory)), pos


ENCODES = ("auto", "batch", "frame")


def encode_mode(encode: str = "auto", backend: str | None = None) -> str:
  """How `_chunk_step` encodes its frames: "batch" (the chunk as one batch, before the scan)
  or "frame" (batch 1, inside the scan, so padding frames skip it). "auto" picks per backend:
  on CPU batch 1 is faster per frame (bench/README.md, issue 18); on GPU / TPU the batch is
  kept (not measured there: batching is what accelerators are usually faster at)."""
  if encode not in ENCODES:
    raise ValueError(f"encode={encode!r}: use one of {ENCODES}")
  if encode != "auto":
    return encode
  return "frame" if (backend or jax.default_backend()) == "cpu" else "batch"


def _skip_padding(step):
  """step(bank, x) -> (bank, rows) that runs only where x["ok"] is True: a padding frame (the
  host pads the last chunk) leaves the bank as it is and gives zero rows, at no cost
  (lax.cond; inside a scan its predicate is a scalar, so only one branch runs)."""

  def run(bank, x):
    rows = jax.eval_shape(step, bank, x)[1]
    skip = lambda bank, x: (bank, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), rows))
    return jax.lax.cond(x["ok"], step, skip, bank, x)

  return run


@partial(
  jax.jit,
  static_argnames=("model", "task", "num_frames", "encoded", "memory", "encode", "present_only"),
  donate_argnames=("bank",),
)
def _chunk_step(
  model,
  params,
  bank,
  xs,
  ts,
  valid,
  *,
  task,
  num_frames,
  encoded,
  memory,
  encode="batch",
  present_only=True,
):
  """One compiled function for every chunk: (bank, rows stacked over the K frames).

  xs: K frames [K,S,S,3] (encoded=False: encoded as one batch before the scan with encode
  "batch", one by one inside it with "frame") or a features dict of [K,...] arrays; ts [K]
  clip-relative frame indices; valid [K] (False for the host-side padding of the last chunk:
  those frames are skipped, leaving the bank untouched and zero rows). The bank is donated.
  """
  if not encoded and encode == "batch":
    xs, encoded = frame_features(model, params, xs, task=task), True
  step = partial(
    track_step,
    model,
    params,
    task=task,
    route="memory",
    multimask=True,
    num_frames=num_frames,
    memory=memory,
    write="ring",
    present_only=present_only,
  )

  def body(bank, x):
    if encoded:
      f = {k: v[None] for k, v in x["f"].items()}
    else:  # batch 1: this frame's features only
      f = frame_features(model, params, x["f"][None], task=task)
    bank, out = step(f, bank, x["t"])
    return bank, _rows(out, task, memory)

  return jax.lax.scan(_skip_padding(body), bank, {"t": ts, "ok": valid, "f": xs})


def _prompt_multimask(prompt: FramePrompt, task: str, config) -> bool:
  """Multimask for the prompt frame's decoder route (box task: a box alone is 0 clicks)."""
  if prompt.point_labels is None:
    return True
  return bool(np.all(use_multimask(count_clicks(np.asarray(prompt.point_labels), task), config)))


def clip_indices(total: int, prompt_frame: int = 0, reverse: bool = False) -> np.ndarray:
  """Original frame indices processed, in processing order (prompt frame first)."""
  k = prompts.check_frame_index(prompt_frame, total)
  return np.arange(k, -1, -1) if reverse else np.arange(k, total)


def track_video(
  model,
  params,
  frames,
  video_hw,
  task: str,
  prompt: dict | FramePrompt,
  *,
  chunk: int = 4,
  cond_capacity: int = 1,
  return_bank: bool = False,
  prompt_frame: int = 0,
  reverse: bool = False,
  num_frames: int | None = None,
  features: dict | None = None,
  video_res: bool = True,
  point_readout: str = "argmax",
  progress=None,
  memory: MemoryPolicy | str = "sam2",
  prompt_outputs: dict | None = None,
  encode: str = "auto",
  present_only: bool = True,
) -> dict:
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
  frames i >= T'). `memory`: the memory policy (a MemoryPolicy or a name with its defaults;
  tracking/memory), "sam2" being the released tracker. `prompt_outputs` (then `prompt` may be
  None): the prompt frame's outputs, already decoded (the interactive predictor's consolidated
  prompts): low_res [B,S/4,S/4], score [B], obj_ptr [B,C], maskmem [B,HW,Cm], box [B,4] or
  None, maskmem_pos [HW,Cm]; they are the first frame's outputs and its memory.
  `cond_capacity`: conditioning slots of the bank; one frame is prompted here, so 1 (more
  only adds empty slots). `encode`: "batch" (each chunk's frames as one batch), "frame" (batch
  1 inside the scan) or "auto" (per backend, `encode_mode`); padding frames of the last chunk
  are skipped either way (with "batch" they are still encoded). `present_only`: memory
  attention over only the present memories (track_step); False: over every slot, masked.
  The outputs do not depend on chunk, encode or cond_capacity.

  Returns numpy dict, time axis in processing order (prompt frame first): frame_idx [T'] (the
  original index of each output frame), low_res_mask_logits [T',B,S/4,S/4],
  video_res_mask_logits [T',B,H,W] (omitted when video_res=False), object_score_logits [T',B],
  obj_ptr [T',B,C], maskmem_features_bf16 [T',B,h,w,Cm], maskmem_pos_enc [h,w,Cm],
  visible [T',B]; box: pred_box_xyxy(_norm) [T',B,4]; point: point_xy [T',B,2] (x, y; int32
  video pixels with point_readout="argmax", the reference's readout, float32 with
  "soft_argmax", the training readout; see point_readout.py).
  With return_bank, also the final MemoryBank under "bank" (SAM2Long: B*K rows, object-major).
  A policy with several rows per object (SAM2Long) returns the final best pathway's lineage and
  its own per-frame extras (e.g. pathway_scores / pathway_parents [T',B,K]).
  """
  check_readout(point_readout)
  memory = get_policy(memory) if isinstance(memory, str) else memory
  memory.check_model(model.config)
  s = int(model.config.image_size)
  h, w = int(video_hw[0]), int(video_hw[1])
  chunk = int(chunk)
  if chunk < 1:
    raise ValueError(f"chunk={chunk}: give a chunk size >= 1")
  if prompt_outputs is None and not isinstance(prompt, FramePrompt):
    prompt = prepare_prompt(
      task,
      prompt,
      (h, w),
      s,
      int(model.config.point_gaussian_radius),
      float(model.config.point_gaussian_sigma),
    )
  rows = memory.rows_per_object
  if (
    rows > 1 and prompt_outputs is None
  ):  # several bank rows per object (SAM2Long's pathways), object-major
    prompt = jax.tree.map(lambda a: np.repeat(np.asarray(a), rows, axis=0), prompt)
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
  mode = encode_mode(encode)

  if encoded:

    def gather(ii, n):  # features of clip frames ii (original indices), on the device
      return {key: jnp.asarray(features[key][ii]) for key in FEATURE_KEYS}
  else:

    def gather(ii, n):  # only these frames are read and copied, as float32, padded to n
      if isinstance(frames, (np.ndarray, jax.Array)):
        x = np.asarray(frames[ii], np.float32)  # fancy indexing copies just this chunk
      else:  # any sequence-like (__len__, __getitem__ -> [S,S,3] frame), e.g. a lazy loader
        x = np.stack([np.asarray(frames[int(i)], np.float32) for i in ii])
      if len(ii) < n:  # host-side padding of the last chunk (repeats its last frame)
        x = np.concatenate([x, np.repeat(x[-1:], n - len(ii), axis=0)])
      return jnp.asarray(x)

  first_kw = dict(
    task=task,
    cond_capacity=int(cond_capacity),
    encoded=encoded,
    memory=memory,
    route="no_memory" if task == "box" else "prompt_as_output",
    multimask=prompt_outputs is not None or _prompt_multimask(prompt, task, model.config),
  )
  post = None
  if video_res or task == "point":
    post = partial(video_outputs, video_hw=(h, w), task=task, readout=point_readout, image_size=s)
  pr = jax.tree.map(jnp.asarray, prompt)

  host: dict = {}  # output name -> preallocated numpy [T',...], filled chunk by chunk

  def put(start, m, ys):
    """Copy the first m frames of a block of device outputs to host rows start..start+m."""
    blk = dict(ys)
    if post is not None:  # video-res logits of this block (fixed block shape)
      blk.update(
        {("post", k_): v for k_, v in post(ys["low_res"]).items() if video_res or k_ != "masks"}
      )
    for k_, v in blk.items():
      v = np.asarray(v)
      if k_ not in host:
        host[k_] = np.empty((n_out,) + v.shape[1:], v.dtype)
      host[k_][start : start + m] = v[:m]

  if prompt_outputs is None:
    bank, y0, pos = _first_frame(model, params, gather(idx[:1], 1), pr, **first_kw)
  else:
    bank, y0, pos = _given_first_frame(
      model, prompt_outputs, task=task, cond_capacity=int(cond_capacity), memory=memory
    )
  # the prompt frame's block: pad to `chunk` so the post-processing shape is shared
  y0p = (
    y0
    if chunk == 1 or post is None
    else jax.tree.map(
      lambda a: jnp.concatenate([a, jnp.zeros((chunk - 1,) + a.shape[1:], a.dtype)]), y0
    )
  )
  put(0, 1, y0p)
  for i in range(1, n_out, chunk):
    ii = idx[i : i + chunk]
    m = len(ii)
    if encoded and m < chunk:  # features: pad by repeating the last index (no reads)
      ii = np.concatenate([ii, np.repeat(ii[-1:], chunk - m)])
    ts = np.arange(i, i + chunk, dtype=np.int32)
    bank, ys = _chunk_step(
      model,
      params,
      bank,
      gather(ii, chunk),
      jnp.asarray(ts),
      jnp.asarray(ts < n_out),
      task=task,
      num_frames=num_frames,
      encoded=encoded,
      memory=memory,
      encode=mode,
      present_only=bool(present_only),
    )
    put(i, m, ys)
    del ys
    if progress is not None:
      for t in range(i, i + chunk):
        progress(int(t))

  host, extras = memory.resolve(host)  # rows per object -> one (SAM2Long's backtrack)
  hm = s // 16
  res = {
    "frame_idx": idx,
    "low_res_mask_logits": host["low_res"],
    "object_score_logits": host["score"],
    "obj_ptr": host["obj_ptr"],
    "maskmem_features_bf16": host["maskmem"].reshape(host["maskmem"].shape[:2] + (hm, hm, -1)),
    "maskmem_pos_enc": np.asarray(pos).reshape(hm, hm, -1),
    "visible": host["score"] > 0,
  }
  if task == "box":
    res["pred_box_xyxy_norm"] = host["box"]
    res["pred_box_xyxy"] = host["box"] * np.asarray([w, h, w, h], np.float32)
  if video_res:
    res["video_res_mask_logits"] = host[("post", "masks")]
  if task == "point":
    res["point_xy"] = host[("post", "points_xy")]
  if return_bank:
    res["bank"] = bank
  res.update(extras)
  return res
