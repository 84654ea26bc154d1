"""Training parameter layout and task-adaptive memory.

Training params are {"model": <inference-layout params>, "lora": {task: {memory_attention_<task>:
factors}}} (the "lora" entry only when LoRA is on). Each task's memory attention is its base
weights plus that task's LoRA factors, merged right before the apply so gradients reach the
factors; `export_inference_params` merges them once into the inference / checkpoint layout.
"""

from __future__ import annotations

from typing import Mapping

import jax

from sam2pp_jax.model import lora
from sam2pp_jax.model.presets import TASKS


def mem_attn_key(task: str) -> str:
  return f"memory_attention_{task}"


def init_train_params(model_params: Mapping, key, lora_cfg) -> dict:
  """Wrap inference-layout params; with lora_cfg.enabled add fresh per-task factors
  (B = 0, so the merged model starts equal to the base)."""
  out = {"model": dict(model_params)}
  if lora_cfg is not None and lora_cfg.get("enabled", False):
    keys = jax.random.split(key, len(TASKS))
    out["lora"] = {
      t: {
        mem_attn_key(t): lora.init_lora(
          k, model_params[mem_attn_key(t)], int(lora_cfg.rank), tuple(lora_cfg.targets)
        )
      }
      for t, k in zip(TASKS, keys)
    }
  return out


def params_for_task(train_params: Mapping, task: str, lora_cfg) -> dict:
  """Inference-layout params for one task (its memory attention merged with its LoRA)."""
  p = dict(train_params["model"])
  if "lora" in train_params:
    k = mem_attn_key(task)
    p[k] = lora.merge(
      p[k], train_params["lora"][task][k], float(lora_cfg.alpha), int(lora_cfg.rank)
    )
  return p


def export_inference_params(train_params: Mapping, lora_cfg) -> dict:
  """Merged per-task memory attentions in one inference-layout tree (what checkpoints hold)."""
  p = dict(train_params["model"])
  if "lora" in train_params:
    for t in TASKS:
      p[mem_attn_key(t)] = params_for_task(train_params, t, lora_cfg)[mem_attn_key(t)]
  return p
