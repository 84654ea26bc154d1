"""The released SAM 2++ recipe's peft (LoRA) settings, and trainable-parameter counts of ours
and of the reference's rules, to check that the ported recipe trains what the reference trains.

Reference (MCG-NJU/SAM2-Plus): `trainer.peft` of
sam2_plus/configs/sam2.1_training/sam2.1_hiera_b+_predmasks_decoupled_MAME_mixtraining_threetasks
.yaml (lines 533-551), applied by training/trainer_plus.py `Trainer_plus._peft_model` (lines
1085-1111) after the SAM 2.1 weights are loaded and before the optimizer is built: one
`get_peft_model(module, LoraConfig)` on `image_encoder` (separate_image_encoder: false) and one on
each of `memory_attention_{mask,point,box}` (separate_memory_attention: true). get_peft_model
freezes every non-LoRA parameter of a wrapped module; everything outside them still trains.

How the reference's trainable count is computed (`reference_trainable_count`), from a state
dict's {key: shape} (the released manifest, or `key_map.reference_keys` of our params):
  all entries
  - buffers: `positional_encoding_gaussian_matrix` and every entry of a FrozenBatchNorm2d (the
    box head's, recognised by their running stats) - register_buffer, never parameters;
  - every entry under a wrapped module (frozen by peft);
  + per targeted Linear / Conv2d weight [out, in, *k] under a wrapped module, LoRA A [r, in, *k]
    and B [out, r(, 1, 1)]: r * (in * prod(k) + out) parameters.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import numpy as np

from sam2pp_jax.convert import key_map
from sam2pp_jax.model import lora
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.train import params as train_params_lib
from sam2pp_jax.train.optimizer import path_str

# trainer.peft of the released config: {wrapped module: LoraConfig}; bias "none" in both.
REFERENCE_PEFT = {
  "image_encoder": dict(rank=128, alpha=32.0, dropout=0.1, targets=lora.IMAGE_ENCODER_TARGETS),
  "memory_attention": dict(
    rank=128, alpha=32.0, dropout=0.1, targets=lora.MEMORY_ATTENTION_TARGETS
  ),
}
_BUFFER_KEYS = (r"positional_encoding_gaussian_matrix$",)
_FROZEN_BN_STATS = ("running_mean", "running_var")


def wrapped_modules(peft: Mapping = REFERENCE_PEFT, separate_memory_attention: bool = True):
  """{state-dict prefix of a wrapped module: its LoRA settings} (memory attention per task)."""
  out = {}
  for name, cfg in peft.items():
    if name == "memory_attention" and separate_memory_attention:
      out.update({f"memory_attention_{t}": cfg for t in TASKS})
    else:
      out[name] = cfg
  return out


def reference_buffers(keys: Sequence[str]) -> set:
  """State-dict entries that are buffers, not parameters, in the reference model."""
  out = {k for k in keys if any(re.search(p, k) for p in _BUFFER_KEYS)}
  bn = {k.rsplit(".", 1)[0] for k in keys if k.rsplit(".", 1)[-1] in _FROZEN_BN_STATS}
  return out | {k for k in keys if k.rsplit(".", 1)[0] in bn}


def lora_size(weight_shape: Sequence[int], rank: int) -> int:
  """Parameters of peft's A and B for a torch Linear [out, in] or Conv2d [out, in, kh, kw]."""
  if len(weight_shape) not in (2, 4):
    raise ValueError(f"peft LoRA needs a Linear or Conv2d weight, got shape {weight_shape}")
  out, fan_in = int(weight_shape[0]), int(np.prod(weight_shape[1:]))
  return int(rank) * (fan_in + out)


