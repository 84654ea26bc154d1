"""Benchmark-only driver of the PyTorch reference predictor (MCG-NJU/SAM2-Plus), CPU float32.

Not part of the package: used by bench/propagate.py when $SAM2PLUS_REPO points at a checkout
of the reference and torch is importable.  The reference needs `hydra-core`, `omegaconf`,
`iopath`, `einops` and `natsort` (benchmark-only tooling, not project dependencies).  It imports
`torchvision` only for a helper that this path never calls (`box_area`, imported by
`training/dataset_plus/box/utils.py`), so a stub module is placed in `sys.modules` when
torchvision is absent, exactly as the parity-fixture generator did.

Timing covers `init_state` (frame loading from a PNG folder + frame-0 encoding), the prompt call
(`add_new_mask` / `add_new_points_or_box` / `add_new_points_and_generate_gaussian_mask`) and a
full `propagate_in_video`, each timed separately.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference wraps loading and propagation in tqdm

from sam2pp_jax.parity.reference_run import missing_requirements, stub_torchvision  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_b+_predmasks_decoupled_MAME.yaml"

# Structure of the parity_small preset as hydra overrides (= config.hydra_overrides of
# shared/parity/dev_small_seed0_*.json, minus the _target_ override the builder adds itself).
PARITY_SMALL_OVERRIDES = [
  "++model.image_size=256",
  "++model.image_encoder.trunk.embed_dim=96",
  "++model.image_encoder.trunk.num_heads=1",
  "++model.image_encoder.trunk.stages=[1,2,7,2]",
  "++model.image_encoder.trunk.global_att_blocks=[5,7,9]",
  "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[7,7]",
  "++model.image_encoder.neck.backbone_channel_list=[768,384,192,96]",
  "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
  "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
]
COMMON_OVERRIDES = ["++model.non_overlap_masks=false"]


def available() -> tuple[bool, str]:
  """(usable, reason): $SAM2PLUS_REPO set to a checkout and torch importable."""
  repo = os.environ.get("SAM2PLUS_REPO")
  if not repo:
    return False, "SAM2PLUS_REPO not set"
  if not os.path.isdir(os.path.join(repo, "sam2_plus")):
    return False, f"SAM2PLUS_REPO={repo} has no sam2_plus/ package"
  if not os.path.isfile(os.path.join(repo, "sam2_plus", CONFIG)):
    return False, f"SAM2PLUS_REPO={repo} lacks sam2_plus/{CONFIG}"
  try:
    import torch  # noqa: F401
  except ImportError:
    return False, "torch is not installed: the reference part is skipped (pip install '.[torch]')"
  missing = [r for r in missing_requirements() if not r.startswith("torch")]
  if missing:
    return False, f"reference dependencies missing: {', '.join(missing)} (benchmark-only)"
  return True, ""


def build_predictor(preset: str, task: str, state_dict=None, threads: int = 2):
  """The reference video predictor for `preset` ("parity_small" | "b+"), CPU, eval mode.

  `state_dict` ({key: numpy array}) is loaded strictly when given (same weights as ours);
  otherwise the reference's own random init is kept.
  """
  import torch

  torch.set_num_threads(threads)
  repo = os.path.abspath(os.environ["SAM2PLUS_REPO"])
  if repo not in sys.path:
    sys.path.insert(0, repo)
  stub_torchvision()  # the same stand-in `parity live` installs
  from sam2_plus.build_sam import build_sam2_video_predictor_plus

  if preset == "parity_small":
    extra = COMMON_OVERRIDES + PARITY_SMALL_OVERRIDES
  elif preset == "b+":
    extra = list(COMMON_OVERRIDES)
  else:
    raise ValueError(f"no reference structure for preset {preset!r} (parity_small, b+)")
  pred = build_sam2_video_predictor_plus(
    config_file=CONFIG,
    ckpt_path=None,
    device="cpu",
    mode="eval",
    hydra_overrides_extra=extra,
    apply_postprocessing=False,
    vos_optimized=False,
    task=task,
  )
  if state_dict is not None:
    sd = {k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}
    pred.load_state_dict(sd, strict=True)
  return pred


def state_dict_shapes(pred) -> dict:
  """{key: shape} of the reference model, in state_dict order."""
  return {k: tuple(v.shape) for k, v in pred.state_dict().items()}


def run_once(pred, frame_dir: str, frame_names: list[str], task: str, prompt: dict) -> dict:
  """One init_state + prompt + propagate_in_video; seconds per phase and per-frame outputs.

  prompt: mask -> {"mask": [H,W] bool}; box -> {"box_xyxy": [4]}; point -> {"points_xy": [P,2],
  "point_labels": [P], "radius", "sigma"}.  Object 1 (id) on frame 0.
  """
  import numpy as np
  import torch

  out = {}
  with torch.inference_mode():
    t0 = time.perf_counter()
    state = pred.init_state(frame_dir, frame_names=list(frame_names))
    t1 = time.perf_counter()
    if task == "mask":
      pred.add_new_mask(state, frame_idx=0, obj_id=1, mask=np.asarray(prompt["mask"], bool))
    elif task == "box":
      pred.add_new_points_or_box(
        state, frame_idx=0, obj_id=1, box=np.asarray(prompt["box_xyxy"], np.float32)
      )
    elif task == "point":
      pred.add_new_points_and_generate_gaussian_mask(
        state,
        frame_idx=0,
        obj_id=1,
        points=np.asarray(prompt["points_xy"], np.float32),
        labels=np.asarray(prompt["point_labels"], np.int32),
        radius=int(prompt["radius"]),
        sigma=float(prompt["sigma"]),
      )
    else:
      raise ValueError(task)
    t2 = time.perf_counter()
    logits = {}
    for item in pred.propagate_in_video(state):
      frame_idx, masks = item[0], item[2]  # (frame_idx, obj_ids, video_res_masks, ...)
      logits[int(frame_idx)] = masks[0, 0].float().numpy().copy()
    t3 = time.perf_counter()
  out["init_state_s"], out["prompt_s"], out["propagate_s"] = t1 - t0, t2 - t1, t3 - t2
  out["total_s"] = t3 - t0
  out["video_res_logits"] = np.stack([logits[i] for i in sorted(logits)])
  return out
