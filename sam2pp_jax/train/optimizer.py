"""AdamW for SAM 2++ training, following the released three-task training recipe.

Every rule is a regex searched in a param's "/"-joined path, so one config serves the plain
model tree, a LoRA tree, or {"params": base, "lora": factors}. Per leaf the optimizer knows:
  - frozen: zero update and no Adam state (buffers, FrozenBN, peft-frozen bases, user rules);
  - peak lr: the group's base lr (image encoder vs rest) x Hiera layer decay x user multiplier;
  - weight decay: 0.1 times a multiplier (0 for biases and torch.nn.LayerNorm params).
The update is AdamW (decoupled decay scaled by the lr, as torch.optim.AdamW) on grads clipped
to a global norm over the trainable leaves, under one normalised warm-up + cosine schedule,
and a step with a non-finite grad is skipped.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import ml_collections
import optax
from ml_collections import config_dict

# Leaves the reference keeps as buffers (never handed to the optimizer), whatever the config.
BUFFER_PATTERNS = (r"(^|/)pe_layer/positional_encoding_gaussian_matrix$",)
# A module holding one of these leaves is a FrozenBatchNorm: all its leaves are buffers.
FROZEN_BN_STATS = ("running_mean", "running_var")

_TRAIN, _FROZEN = "train", "frozen"


def default_optimizer_config() -> ml_collections.ConfigDict:
  """The optim section of sam2.1_hiera_b+_predmasks_decoupled_MAME_mixtraining_threetasks.yaml.

  Keys quote the yaml path (under trainer.optim unless said otherwise) they reproduce.
  """
  c = ml_collections.ConfigDict()
  # Learning rates: options.lr, two CosineParamSchedulers.
  c.base_lr = 5.0e-5  # scratch.base_lr (the default lr group)
  c.vision_lr = 5.0e-6  # scratch.vision_lr (the group with param_names 'image_encoder.*')
  c.vision_regex = r"(^|/)image_encoder/"  # 'image_encoder.*'
  c.end_lr_factor = 0.1  # end_value: ${divide:<start>,10}
  # The yaml has no warm-up (cosine from the first step); kept as an option.
  c.warmup_steps = 0
  # Reference: progress `where` = step / (max_epochs x iters_per_epoch); the trainer sets it.
  c.total_steps = config_dict.placeholder(int)
  # optimizer: torch.optim.AdamW with its defaults (the yaml sets only _target_).
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1.0e-8
  c.weight_decay = 0.1  # options.weight_decay, ConstantParamScheduler value 0.1
  # options.weight_decay's 0.0 group: param_names '*bias*' and module_cls_names
  # ['torch.nn.LayerNorm']. (regex, multiplier) pairs, first match wins. LayerNorm2d (memory
  # encoder fuser/mask_downsampler, output_upscaling, mask_downscaling) is not
  # torch.nn.LayerNorm, so its scale keeps the decay, as do embeddings and pos_embed.
  c.wd_mults = (
    (r"bias", 0.0),  # '*bias*'
    (r"(^|/)norm(\d+|_final_attn)/scale$", 0.0),  # Hiera, memory-attention, two-way norms
    (r"(^|/)memory_attention[^/]*/norm/scale$", 0.0),  # memory attention's final norm
  )
  # param_group_modifiers: layer_decay_param_modifier.
  c.layer_decay = 0.9  # layer_decay_value
  c.layer_decay_min = config_dict.placeholder(float)  # layer_decay_min (unset)
  c.layer_decay_overrides = ((r"pos_embed", 1.0),)  # overrides: pattern '*pos_embed*' value 1.0
  # peft wraps the image encoder, so its params are named image_encoder.base_model.model.trunk.*
  # and the modifier's startswith('image_encoder.trunk') never fires: LoRA factors get 1.0.
  c.layer_decay_on_lora = False
  c.grad_clip_norm = 0.1  # gradient_clip: GradientClipper max_norm 0.1, norm_type 2
  # amp's GradScaler skips every step with a non-finite grad and never gives up.
  c.max_consecutive_nonfinite = 2**31 - 1
  # peft: LoRA on image_encoder and memory_attention (separate_memory_attention: true -> three
  # copies); get_peft_model freezes every non-LoRA param of a wrapped module.
  c.lora_regex = r"(^|/)lora_[ab]$"
  c.lora_wrapped_modules = (
    "image_encoder",
    "memory_attention_mask",
    "memory_attention_box",
    "memory_attention_point",
  )
  # Regex rules of this port (big_vision style); empty means unused.
  c.frozen = ()  # matching params never change
  c.trainable_only = ()  # if set, every param matching none of these is frozen
  c.lr_mults = ()  # (regex, multiplier) pairs on top of layer decay; first match wins
  return c


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
  """What make_optimizer decided per param path: for logging and tests."""

  lr_mult: dict  # path -> layer decay x user multiplier (relative to base_lr[path])
  base_lr: dict  # path -> peak lr of its group (vision_lr or base_lr)
  weight_decay: dict  # path -> decoupled weight decay coefficient
  frozen: dict  # path -> True if the param never changes
  schedule: Callable  # step -> factor in [end_lr_factor, 1] shared by every group
  num_trunk_blocks: int

  def peak_lr(self, path: str) -> float:
    """lr of a param at the end of warm-up (0 when frozen)."""
    return 0.0 if self.frozen[path] else self.base_lr[path] * self.lr_mult[path]

  def lr(self, path: str, step) -> float:
    """lr of a param at an optimizer step."""
    return self.peak_lr(path) * float(self.schedule(step))


def path_str(key_path) -> str:
  """Names of a jax key path joined with "/" (dict keys, attributes, sequence indices)."""
  parts = []
  for k in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def tree_paths(tree) -> list:
  """All leaf paths of a pytree, in flatten order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _search_any(patterns: Iterable[str], path: str) -> bool:
  return any(re.search(p, path) for p in patterns)