def reference_trainable_count(
  shapes: Mapping[str, Sequence[int]],
  peft: Mapping = REFERENCE_PEFT,
  separate_memory_attention: bool = True,
) -> dict:
  """Parameter counts of a reference model after its peft wrapping (see the module docstring).

  Returns total (parameters, buffers excluded, LoRA included), trainable, lora, frozen (by
  peft), buffers (entries), and lora_by_module / lora_modules (targeted layers per wrapped
  module).
  """
  size = {k: int(np.prod(s)) for k, s in shapes.items()}
  buffers = reference_buffers(list(shapes))
  wrapped = wrapped_modules(peft, separate_memory_attention)
  frozen, lora_by_module, lora_modules = 0, {}, {}
  for prefix, cfg in wrapped.items():
    under = [k for k in shapes if k.startswith(prefix + ".") and k not in buffers]
    if not under:
      raise ValueError(f"peft wraps {prefix!r}, which has no parameters in the state dict")
    frozen += sum(size[k] for k in under)
    n, hits = 0, 0
    for k in under:
      mod, leaf = k[len(prefix) + 1 :].rsplit(".", 1)
      if leaf == "weight" and any(lora.matches(mod, t) for t in cfg["targets"]):
        n += lora_size(shapes[k], cfg["rank"])
        hits += 1
    if not hits:  # peft raises when no target module is found
      raise ValueError(f"no peft target of {prefix!r} found: {cfg['targets']}")
    lora_by_module[prefix], lora_modules[prefix] = n, hits
  params = sum(v for k, v in size.items() if k not in buffers)
  lora_total = sum(lora_by_module.values())
  return dict(
    total=params + lora_total,
    trainable=params - frozen + lora_total,
    lora=lora_total,
    frozen=frozen,
    buffers=len(buffers),
    lora_by_module=lora_by_module,
    lora_modules=lora_modules,
  )


def trainable_count(params, info) -> dict:
  """Counts of a training param tree under an OptimizerInfo: total, trainable, lora (factors
  by the optimizer's lora regex), frozen, and trainable per top-level key."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  total = trainable = n_lora = 0
  by_key: dict = {}
  for path, leaf in leaves:
    p = path_str(path)
    n = int(np.prod(np.shape(leaf)))
    total += n
    if not info.frozen[p]:
      trainable += n
      top = p.split("/", 1)[0]
      by_key[top] = by_key.get(top, 0) + n
      if re.search(r"(^|/)lora_[ab]$", p):
        n_lora += n
  return dict(
    total=total, trainable=trainable, lora=n_lora, frozen=total - trainable, by_key=by_key
  )


def check_frozen_encoder(train_params, info, lora_cfg) -> None:
  """With image-encoder LoRA and freeze_base, the optimizer must freeze the encoder base: its
  gradient is stopped, so a trainable base would only shrink under weight decay."""
  enc = train_params_lib.encoder_lora_cfg(lora_cfg)
  if enc is None or not enc.get("freeze_base", True):
    return
  live = [p for p, f in info.frozen.items() if p.startswith("model/image_encoder/") and not f]
  if live:
    raise ValueError(
      f"lora.image_encoder.freeze_base stops the encoder's gradient, but the optimizer trains "
      f"{len(live)} of its params (e.g. {live[0]}): keep 'image_encoder' in "
      "optim.lora_wrapped_modules or set lora.image_encoder.freeze_base=False"
    )


def _m(n: int) -> str:
  return f"{n / 1e6:.3f}M"


def trainable_report(config, train_params, info) -> str:
  """Start-up line(s): our trainable set, and the reference's peft rules on this same model."""
  check_frozen_encoder(train_params, info, config.lora)
  ours = trainable_count(train_params, info)
  parts = ", ".join(f"{k} {_m(v)}" for k, v in sorted(ours["by_key"].items()))
  lines = [
    f"params: {ours['trainable']:,} trainable of {ours['total']:,} in the train state "
    f"({_m(ours['trainable'])}; LoRA {_m(ours['lora'])}; by key: {parts})"
  ]
  try:
    shapes = jax.eval_shape(
      lambda p: train_params_lib.export_inference_params(p, config.lora), train_params
    )
    ref = reference_trainable_count(key_map.reference_keys(shapes))
  except (ValueError, KeyError) as e:  # a model the released peft rules do not fit
    lines.append(f"params: the reference's peft rules do not apply to this model ({e})")
    return "\n".join(lines)
  diff = ours["trainable"] - ref["trainable"]
  lines.append(
    f"params: the reference's peft rules (released three-task yaml) on this model train "
    f"{ref['trainable']:,} (LoRA {_m(ref['lora'])}); ours "
    + ("match" if diff == 0 else f"differ by {diff:+,}")
  )
  return "\n".join(lines)
