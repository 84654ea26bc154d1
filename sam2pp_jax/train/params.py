"""Training parameter layout: task-adaptive memory and the image encoder's LoRA.

Training params are {"model": <inference-layout params>, "lora": {task: {memory_attention_<task>:
factors}}, "lora_encoder": {"image_encoder": factors}} ("lora" only with lora_cfg.enabled,
"lora_encoder" only with lora_cfg.image_encoder.enabled, the reference's peft on its frozen
image encoder). `params_for_task` joins a task's factors to their bases right before the apply
(so gradients reach the factors): merged when the LoRA's dropout is 0, else attached for the
unmerged forward with peft's dropout (model/lora.py). `export_inference_params` merges every
factor once into the inference / checkpoint layout.

With `lora_cfg.share_memory_base` (from-scratch recipes), the three per-task memory attentions
and memory encoders are replaced by one shared copy of each under "shared" (every task's steps
train it; per-task LoRA on the shared attention keeps the tasks apart, as SAM 2++'s design of a
common memory attention with task adapters); the export writes a copy per task.
"""

from __future__ import annotations

from typing import Mapping

import jax

from sam2pp_jax.model import lora
from sam2pp_jax.model.presets import TASKS

SHARED = ("memory_attention", "memory_encoder")  # per-task modules that can share one base
ENCODER_LORA = "lora_encoder"  # train-params key of the image encoder's factors
IMAGE_ENCODER = "image_encoder"


def mem_attn_key(task: str) -> str:
  return f"memory_attention_{task}"


def _shares(lora_cfg) -> bool:
  return lora_cfg is not None and bool(lora_cfg.get("share_memory_base", False))


def encoder_lora_cfg(lora_cfg):
  """lora_cfg.image_encoder when it is enabled, else None (configs without it: off)."""
  if lora_cfg is None:
    return None
  enc = lora_cfg.get("image_encoder", None)
  return enc if enc is not None and enc.get("enabled", False) else None


def init_train_params(model_params: Mapping, key, lora_cfg) -> dict:
  """Wrap inference-layout params; with lora_cfg.enabled add fresh per-task memory-attention
  factors, with lora_cfg.image_encoder.enabled fresh image-encoder factors (B = 0 for all, so
  the model starts equal to the base); with share_memory_base the mask task's memory attention
  and encoder become the shared base of all tasks."""
  out = {"model": dict(model_params)}
  if _shares(lora_cfg):
    out["shared"] = {m: model_params[f"{m}_mask"] for m in SHARED}
    for m in SHARED:
      for t in TASKS:
        out["model"].pop(f"{m}_{t}")
  if lora_cfg is not None and lora_cfg.get("enabled", False):
    keys = jax.random.split(key, len(TASKS))
    out["lora"] = {
      t: {
        mem_attn_key(t): lora.init_lora(
          k,
          out["shared"]["memory_attention"] if _shares(lora_cfg) else model_params[mem_attn_key(t)],
          int(lora_cfg.rank),
          tuple(lora_cfg.targets),
        )
      }
      for t, k in zip(TASKS, keys)
    }
  enc = encoder_lora_cfg(lora_cfg)
  if enc is not None:  # its own key: the memory-attention factors stay as without it
    out[ENCODER_LORA] = {
      IMAGE_ENCODER: lora.init_lora(
        jax.random.fold_in(key, 0xE1C),
        model_params[IMAGE_ENCODER],
        int(enc.rank),
        tuple(enc.targets),
      )
    }
  return out


def _join(base, factors, cfg, merged: bool):
  """A module's base with its factors: merged, or attached when cfg.dropout > 0 (training)."""
  alpha, rank, rate = float(cfg.alpha), int(cfg.rank), float(cfg.get("dropout", 0.0))
  if merged or rate == 0.0:
    return lora.merge(base, factors, alpha, rank)
  return lora.attach(base, factors, alpha, rank, rate)


def _task_params(train_params: Mapping, task: str, lora_cfg, merged: bool) -> dict:
  p = dict(train_params["model"])
  if "shared" in train_params:
    for m in SHARED:
      p[f"{m}_{task}"] = train_params["shared"][m]
  if "lora" in train_params:
    k = mem_attn_key(task)
    p[k] = _join(p[k], train_params["lora"][task][k], lora_cfg, merged)
  return p


def _image_encoder(train_params: Mapping, lora_cfg, merged: bool):
  """The image encoder's params joined with its factors (its base gradient stopped while
  training with freeze_base, as peft freezes it)."""
  base = train_params["model"][IMAGE_ENCODER]
  if ENCODER_LORA not in train_params:
    return base
  enc = encoder_lora_cfg(lora_cfg)
  if enc is None:
    raise ValueError("train params hold image-encoder LoRA but lora.image_encoder is off")
  if enc.get("freeze_base", True) and not merged:
    base = jax.lax.stop_gradient(base)  # no gradient matmuls for the frozen weights
  return _join(base, train_params[ENCODER_LORA][IMAGE_ENCODER], enc, merged)


def params_for_task(train_params: Mapping, task: str, lora_cfg) -> dict:
  """Inference-layout params for one task's training forward: its memory attention and the
  image encoder joined with their LoRA (attached, for dropout, when their dropout > 0)."""
  p = _task_params(train_params, task, lora_cfg, merged=False)
  if ENCODER_LORA in train_params:
    p[IMAGE_ENCODER] = _image_encoder(train_params, lora_cfg, merged=False)
  return p


def export_inference_params(train_params: Mapping, lora_cfg) -> dict:
  """Every factor merged (per-task memory attentions, the image encoder) and shared bases
  copied per task, in one inference-layout tree (what checkpoints hold)."""
  p = dict(train_params["model"])
  for t in TASKS:
    pt = _task_params(train_params, t, lora_cfg, merged=True)
    for m in SHARED:
      p[f"{m}_{t}"] = pt[f"{m}_{t}"]
  if ENCODER_LORA in train_params:
    p[IMAGE_ENCODER] = _image_encoder(train_params, lora_cfg, merged=True)
  return p
