"""`make demo`: what the project can do today, end to end on the built-in defaults.

Today (core model): builds the tiny model, runs a prompted frame and a memory-conditioned
frame for each task on a synthetic clip, then runs the block-by-block PyTorch parity check on
the dev fixtures when ../shared/parity is present. Training, full-video tracking and scoring
join this demo as the tracker, eval and train issues land.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def synthetic_clip(seed: int, frames: int, size: int):
  """A bright ellipse drifting over a noisy textured background: uint8 video + bool masks."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  bg = (rng.random((size, size, 3)) * 80 + 40).astype(np.float32)
  cx, cy = rng.uniform(0.3, 0.5, 2) * size
  vx, vy = rng.uniform(0.5, 1.5, 2)
  video, masks = [], []
  for t in range(frames):
    m = ((xx - cx - vx * t) / (0.18 * size)) ** 2 + ((yy - cy - vy * t) / (0.12 * size)) ** 2 <= 1
    img = np.roll(bg, t, axis=1).copy()
    img[m] = (230, 200, 60)
    video.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    masks.append(m)
  return np.stack(video), np.stack(masks)


def _tiny_model_demo(seed: int = 0) -> None:
  from sam2pp_jax.model.sam2pp import build_model, init_params
  model = build_model("tiny")
  s = model.image_size
  params = init_params(model, jax.random.key(seed))
  video, masks = synthetic_clip(seed, 2, s)
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  x = jnp.asarray((video / 255.0 - mean) / std, jnp.float32)
  ys, xs = np.nonzero(masks[0])
  for task in ("mask", "box", "point"):
    ap = lambda *a, **k: model.apply({"params": params}, *a, **k)
    f = ap(x, task=task, method="encode_image")
    v0 = f["vision"][:1]
    if task == "box":
      pts = jnp.array([[[xs.min(), ys.min()], [xs.max(), ys.max()]]], jnp.float32)
      o = ap(ap(v0, method="no_memory_features"), f["s0"][:1], f["s1"][:1], pts,
             jnp.array([[2, 3]], jnp.int32), task=task, multimask_output=True, method="sam_heads")
    else:
      from sam2pp_jax.tracking.prompts import gaussian_point_mask
      px, py = float(xs.mean()), float(ys.mean())
      m0 = masks[0].astype(np.float32) if task == "mask" else gaussian_point_mask(px, py, (s, s))
      o = ap(v0, f["s0"][:1], f["s1"][:1], jnp.asarray(m0)[None], jnp.array([[[px, py]]]),
             jnp.ones((1, 1), jnp.int32), task=task, method="prompt_as_output")
    mem, mpos = ap(v0, o["high_res_masks"], o["object_score_logits"], task=task,
                   method="encode_memory")
    cm = model.config.mem_dim
    ptr = o["obj_ptr"].reshape(1, -1, cm)
    memory = jnp.concatenate([mem.reshape(1, -1, cm), ptr], axis=1)
    tpos = ap(jnp.array([1.0]), 1.0, method="obj_ptr_pos_encoding")
    mpos = mpos.reshape(1, -1, cm) + ap(model.config.num_maskmem - 1, method="memory_time_encoding")
    pos = jnp.concatenate([mpos, jnp.broadcast_to(tpos[None], ptr.shape)], axis=1)
    cond = ap(f["vision"][1:], f["vision_pos"][1:], memory, pos, task=task,
              num_obj_ptr_tokens=ptr.shape[1], method="condition_on_memory")
    o1 = ap(cond, f["s0"][1:], f["s1"][1:], task=task, multimask_output=True, method="sam_heads")
    extra = f" box={np.round(np.asarray(o1['boxes'][0]), 3).tolist()}" if task == "box" else ""
    print(f"  {task:5s}: frame0 score={float(o['object_score_logits'][0, 0]):+.2f} "
          f"frame1 score={float(o1['object_score_logits'][0, 0]):+.2f} "
          f"ious={np.round(np.asarray(o1['ious'][0]), 3).tolist()}{extra}")


def main() -> int:
  jax.config.update("jax_default_matmul_precision", "highest")
  t0 = time.time()
  print("[1/2] tiny SAM 2++ (random weights) on a synthetic clip, all three tasks")
  _tiny_model_demo()
  from sam2pp_jax.parity.fixture import parity_dir
  d = parity_dir()
  rc = 0
  if d is None:
    print("[2/2] parity fixtures not found (../shared/parity or $SAM2PP_PARITY_DIR): skipped")
  else:
    fixtures = sorted(str(p) for p in d.glob("dev_*.npz"))
    print(f"[2/2] block-by-block PyTorch parity on {len(fixtures)} dev fixtures")
    from sam2pp_jax.parity.__main__ import main as parity_main
    rc = parity_main(["--components", *fixtures])
  print(f"demo finished in {time.time() - t0:.0f}s "
        "(training, full-video tracking and scoring arrive with the tracker/eval/train issues)")
  return rc


if __name__ == "__main__":
  sys.exit(main())
