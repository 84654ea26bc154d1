"""Training recipes (full training ConfigDicts), by name:

  reference  the released SAM 2++ three-task recipe (b+ at 1024; peft: LoRA r 128, alpha 32,
             dropout 0.1 on the frozen image encoder and per task on the frozen memory
             attentions; lr 5e-5 / vision 5e-6, corrections, 1:4:5 tasks); needs init_from
  pretrain_tiny  the tiny preset from scratch on synthetic video: the recipe of the shipped
             checkpoint (checkpoints/tiny); every difference from `reference` is listed below
  finetune_tiny  a short fine-tune of the shipped checkpoint (what `make demo` runs)
  demo       the tiny preset from scratch on synthetic video, sized for <= 10 CPU-minutes
             (`make demo-scratch`)
  test       a very small variant for unit tests (point task only, 3 frames, batch 2)

Intentional differences of the from-scratch recipes (pretrain_tiny, demo) from `reference`, each
because nothing is pretrained here (SAM 2++ itself fine-tunes SAM 2.1):
  * every weight trains (no peft freezing, no LoRA on the image encoder, no LoRA dropout); the
    per-task memory attentions and memory encoders share one base (lora.share_memory_base)
    with per-task LoRA on the attention, so all three tasks' steps train the memory pathway;
  * a RoPE locality prior initialises the memory cross-attention (train/init_priors.py);
  * lr 1e-3 / vision 1e-4 (no layer decay), grad clip 1.0, short warm-up, cosine to 0.1 over
    the run;
  * memory-attention dropout and drop-path 0 (the tiny model underfits; see README);
  * focal weight 5 instead of 20 on masks and points (20 drives tracked frames to empty masks);
  * a mask-only first half (data.task_stages), then tasks drawn 0.5 : 0.2 : 0.3 rather than
    1 : 4 : 5 (box and point steps have 10-100x the mask task's gradient norm and, shared
    weights being clipped together, they wiped out mask tracking when mixed in early);
  * a curriculum of synthetic difficulties (data.sources `steps` windows: static, easy, normal);
  * 64-px input, 96-px synthetic frames, 8-frame clips, 4 clips per step.

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
from sam2pp_jax.train.peft import REFERENCE_PEFT

RECIPES = ("reference", "pretrain_tiny", "finetune_tiny", "demo", "test")


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
  # trainer.peft of the released config (train/peft.py): LoRA per task on the memory attentions
  # (these keys) and one LoRA on the image encoder (lora.image_encoder), bases frozen by the
  # optimizer (optim.lora_wrapped_modules); dropout on the LoRA branch input while training
  ma, ie = REFERENCE_PEFT["memory_attention"], REFERENCE_PEFT["image_encoder"]
  c.lora = ml_collections.ConfigDict(
    dict(
      enabled=True,
      rank=ma["rank"],
      alpha=ma["alpha"],
      dropout=ma["dropout"],
      targets=tuple(ma["targets"]),
      image_encoder=dict(
        enabled=True,
        rank=ie["rank"],
        alpha=ie["alpha"],
        dropout=ie["dropout"],
        targets=tuple(ie["targets"]),  # peft names: `blocks.N.attn.qkv` matches "attn.qkv"
        freeze_base=True,  # stop the frozen encoder's gradient (needs it in lora_wrapped_modules)
      ),
    )
  )
  c.seed = 0
  c.total_steps = 100_000
  c.max_train_minutes = 0.0  # 0 = no time budget
  c.log_every = 10
  c.ckpt_every = 500
  c.keep_checkpoints = 2
  c.init_from = ""  # a converted SAM 2 / SAM 2++ checkpoint directory
  # FSDP rules (train/sharding.py): leaves under fsdp_min_size elements stay replicated;
  # fsdp_rules = ((regex over the param path, "replicate" | "fsdp" | (None, "fsdp") ...), ...),
  # first full match wins. The defaults shard every leaf with a divisible dimension.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=0, fsdp_rules=()))
  c.compute_dtype = "float32"
  return c


def get_train_config(name: str = "demo") -> ml_collections.ConfigDict:
  """A fresh training ConfigDict of the recipe `name` (one of RECIPES)."""
  if name == "reference":
    c = _base("b+")
    c.prompts.remat = "frame"  # activation memory: recompute per-frame steps and the encoder
    c.compute_dtype = "bfloat16"  # the released config trains under bf16 autocast (optim.amp)
    c.optim.total_steps = c.total_steps
    return c
  if name == "demo":
    c = pretrain_tiny(steps=1200)  # ~10 minutes on a 2-core CPU: the schedule anneals in time
    c.max_train_minutes = 10.0
    c.log_every = 10
    return c
  if name == "test":
    c = _base("tiny")
    c.lora.enabled = False  # from scratch: train every weight
    c.lora.image_encoder.enabled = False
    c.optim.base_lr = 1e-3
    c.optim.vision_lr = 1e-3
    c.optim.layer_decay = 1.0
    c.optim.warmup_steps = 2
    c.optim.grad_clip_norm = 1.0
    c.prompts.num_correction_pt_per_frame = 0  # compile budget on CPU; see README
    c.prompts.prob_to_use_pt_input = 0.0
    c.data.task_probs = (0.0, 0.0, 1.0)  # one task: one compile per test run
    c.data.num_frames = 3
    c.data.global_batch = 2
    c.data.max_objects = 2
    c.data.sources[0]["video_hw"] = (64, 64)
    c.total_steps = 20
    c.max_train_minutes = 0.0
    c.log_every = 1
    c.ckpt_every = 1
    c.optim.total_steps = c.total_steps
    return c
  if name == "pretrain_tiny":
    return pretrain_tiny()
  if name == "finetune_tiny":
    return finetune_tiny()
  raise ValueError(f"unknown training config {name!r}; choose one of {', '.join(RECIPES)}")


def _synthetic(difficulty: str, steps=None, weight: float = 1.0) -> dict:
  src = dict(
    kind="synthetic",
    seed_offset=0,
    weight=weight,
    difficulty=difficulty,
    video_hw=(96, 96),
    video_frames=None,
    num_objects=(1, 3),
    num_points=8,
  )
  if steps is not None:
    src["steps"] = tuple(steps)
  return src


PRETRAIN_STEPS = 8_000
SHIPPED_CHECKPOINT = "checkpoints/tiny"


def pretrain_tiny(steps: int = PRETRAIN_STEPS) -> ml_collections.ConfigDict:
  """The shipped checkpoint's recipe (see the module docstring for its differences); `steps`
  scales the run and its curriculum."""
  c = _base("tiny")
  c.model.memory_attention.dropout = 0.0
  c.model.trunk.drop_path_rate = 0.0
  c.lora.update(enabled=True, rank=4, alpha=8.0, dropout=0.0, share_memory_base=True)
  c.lora.image_encoder.enabled = False  # the encoder trains whole
  c.init_rope_prior = 6.0
  c.optim.base_lr = 1e-3
  # the reference's 10:1 base:vision ratio: with one lr the memory pathway never separates the
  # objects of a clip (identical outputs per object); a slower encoder lets it (README)
  c.optim.vision_lr = 1e-4
  c.optim.layer_decay = 1.0
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 1.0
  c.optim.lora_wrapped_modules = ()  # from scratch: the bases train too
  for t in ("mask", "point"):
    c.loss[t].weight_dict.loss_mask = 5.0
  c.data.task_probs = (0.5, 0.2, 0.3)  # after the mask-only half (1:4:5 starves the mask task)
  c.prompts.num_correction_pt_per_frame = 0  # compile budget on CPU
  c.prompts.prob_to_use_pt_input = 0.5  # the prompt path is supervised
  c.data.num_frames = 8
  c.data.global_batch = 4
  n = int(steps)
  # a long motionless, mask-only stage: telling the objects of a clip apart through the memory
  # is learned in a sudden transition after ~1,000 such steps (README); then easy clips, still
  # mask only (box and point steps from the start of motion wiped it out: track_iou 0.7 -> 0.0);
  # then mostly normal clips, all three tasks, mask-heavy
  c.data.task_stages = (((0, n // 2), (1.0, 0.0, 0.0)),)
  c.data.sources = [
    _synthetic("static", (0, n // 4)),
    _synthetic("easy", (n // 4, n // 2)),
    _synthetic("easy", (n // 2, n), weight=0.3),
    _synthetic("normal", (n // 2, n), weight=0.7),
  ]
  c.total_steps = n
  c.optim.total_steps = n
  c.max_train_minutes = 0.0
  c.log_every = 20
  c.ckpt_every = 500
  return c


def finetune_tiny() -> ml_collections.ConfigDict:
  """`make demo`'s short fine-tune of the shipped checkpoint on normal synthetic video (mask
  task): every weight (per-task copies as exported), lr 1e-4 / vision 1e-5 with a short
  warm-up and a cosine over a fixed number of steps that fits the demo's budget on a 2-core
  CPU."""
  c = pretrain_tiny()
  c.init_from = SHIPPED_CHECKPOINT
  c.init_rope_prior = 0.0
  c.lora.update(enabled=False, share_memory_base=False)
  c.optim.base_lr = 1e-4
  c.optim.vision_lr = 1e-5
  c.optim.warmup_steps = 10
  c.data.sources = [_synthetic("normal")]
  c.data.task_stages = ()
  # one task: each task's train step compiles for ~1.5 minutes on 2 CPU cores, and the demo
  # (compilation, fine-tune, tracking, scoring) must fit in 8 minutes
  c.data.task_probs = (1.0, 0.0, 0.0)
  c.total_steps = 200
  c.optim.total_steps = 200
  c.max_train_minutes = 3.0
  c.log_every = 10
  c.ckpt_every = 100
  return c