def _first_mult(rules: Sequence, path: str, default: float = 1.0) -> float:
  """Multiplier of the first (regex, value) rule matching the path."""
  for pattern, value in rules:
    if re.search(pattern, path):
      return float(value)
  return default


def _check_rules_match(name: str, patterns: Iterable[str], paths: Sequence[str]):
  """A user regex matching nothing is a typo (the reference asserts the same for its globs)."""
  for p in patterns:
    if not any(re.search(p, q) for q in paths):
      raise ValueError(f"optimizer config {name}: regex {p!r} matches no param")


# ---------------------------------------------------------------- layer decay


def _trunk_rest(path: str) -> Optional[str]:
  """The part of a path below image_encoder/trunk/, or None outside the Hiera trunk."""
  m = re.search(r"(^|/)image_encoder/trunk/(.*)$", path)
  return m.group(2) if m else None


def count_trunk_blocks(paths: Iterable[str]) -> int:
  """Number of Hiera blocks (highest blocks_<i> + 1) seen under the trunk."""
  ids = []
  for p in paths:
    m = re.search(r"(^|/)blocks_(\d+)(/|$)", _trunk_rest(p) or "")
    if m:
      ids.append(int(m.group(2)))
  return max(ids) + 1 if ids else 0


def trunk_layer_id(rest: str, num_blocks: int) -> int:
  """Hiera's get_layer_id (BEiT style): embeddings 0, block i -> i + 1, rest num_blocks + 1."""
  if "rel_pos" in rest:
    return num_blocks + 1
  if "pos_embed" in rest or "patch_embed" in rest:
    return 0
  m = re.search(r"(^|/)blocks_(\d+)(/|$)", rest)
  return int(m.group(2)) + 1 if m else num_blocks + 1


def layer_decay_mult(
  path: str, num_blocks: int, decay: float, min_value=None, overrides: Sequence = ()
) -> float:
  """lr factor decay ** (num_blocks + 1 - layer_id) inside the trunk, 1 outside it.

  The reference counts num_blocks + 1 layers, so the deepest block gets decay ** 1 and
  params past the blocks (or outside the trunk) decay ** 0.
  """
  rest = _trunk_rest(path)
  if rest is None:
    return 1.0
  for pattern, value in overrides:  # reference: first matching override replaces the scale
    if re.search(pattern, path):
      return float(value)
  scale = decay ** (num_blocks + 1 - trunk_layer_id(rest, num_blocks))
  return max(scale, min_value) if min_value is not None else scale


# ---------------------------------------------------------------- frozen set


def _frozen_bn_paths(paths: Sequence[str]) -> set:
  """Every leaf of a module that holds running stats (FrozenBatchNorm2d: buffers only)."""
  modules = {
    p.rsplit("/", 1)[0] for p in paths if "/" in p and p.rsplit("/", 1)[1] in FROZEN_BN_STATS
  }
  return {p for p in paths if "/" in p and p.rsplit("/", 1)[0] in modules}


def _peft_frozen_paths(paths: Sequence[str], lora_regex: str, modules: Sequence[str]) -> set:
  """Non-LoRA leaves of each wrapped module that has LoRA factors in the tree."""

  def owner(path):
    parts = path.split("/")
    return next((m for m in modules if m in parts), None)

  is_lora = {p: bool(re.search(lora_regex, p)) for p in paths}
  wrapped = {owner(p) for p in paths if is_lora[p]} - {None}
  return {p for p in paths if not is_lora[p] and owner(p) in wrapped}


