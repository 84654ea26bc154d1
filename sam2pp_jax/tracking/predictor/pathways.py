"""Propagation for memory policies with several bank rows per object (SAM2Long's pathways).

Their outputs are known only after the last frame (the best pathway's lineage), so
propagate_in_video runs the whole-video tracker (`track_video`) from the consolidated prompt
outputs and then yields its frames. What this cannot express is refused with a clear error:
prompts on more than one frame here, corrections on tracked frames by VideoPredictor before
anything is stored.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sam2pp_jax.tracking import prompts
from sam2pp_jax.tracking.propagate import track_video


def propagate_whole_video(pred, state, start_frame_idx, max_frame_num_to_track, reverse, with_info):
  """propagate_in_video for a policy with several rows per object (see the module docstring)."""
  pred._preflight(state)
  name = pred.memory.name
  conds = sorted({f for o in state.objects for f in o.out["cond"]})
  if len(conds) != 1 or any(len(o.out["cond"]) != 1 for o in state.objects):
    raise ValueError(
      f"memory={name!r} tracks every object from one prompted frame, but the prompts are on "
      f"frames {conds}; prompt all objects on one frame, or use memory='sam2' or 'samurai'"
    )
  f0 = conds[0]
  t_total = state.num_frames
  start = f0 if start_frame_idx is None else prompts.check_frame_index(start_frame_idx, t_total)
  if start != f0:
    raise ValueError(
      f"memory={name!r} starts at the prompted frame {f0}, not start_frame_idx={start_frame_idx}"
    )
  n = t_total if max_frame_num_to_track is None else int(max_frame_num_to_track)
  if n < 0:
    raise ValueError(f"max_frame_num_to_track={max_frame_num_to_track}: give a number >= 0")
  if reverse and f0 == 0:
    return
  first, last = (max(f0 - n, 0), f0) if reverse else (f0, min(f0 + n, t_total - 1))
  if last == first:  # nothing to track: the prompt frame only
    order = [f0]
  else:
    order = _track(pred, state, f0, first, last, reverse)
  for f in order:
    for o in state.objects:
      if f != f0:
        o.tracked[f] = reverse
    masks, info = pred._frame_result(state, [o.stored_output(f) for o in state.objects])
    state.frame_info[f] = info
    ids = list(state.obj_ids)
    yield (f, ids, masks, info) if with_info else (f, ids, masks)


def _track(pred, state, f0, first, last, reverse) -> list:
  """Run track_video on frames first..last from the objects' outputs on f0; store them."""
  outs = [o.out["cond"][f0] for o in state.objects]
  stack = lambda key: np.stack([np.asarray(o[key], np.float32) for o in outs])
  given = {
    "low_res": stack("low_res"),
    "score": stack("score"),
    "obj_ptr": stack("obj_ptr"),
    "maskmem": stack("maskmem"),
    "box": stack("box") if pred.task == "box" else None,
    "maskmem_pos": np.asarray(state.maskmem_pos, np.float32),
  }
  res = track_video(
    pred.model,
    pred.params,
    state.images[first : last + 1],
    state.video_hw,
    pred.task,
    None,
    chunk=pred.propagate_chunk,
    prompt_frame=f0 - first,
    reverse=bool(reverse),
    num_frames=state.num_frames,
    video_res=False,
    memory=pred.memory,
    prompt_outputs=given,
  )
  frames = [int(i) + first for i in res["frame_idx"]]
  h = pred.image_size // 16
  for i, f in enumerate(frames[1:], start=1):
    for k, o in enumerate(state.objects):
      o.out["non_cond"][f] = {
        "low_res": res["low_res_mask_logits"][i, k],
        "score": res["object_score_logits"][i, k],
        "obj_ptr": res["obj_ptr"][i, k],
        "box": res["pred_box_xyxy_norm"][i, k] if pred.task == "box" else None,
        "maskmem": jnp.asarray(res["maskmem_features_bf16"][i, k].reshape(h * h, -1), jnp.bfloat16),
        "iou": np.float32(np.nan),
        "motion": np.float32(np.nan),
        "policy_state": None,
      }
  return frames
