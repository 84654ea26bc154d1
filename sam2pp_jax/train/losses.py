"""SAM 2++ training losses: the reference's per-task multi-step, multi-mask objective in JAX.

Three tasks share one combination rule (SAM 2's MultiStepMultiMasksAndIous and the SAM 2++
box/point variants): per frame and prediction step, every object's M candidates are scored,
the candidate with the lowest weighted per-candidate loss is supervised, the IoU head is
supervised on all candidates (supervise_all_iou) or on that one, everything but the
object-score loss is zeroed where the target object is absent, and all terms are summed over
objects, steps and frames. Per-candidate mask terms carry the reference's 1/num_objects.

Everything works on fixed shapes (frames T, steps S, objects N, candidates M, pixels H x W);
padding is described by boolean masks instead of Python control flow, so the loss jits.

Reference behaviours kept on purpose (they change numbers, so parity needs them):
  * box CIoU and box L1 are not divided by num_objects (the mask terms are);
  * the box task's `loss_l1` sums L1 over every candidate and ignores the absent-object gate
    (`box_l1_reference_quirk`, on by default; off supervises it like `loss_ciou`);
  * absent objects' box targets become [0, 0, 1, 1] (normalised) before CIoU/L1;
  * the box IoU target (box IoU from the CIoU computation) is not stop-gradiented, so the IoU
    loss also pulls on the predicted boxes; the mask IoU target is binarised (no gradient).
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from sam2pp_jax.model.corner_head import soft_argmax_xy
from sam2pp_jax.model.presets import TASKS

CORE_LOSS_KEY = "core_loss"

# Weight keys each task's reference loss asserts on (loss_class is optional, default 0).
REQUIRED_WEIGHTS = {
  "mask": ("loss_mask", "loss_dice", "loss_iou"),
  "box": ("loss_mask", "loss_dice", "loss_ciou", "loss_l1", "loss_iou"),
  "point": ("loss_mask", "loss_dice", "loss_l1", "loss_iou"),
}

# Constructor defaults of the reference loss classes (used when a config omits an option).
OPTION_DEFAULTS = {
  "focal_alpha": 0.25,
  "focal_gamma": 2.0,
  "supervise_all_iou": False,
  "iou_use_l1_loss": False,
  "pred_obj_scores": False,
  "focal_gamma_obj_score": 0.0,
  "focal_alpha_obj_score": -1.0,
  "size": 1024,  # box/point: pixel size that normalises targets
  "pred_mask": False,  # box: whether the box head's masks are supervised too
  "box_l1_reference_quirk": True,
}

# The point task binarises sigmoid probabilities and soft targets at this level for its IoU.
POINT_IOU_THRESHOLD = 0.2
_CIOU_EPS = 1e-7


def default_loss_config() -> ml_collections.ConfigDict:
  """The loss section of the released three-task training config
  (sam2.1_hiera_b+_predmasks_decoupled_MAME_mixtraining_threetasks.yaml), one entry per task."""
  common = dict(
    supervise_all_iou=True,
    iou_use_l1_loss=True,
    pred_obj_scores=True,
    focal_gamma_obj_score=0.0,
    focal_alpha_obj_score=-1.0,
    focal_alpha=0.25,
    focal_gamma=2.0,
  )
  return ml_collections.ConfigDict(
    {
      "mask": dict(
        weight_dict=dict(loss_mask=20.0, loss_dice=1.0, loss_iou=1.0, loss_class=1.0), **common
      ),
      "box": dict(
        weight_dict=dict(
          loss_mask=0.5, loss_dice=0.1, loss_ciou=1.0, loss_l1=1.0, loss_iou=1.0, loss_class=1.0
        ),
        size=1024,
        pred_mask=True,
        box_l1_reference_quirk=True,
        **common,
      ),
      "point": dict(
        weight_dict=dict(loss_mask=20.0, loss_dice=1.0, loss_iou=1.0, loss_class=1.0, loss_l1=20.0),
        size=1024,
        **common,
      ),
    }
  )


# ----------------------------------------------------------------------------- primitives


def _bce_with_logits(logits, targets):
  """Elementwise binary cross-entropy on logits, stable for large |logits| (torch's formula)."""
  return (1.0 - targets) * logits - jax.nn.log_sigmoid(logits)


def sigmoid_focal_elementwise(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
  """RetinaNet focal loss per element; alpha < 0 disables the class balance. alpha and gamma
  are Python numbers (config), so gamma == 0 skips the modulating factor and its 0**0 grad."""
  prob = jax.nn.sigmoid(logits)
  loss = _bce_with_logits(logits, targets)
  if gamma != 0:
    p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = loss * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
  return loss


def sigmoid_focal_loss(logits, targets, num_objects, alpha: float = 0.25, gamma: float = 2.0):
  """Per-mask focal loss [..., H, W] -> [...]: mean over pixels, then / num_objects."""
  loss = sigmoid_focal_elementwise(logits, targets, alpha, gamma)
  return jnp.mean(loss, axis=(-2, -1)) / num_objects


def object_score_loss(logits, targets, num_objects, alpha: float = -1.0, gamma: float = 0.0):
  """Object-presence loss per object [..., 1] -> [...]: focal (plain BCE with the config's
  alpha=-1, gamma=0) averaged over the last axis, / num_objects; the caller sums objects."""
  loss = sigmoid_focal_elementwise(logits, targets, alpha, gamma)
  return jnp.mean(loss, axis=-1) / num_objects


def dice_loss(logits, targets, num_objects):
  """Per-mask dice loss [..., H, W] -> [...] with the +1 smoothing, / num_objects."""
  p = jax.nn.sigmoid(logits)
  numerator = 2.0 * jnp.sum(p * targets, axis=(-2, -1))
  denominator = jnp.sum(p, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1))
  return (1.0 - (numerator + 1.0) / (denominator + 1.0)) / num_objects


def soft_dice_loss(logits, targets, num_objects):
  """Dice for soft labels (the point task's heatmaps): 2|p.t| is replaced by
  sum(p) + sum(t) - |p - t|_1, which equals it for binary targets. [..., H, W] -> [...]."""
  p = jax.nn.sigmoid(logits)
  denominator = jnp.sum(p, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1))
  numerator = denominator - jnp.sum(jnp.abs(p - targets), axis=(-2, -1))
  return (1.0 - (numerator + 1.0) / (denominator + 1.0)) / num_objects


