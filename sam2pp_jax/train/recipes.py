"""Training recipes (full training ConfigDicts), by name:

  reference  the released SAM 2++ three-task recipe (b+ at 1024, LoRA on memory attention,
             lr 5e-5 / vision 5e-6, corrections, 1:4:5 tasks); needs init_from
  demo       the tiny preset from scratch on synthetic video, sized for <= 10 CPU-minutes
  test       a very small variant for unit tests (point task only, 3 frames, batch 2)

`configs/train.py:<name>` (train.py's --config) and `python -m sam2pp_jax.demo` both read them
from here.
"""

from __future__ import annotations

import ml_collections

from sam2pp_jax.model.presets import get_model_config
from sam2pp_jax.train.data import default_data_config
from sam2pp_jax.train.forward import default_prompt_config
from sam2pp_jax.train.losses import default_loss_config
from sam2pp_jax.train.optimizer import default_optimizer_config

RECIPES = ("reference", "demo", "test")


def _base(preset: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = get_model_config(preset)
  c.data = default_data_config()
  c.data.image_size = c.model.image_size
  c.optim = default_optimizer_config()
  c.loss = default_loss_config()
  for t in ("box", "point"):
    c.loss[t].size = c.model.image_size
  c.prompts = default_prompt_config()
  c.lora = ml_collections.ConfigDict(
    dict(
      enabled=True,
      rank=128,
      alpha=32.0,
      targets=("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2"),
    )
  )
  c.seed = 0
  c.total_steps = 100_000
  c.max_train_minutes = 0.0  # 0 = no time budget
  c.log_every = 10
  c.ckpt_every = 500
  c.keep_checkpoints = 2
  c.init_from = ""  # a converted SAM 2 / SAM 2++ checkpoint directory
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.compute_dtype = "float32"
  return c


def get_train_config(name: str = "demo") -> ml_collections.ConfigDict:
  """A fresh training ConfigDict of the recipe `name` (one of RECIPES)."""
  if name == "reference":
    c = _base("b+")
    c.prompts.remat = True  # activation memory: recompute per-frame steps and the encoder
    c.optim.total_steps = c.total_steps
    return c
  if name in ("demo", "test"):
    c = _base("tiny")
    c.lora.enabled = False  # from scratch: train every weight
    c.optim.base_lr = 1e-3
    c.optim.vision_lr = 1e-3
    c.optim.layer_decay = 1.0
    c.optim.warmup_steps = 50
    c.optim.grad_clip_norm = 1.0
    c.prompts.num_correction_pt_per_frame = 0  # compile budget on CPU; see README
    c.prompts.prob_to_use_pt_input = 0.0
    c.data.num_frames = 8  # the recipe's 8-frame clips
    c.data.global_batch = 4
    c.data.sources[0]["video_hw"] = (96, 96)
    c.total_steps = 3000
    c.max_train_minutes = 10.0
    c.log_every = 10
    c.ckpt_every = 500  # a save costs ~3 s of the 10-minute budget
    if name == "test":
      c.data.task_probs = (0.0, 0.0, 1.0)  # one task: one compile per test run
      c.data.num_frames = 3
      c.data.global_batch = 2
      c.data.max_objects = 2
      c.data.sources[0]["video_hw"] = (64, 64)
      c.optim.warmup_steps = 2
      c.total_steps = 20
      c.max_train_minutes = 0.0
      c.log_every = 1
      c.ckpt_every = 1
    c.optim.total_steps = c.total_steps
    return c
  raise ValueError(f"unknown training config {name!r}; choose reference, demo or test")
