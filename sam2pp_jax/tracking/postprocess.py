"""Low-res logits -> video-resolution outputs (masks, the point readout), shared by the scan and
the predictor; one jitted function per (video size, task, readout)."""

from __future__ import annotations

from functools import partial

import jax

from sam2pp_jax.model.resize import resize_bilinear
from sam2pp_jax.tracking.point_readout import read_points


@partial(jax.jit, static_argnames=("video_hw", "task", "readout", "image_size"))
def video_outputs(
  low_res, *, video_hw: tuple[int, int], task: str, readout: str, image_size: int
) -> dict:
  """[..., S/4, S/4] logits -> {"masks": [..., H, W]} (bilinear, align_corners=False), plus
  "points_xy" [..., 2] on the point task (point_readout.py)."""
  h, w = video_hw
  lead = low_res.shape[:-2]
  flat = low_res.reshape((-1,) + low_res.shape[-2:])
  masks = resize_bilinear(flat[..., None], (h, w))[..., 0].reshape(lead + (h, w))
  out = {"masks": masks}
  if task == "point":
    out["points_xy"] = read_points(readout, low_res, masks, image_size, (h, w))
  return out
