"""Training parameter layout and task-adaptive memory.

Training params are {"model": <inference-layout params>, "lora": {task: {memory_attention_<task>:
factors}}} (the "lora" entry only when LoRA is on). Each task's memory attention is its base
weights plus that task's LoRA factors, merged right before the apply so gradients reach the
factors; `export_inference_params` merges them once into the inference / checkpoint layout.

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


def mem_attn_key(task: str) -> str:
  return f"memory_attention_{task}"


def _shares(lora_cfg) -> bool:
  return lora_cfg is not None and bool(lora_cfg.get("share_memory_base", False))


def init_train_params(model_params: Mapping, key, lora_cfg) -> dict:
  """Wrap inference-layout params; with lora_cfg.enabled add fresh per-task factors
  (B = 0, so the merged model starts equal to the base); with share_memory_base the mask
  task's memory attention and encoder become the shared base of all tasks."""
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
  return out


def params_for_task(train_params: Mapping, task: str, lora_cfg) -> dict:
  """Inference-layout params for one task (its memory attention merged with its LoRA)."""
  p = dict(train_params["model"])
  if "shared" in train_params:
    for m in SHARED:
      p[f"{m}_{task}"] = train_params["shared"][m]
  if "lora" in train_params:
    k = mem_attn_key(task)
    p[k] = lora.merge(
      p[k], train_params["lora"][task][k], float(lora_cfg.alpha), int(lora_cfg.rank)
    )
  return p


def export_inference_params(train_params: Mapping, lora_cfg) -> dict:
  """Merged per-task memory attentions (and shared bases copied per task) in one
  inference-layout tree (what checkpoints hold)."""
  p = dict(train_params["model"])
  for t in TASKS:
    pt = params_for_task(train_params, t, lora_cfg)
    for m in SHARED:
      p[f"{m}_{t}"] = pt[f"{m}_{t}"]
  return p