def binary_mask_iou(pred, gt):
  """IoU of boolean masks [..., H, W] -> [...]; an empty union counts as IoU 0."""
  inter = jnp.sum(pred & gt, axis=(-2, -1)).astype(jnp.float32)
  union = jnp.sum(pred | gt, axis=(-2, -1)).astype(jnp.float32)
  return inter / jnp.maximum(union, 1.0)


def mask_iou_from_logits(logits, targets, point_threshold: bool = False):
  """The IoU the IoU head is trained to predict: binarised prediction vs target. Mask/box
  tasks threshold logits and targets at 0; the point task thresholds sigmoid(logits) and the
  soft target at 0.2. No gradient flows through the binarisation."""
  if point_threshold:
    pred = jax.nn.sigmoid(logits) > POINT_IOU_THRESHOLD
    gt = targets > POINT_IOU_THRESHOLD
  else:
    pred, gt = logits > 0, targets > 0
  return binary_mask_iou(pred, gt)


def iou_prediction_loss(pred_ious, actual_ious, num_objects, use_l1: bool = False):
  """IoU-head regression per candidate: L1 or squared error, / num_objects."""
  diff = pred_ious - actual_ious
  return (jnp.abs(diff) if use_l1 else diff * diff) / num_objects


def ciou_loss(pred_boxes, target_boxes):
  """Complete-IoU loss per box pair, xyxy [..., 4] -> (1 - CIoU, IoU), each [...].

  Follows the reference's arithmetic (edges via centres, 1e-7 guards, trade-off alpha only
  where IoU > 0.5 and without gradient, CIoU clipped to [-1, 1]); IoU keeps its gradient.
  """
  w1 = pred_boxes[..., 2] - pred_boxes[..., 0]
  h1 = pred_boxes[..., 3] - pred_boxes[..., 1]
  w2 = target_boxes[..., 2] - target_boxes[..., 0]
  h2 = target_boxes[..., 3] - target_boxes[..., 1]
  cx1 = (pred_boxes[..., 0] + pred_boxes[..., 2]) / 2.0
  cy1 = (pred_boxes[..., 1] + pred_boxes[..., 3]) / 2.0
  cx2 = (target_boxes[..., 0] + target_boxes[..., 2]) / 2.0
  cy2 = (target_boxes[..., 1] + target_boxes[..., 3]) / 2.0
  l1, r1, t1, b1 = cx1 - w1 / 2, cx1 + w1 / 2, cy1 - h1 / 2, cy1 + h1 / 2
  l2, r2, t2, b2 = cx2 - w2 / 2, cx2 + w2 / 2, cy2 - h2 / 2, cy2 + h2 / 2

  inter = jnp.maximum(jnp.minimum(r1, r2) - jnp.maximum(l1, l2), 0.0) * jnp.maximum(
    jnp.minimum(b1, b2) - jnp.maximum(t1, t2), 0.0
  )
  c_diag = (
    jnp.maximum(jnp.maximum(r1, r2) - jnp.minimum(l1, l2), 0.0) ** 2
    + jnp.maximum(jnp.maximum(b1, b2) - jnp.minimum(t1, t2), 0.0) ** 2
  )
  centre_dist = (cx2 - cx1) ** 2 + (cy2 - cy1) ** 2

  union = w1 * h1 + w2 * h2 - inter
  u = centre_dist / (c_diag + _CIOU_EPS)
  iou = inter / (union + _CIOU_EPS)
  v = (4.0 / math.pi**2) * (
    jnp.arctan(w2 / (h2 + _CIOU_EPS)) - jnp.arctan(w1 / (h1 + _CIOU_EPS))
  ) ** 2
  s = (iou > 0.5).astype(iou.dtype)
  alpha = jax.lax.stop_gradient(s * v / (1.0 - iou + v + _CIOU_EPS))
  ciou = jnp.clip(iou - u - alpha * v, -1.0, 1.0)
  return 1.0 - ciou, iou