def frozen_paths(config, paths: Sequence[str]) -> set:
  """Union of buffers, FrozenBN leaves, peft-frozen bases, `frozen` and not-`trainable_only`."""
  out = {p for p in paths if _search_any(BUFFER_PATTERNS, p)}
  out |= _frozen_bn_paths(paths)
  out |= _peft_frozen_paths(paths, config.lora_regex, tuple(config.lora_wrapped_modules))
  out |= {p for p in paths if _search_any(config.frozen, p)}
  if config.trainable_only:
    out |= {p for p in paths if not _search_any(config.trainable_only, p)}
  return out


# ---------------------------------------------------------------- per-leaf transforms


def _map_by_path(fn, tree, *rest):
  """tree_map with the leaf's path string as first argument (MaskedNode holes are skipped)."""
  return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest)


def scale_by_path(values: Mapping[str, float]) -> optax.GradientTransformation:
  """Multiply each leaf's update by a per-path constant (peak lr per param group)."""

  def update(updates, state, params=None):
    del params
    return _map_by_path(lambda p, u: u * values[p], updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def add_decayed_weights_by_path(values: Mapping[str, float]) -> optax.GradientTransformation:
  """Add wd * param to each update with a per-path wd (decoupled, before the lr scaling)."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay needs params: call update(grads, state, params)")
    return _map_by_path(
      lambda p, u, w: u + values[p] * w if values[p] else u, updates, params
    ), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_schedule(config) -> optax.Schedule:
  """Normalised lr factor: linear warm-up 0 -> 1, then cosine 1 -> end_lr_factor at total_steps."""
  if config.total_steps is None:
    raise ValueError("optimizer config total_steps is unset")
  if not 0 <= config.warmup_steps < config.total_steps:
    raise ValueError(
      f"need 0 <= warmup_steps ({config.warmup_steps}) < total_steps ({config.total_steps})"
    )
  cosine = optax.cosine_decay_schedule(
    1.0, config.total_steps - config.warmup_steps, alpha=config.end_lr_factor
  )
  if config.warmup_steps == 0:
    return cosine
  warmup = optax.linear_schedule(0.0, 1.0, config.warmup_steps)
  return optax.join_schedules([warmup, cosine], [config.warmup_steps])


# ---------------------------------------------------------------- builder


def make_info(config, params) -> OptimizerInfo:
  """Per-path lr multiplier, group lr, weight decay and frozen flag for a param tree."""
  paths = tree_paths(params)
  if len(set(paths)) != len(paths):
    raise ValueError("param paths are not unique once joined with '/'")
  _check_rules_match("frozen", config.frozen, paths)
  _check_rules_match("trainable_only", config.trainable_only, paths)
  _check_rules_match("lr_mults", [r for r, _ in config.lr_mults], paths)
  n = count_trunk_blocks(paths)
  frozen = frozen_paths(config, paths)

  def lr_mult(p):
    decay = 1.0
    if config.layer_decay_on_lora or not re.search(config.lora_regex, p):
      decay = layer_decay_mult(
        p, n, config.layer_decay, config.layer_decay_min, config.layer_decay_overrides
      )
    return decay * _first_mult(config.lr_mults, p)

  return OptimizerInfo(
    lr_mult={p: lr_mult(p) for p in paths},
    base_lr={
      p: config.vision_lr if re.search(config.vision_regex, p) else config.base_lr for p in paths
    },
    weight_decay={p: config.weight_decay * _first_mult(config.wd_mults, p) for p in paths},
    frozen={p: p in frozen for p in paths},
    schedule=make_schedule(config),
    num_trunk_blocks=n,
  )


def make_optimizer(config, params) -> tuple:
  """(optax transformation, OptimizerInfo) for a param tree (arrays or ShapeDtypeStructs).

  Frozen leaves go through set_to_zero and hold no state; the rest through
  clip -> Adam -> decoupled weight decay -> -schedule -> per-path peak lr, all inside
  apply_if_finite, so a non-finite trainable grad skips the step (and the schedule count).
  """
  info = make_info(config, params)
  peak = {p: info.base_lr[p] * info.lr_mult[p] for p in info.frozen}
  train = optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm else optax.identity(),
    optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
    add_decayed_weights_by_path(info.weight_decay),
    optax.scale_by_learning_rate(info.schedule),
    scale_by_path(peak),
  )
  train = optax.apply_if_finite(train, config.max_consecutive_nonfinite)

  def labels(tree: Any):
    return _map_by_path(lambda p, _: _FROZEN if info.frozen[p] else _TRAIN, tree)

  tx = optax.multi_transform({_TRAIN: train, _FROZEN: optax.set_to_zero()}, labels)
  return tx, info