def box_l1_loss(pred_boxes, target_boxes):
  """L1 over the 4 normalised xyxy coordinates [..., 4] -> [...] (no num_objects division)."""
  return jnp.sum(jnp.abs(pred_boxes - target_boxes), axis=-1)


def point_l1_loss(pred_points, target_points, num_objects):
  """L1 over normalised (x, y) [..., 2] -> [...], / num_objects."""
  return jnp.sum(jnp.abs(pred_points - target_points), axis=-1) / num_objects


# ----------------------------------------------------------------------------- combination


def _option(cfg: Mapping, key: str):
  """A config option, or the reference class's default when the config leaves it out."""
  value = cfg.get(key, None)
  return OPTION_DEFAULTS[key] if value is None else value


def _weights(cfg: Mapping, task: str) -> dict:
  """The task's weight dict as floats; checks the keys the reference asserts on."""
  weights = {k: float(v) for k, v in cfg["weight_dict"].items()}
  missing = [k for k in REQUIRED_WEIGHTS[task] if k not in weights]
  if missing:
    raise ValueError(f"{task} loss weight_dict lacks {missing}")
  weights.setdefault("loss_class", 0.0)
  return weights


def reduce_loss(losses: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """Weighted total over the weight dict; zero weights are skipped (as the reference does)."""
  total = jnp.zeros((), jnp.float32)
  for key, weight in weights.items():
    if key not in losses:
      raise ValueError(f"no loss component named {key}")
    if weight != 0:
      total = total + losses[key] * weight
  return total


def _masked_sum(x, mask, axis=None):
  """Sum of x where mask holds; `where` rather than a product keeps padding's values out."""
  return jnp.sum(jnp.where(mask, x, 0.0), axis=axis)


def _num_objects(valid):
  """Objects that exist in some frame (the reference's N = objects in the batch), at least 1."""
  return jnp.maximum(jnp.sum(jnp.any(valid, axis=0)).astype(jnp.float32), 1.0)


def _select(per_candidate, best):
  """per_candidate [..., M] at index best [...] -> [...]."""
  return jnp.take_along_axis(per_candidate, best[..., None], axis=-1)[..., 0]


def multistep_loss(
  outputs: Mapping[str, jax.Array],
  targets: Mapping[str, jax.Array],
  cfg: Mapping,
  *,
  task: str,
  valid=None,
  step_valid=None,
  candidate_valid=None,
  num_objects=None,
) -> dict:
  """The reference's per-task training loss for one clip, summed over frames and steps.

  outputs (float logits of any float dtype, read as float32; stacked over frames T and
  prediction steps S):
    multistep_pred_multimasks_high_res  [T, S, N, M, H, W]
    multistep_pred_ious                 [T, S, N, M]
    multistep_object_score_logits       [T, S, N, 1]
    multistep_pred_multiboxes_xyxy_norm [T, S, N, M, 4]   (box task; xyxy / image size)
  N is every object of the batch (several clips: flatten clips x objects, as the reference's
  bs_obj axis does).
  targets: masks [T, N, H, W] (bool or soft float), boxes [T, N, 4] xyxy pixels (box),
    points [T, N, 2] xy pixels (point), visibles [T, N] (box and point; the mask task reads
    presence off the mask).
  cfg: one task's section of `default_loss_config()` (weight_dict + options), dict or
    ConfigDict; options it omits take the reference classes' defaults (OPTION_DEFAULTS).
  valid [T, N]: frames/objects that exist (padding contributes nothing at all).
  step_valid [T, S]: real prediction steps (frames differ in correction steps).
  candidate_valid [T, S, M] or [T, S, N, M]: real candidates (a single-mask step padded to M
    marks only candidate 0); argmin and the all-candidate IoU mean ignore the rest.
  num_objects: the normaliser; default objects valid in any frame (min 1). Pass the mean
    across data-parallel workers to match the reference's all-reduce.
  Returns {loss_mask, loss_dice, loss_iou, loss_class, [loss_ciou,] [loss_l1,] core_loss}.
  """
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  weights = _weights(cfg, task)
  opt = {k: _option(cfg, k) for k in OPTION_DEFAULTS}

  src_masks = jnp.asarray(outputs["multistep_pred_multimasks_high_res"], jnp.float32)
  ious = jnp.asarray(outputs["multistep_pred_ious"], jnp.float32)
  obj_logits = jnp.asarray(outputs["multistep_object_score_logits"], jnp.float32)
  t_, s_, n_, m_ = src_masks.shape[:4]
  tgt_masks = jnp.asarray(targets["masks"]).astype(jnp.float32)  # [T, N, H, W]

  valid = (
    jnp.ones((t_, n_), bool)
    if valid is None
    else jnp.broadcast_to(jnp.asarray(valid, bool), (t_, n_))
  )
  if num_objects is None:
    num_objects = _num_objects(valid)
  step_valid = (
    jnp.ones((t_, s_), bool)
    if step_valid is None
    else jnp.broadcast_to(jnp.asarray(step_valid, bool), (t_, s_))
  )
  if candidate_valid is None:
    cand = jnp.ones((t_, s_, n_, m_), bool)
  else:
    cand = jnp.asarray(candidate_valid, bool)
    if cand.ndim == 3:
      cand = cand[:, :, None, :]
    cand = jnp.broadcast_to(cand, (t_, s_, n_, m_))
  # [T, S, N]: a step of an existing object of an existing frame.
  live = valid[:, None, :] & step_valid[:, :, None]

  # Target object presence [T, N] gates everything but the object-score loss.
  if not opt["pred_obj_scores"]:
    target_obj = jnp.ones((t_, n_), jnp.float32)
  elif task == "mask":
    target_obj = jnp.any(tgt_masks > 0, axis=(-2, -1)).astype(jnp.float32)
  else:
    target_obj = jnp.asarray(targets["visibles"]).astype(jnp.float32)

  tm = tgt_masks[:, None, :, None]  # [T, 1, N, 1, H, W]
  per_cand = {}
  combo_keys = ["loss_mask", "loss_dice"]
  if task != "box" or opt["pred_mask"]:
    per_cand["loss_mask"] = sigmoid_focal_loss(
      src_masks, tm, num_objects, opt["focal_alpha"], opt["focal_gamma"]
    )
    dice = soft_dice_loss if task == "point" else dice_loss
    per_cand["loss_dice"] = dice(src_masks, tm, num_objects)
  else:
    per_cand["loss_mask"] = per_cand["loss_dice"] = jnp.zeros((t_, s_, n_, m_), jnp.float32)

  if task == "mask":
    actual = mask_iou_from_logits(src_masks, tm)
    per_cand["loss_iou"] = iou_prediction_loss(ious, actual, num_objects, opt["iou_use_l1_loss"])
  elif task == "point":
    # The point the point task reads off its logits: softmax-expected (column, row) pixel,
    # normalised by the size (tracking/point_readout.py's soft_argmax readout at inference).
    src_points = soft_argmax_xy(src_masks) / opt["size"]  # [T, S, N, M, 2]
    tgt_points = jnp.asarray(targets["points"], jnp.float32) / opt["size"]
    per_cand["loss_l1"] = point_l1_loss(src_points, tgt_points[:, None, :, None], num_objects)
    combo_keys.append("loss_l1")
    actual = mask_iou_from_logits(src_masks, tm, point_threshold=True)
    per_cand["loss_iou"] = iou_prediction_loss(ious, actual, num_objects, opt["iou_use_l1_loss"])
  else:  # box
    src_boxes = jnp.asarray(outputs["multistep_pred_multiboxes_xyxy_norm"], jnp.float32)
    tgt_boxes = jnp.asarray(targets["boxes"], jnp.float32) / opt["size"]  # [T, N, 4]
    absent_box = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
    tgt_boxes = jnp.where(target_obj[..., None] > 0, tgt_boxes, absent_box)
    tb = tgt_boxes[:, None, :, None]  # [T, 1, N, 1, 4]
    per_cand["loss_ciou"], box_ious = ciou_loss(src_boxes, tb)
    per_cand["loss_l1"] = box_l1_loss(src_boxes, tb)
    combo_keys += ["loss_ciou", "loss_l1"]
    per_cand["loss_iou"] = iou_prediction_loss(ious, box_ious, num_objects, opt["iou_use_l1_loss"])
    if opt["pred_mask"]:
      actual = mask_iou_from_logits(src_masks, tm)
      per_cand["loss_iou"] = per_cand["loss_iou"] + iou_prediction_loss(
        ious, actual, num_objects, opt["iou_use_l1_loss"]
      )

  # The supervised candidate: lowest weighted loss among the real ones (first on ties).
  combo = sum(per_cand[k] * weights[k] for k in combo_keys)
  best = jnp.argmin(jnp.where(cand, combo, jnp.inf), axis=-1)  # [T, S, N]

  picked = {k: _select(per_cand[k], best) for k in combo_keys}
  if opt["supervise_all_iou"]:
    n_cand = jnp.maximum(jnp.sum(cand, axis=-1), 1).astype(jnp.float32)
    picked["loss_iou"] = _masked_sum(per_cand["loss_iou"], cand, axis=-1) / n_cand
  else:
    picked["loss_iou"] = _select(per_cand["loss_iou"], best)

  gate = target_obj[:, None, :]  # [T, 1, N]
  losses = {k: _masked_sum(v * gate, live) for k, v in picked.items()}
  if task == "box" and opt["box_l1_reference_quirk"]:
    losses["loss_l1"] = _masked_sum(per_cand["loss_l1"], cand & live[..., None])

  if opt["pred_obj_scores"]:
    cls = object_score_loss(
      obj_logits,
      target_obj[:, None, :, None],
      num_objects,
      opt["focal_alpha_obj_score"],
      opt["focal_gamma_obj_score"],
    )
    losses["loss_class"] = _masked_sum(cls, live)
  else:
    losses["loss_class"] = jnp.zeros((), jnp.float32)

  losses[CORE_LOSS_KEY] = reduce_loss(losses, weights)
  return losses
