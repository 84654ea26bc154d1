"""SAM 2++ training losses: hand-computed values on tiny inputs, candidate selection, gating,
padding, jit and gradients."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sam2pp_jax.model.corner_head import soft_argmax_xy
from sam2pp_jax.train import losses as L

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)
T1 = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)  # one foreground pixel
T2 = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)  # top row foreground


def _close(got, want, tol=1e-6):
  np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)


def _cfg(task, **over):
  cfg = L.default_loss_config()[task].to_dict()
  cfg["size"] = 2
  cfg.update(over)
  return cfg


_COMPILED = {}


def _loss(outs, targets, cfg, *, task, **kw):
  """multistep_loss as one compiled program per (task, config): op-by-op dispatch is far
  slower; the validity masks and num_objects go in traced, as in training."""
  key = (task, repr(cfg))
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(lambda o, t, k: L.multistep_loss(o, t, cfg, task=task, **k))
  return _COMPILED[key](outs, targets, kw)


def _run(fn):
  """Evaluate a no-argument closure as one compiled program (cheaper than eager op dispatch)."""
  return jax.jit(fn)()


def _outs(masks, ious=None, obj=None, boxes=None):
  """Wrap one frame's, one step's [N, M, ...] predictions as [T=1, S=1, N, M, ...]."""
  masks = np.asarray(masks, np.float32)
  n, m = masks.shape[:2]
  ious = np.zeros((n, m), np.float32) if ious is None else np.asarray(ious, np.float32)
  obj = np.full((n, 1), 5.0, np.float32) if obj is None else np.asarray(obj, np.float32)
  out = {
    "multistep_pred_multimasks_high_res": masks[None, None],
    "multistep_pred_ious": ious[None, None],
    "multistep_object_score_logits": obj[None, None],
  }
  if boxes is not None:
    out["multistep_pred_multiboxes_xyxy_norm"] = np.asarray(boxes, np.float32)[None, None]
  return out


# ----------------------------------------------------------------------------- primitives


def test_focal_loss_hand_values():
  got = _run(
    lambda: (
      L.sigmoid_focal_loss(jnp.zeros((2, 2)), T1, 2.0),
      L.sigmoid_focal_loss(jnp.full((2, 2), LN3), T1, 1.0),
      L.sigmoid_focal_loss(
        jnp.stack([jnp.zeros((2, 2)), jnp.full((2, 2), LN3)])[None], T1[None, None], 1.0
      ),
      L.sigmoid_focal_elementwise(jnp.zeros(2), jnp.array([0.0, 1.0]), -1.0, 0.0),
    )
  )
  # logit 0: p = 1/2, ce = ln2, (1 - p_t)^2 = 1/4; alpha_t = 1/4 (fg) or 3/4 (bg).
  # Mean over the 4 pixels = (1/16 + 3 * 3/16) ln2 / 4, then / num_objects = 2.
  zero = (1 / 16 + 9 / 16) * LN2 / 4
  _close(got[0], zero / 2)
  # logit ln3: p = 3/4. fg: ce = ln(4/3), (1/4)^2, 1/4 -> ln(4/3)/64;
  # bg: ce = ln4, (3/4)^2, 3/4 -> 27 ln4 / 64.
  ln3 = (math.log(4 / 3) / 64 + 3 * 27 * LN4 / 64) / 4
  _close(got[1], ln3)
  # [N, M, H, W] -> [N, M]: each candidate keeps its own value.
  _close(got[2], [[zero, ln3]])
  # alpha < 0 and gamma = 0 is plain BCE: ln2 at logit 0 for either target.
  _close(got[3], [LN2, LN2])


def test_dice_losses_hand_values():
  soft = np.array([[1.0, 0.5], [0.0, 0.0]], np.float32)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 2, 4, 4)).astype(np.float32) * 3
  binary = (rng.random((3, 1, 4, 4)) > 0.5).astype(np.float32)
  got = _run(
    lambda: (
      L.dice_loss(jnp.zeros((2, 2)), T1, 1.0),
      L.dice_loss(jnp.full((2, 2), LN3), T2, 2.0),
      L.soft_dice_loss(jnp.zeros((2, 2)), soft, 1.0),
      L.soft_dice_loss(logits, binary, 3.0),
      L.dice_loss(logits, binary, 3.0),
    )
  )
  # p = 1/2, one fg pixel: 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 1/2.
  _close(got[0], 0.5)
  # p = 3/4, two fg pixels: numerator 2 * 1.5 = 3, denominator 3 + 2: 1 - 4/6 = 1/3; / 2.
  _close(got[1], (1 / 3) / 2)
  # Soft labels, p = 1/2, target [[1, .5], [0, 0]]: den = 2 + 1.5, |p - t|_1 = 1.5,
  # numerator = 3.5 - 1.5 = 2: 1 - 3 / 4.5 = 1/3.
  _close(got[2], 1 / 3)
  # For binary targets the soft-label numerator equals 2 * sum(p * t).
  _close(got[3], got[4], 1e-5)


def test_mask_iou_thresholds_and_iou_prediction_loss():
  logits = np.array([[1.0, -1.0], [1.0, -1.0]], np.float32)
  soft = np.array([[0.3, 0.1], [0.0, 0.0]], np.float32)
  got = _run(
    lambda: (
      L.mask_iou_from_logits(logits, T2),
      L.mask_iou_from_logits(logits, T2, point_threshold=True),
      L.mask_iou_from_logits(jnp.full((2, 2), -5.0), soft, point_threshold=True),
      L.mask_iou_from_logits(jnp.full((2, 2), 5.0), soft, point_threshold=True),
      L.mask_iou_from_logits(-jnp.ones((2, 2)), jnp.zeros((2, 2))),
      L.iou_prediction_loss(jnp.array(0.5), 1 / 3, 2.0, use_l1=True),
      L.iou_prediction_loss(jnp.array(0.5), 1 / 3, 2.0, use_l1=False),
    )
  )
  _close(got[0], 1 / 3)  # logits > 0: left column vs top row: I = 1, U = 3
  _close(got[1], 0.5)  # sigmoid(-1) = 0.27 > 0.2: all 4 pixels vs top row
  _close(got[2], 0.0)  # soft target: only 0.3 passes 0.2; nothing predicted
  _close(got[3], 0.25)  # everything predicted: I = 1, U = 4
  _close(got[4], 0.0)  # empty union counts as IoU 0 (union clamped to 1)
  _close(got[5], (1 / 6) / 2)
  _close(got[6], (1 / 36) / 2)


def test_object_score_loss_hand_values():
  # BCE / num_objects: logit 0 -> ln2; logit ln3, target 0 -> -ln(1/4) = ln4;
  # stable far out: logit 40, target 0 -> 40 + ln(1 + e^-40) = 40 (no overflow).
  got = _run(
    lambda: L.object_score_loss(
      jnp.array([[0.0], [LN3], [40.0], [-40.0]]), jnp.array([[1.0], [0.0], [0.0], [0.0]]), 2.0
    )
  )
  _close(got, [LN2 / 2, LN4 / 2, 20.0, 0.0])


def test_ciou_known_values():
  got = _run(
    lambda: (
      L.ciou_loss(jnp.array([0.1, 0.2, 0.6, 0.9]), jnp.array([0.1, 0.2, 0.6, 0.9])),
      L.ciou_loss(jnp.array([0.0, 0.0, 1.0, 1.0]), jnp.array([2.0, 0.0, 3.0, 1.0])),
      L.ciou_loss(jnp.array([0.0, 0.0, 2.0, 1.0]), jnp.array([0.0, 0.0, 2.0, 1.2])),
      L.ciou_loss(jnp.array([0.5, 0.0, 1.5, 1.0]), jnp.array([0.0, 0.0, 1.0, 1.0])),
      L.ciou_loss(jnp.array([0.0, 0.0, 1.0, 1.0]), jnp.array([0.0, 0.0, 2.0, 0.5])),
    )
  )
  # Identical boxes: loss 0, IoU 1.
  _close(got[0], (0.0, 1.0))
  # Disjoint unit squares at x in [0,1] and [2,3]: IoU 0, centre distance^2 4, enclosing
  # diagonal^2 3^2 + 1^2 = 10, same aspect (v = 0): CIoU = -0.4, loss 1.4.
  _close(got[1], (1.4, 0.0))
  # [0,0,2,1] vs [0,0,2,1.2]: IoU 2/2.4 > 0.5, so the aspect term counts with
  # alpha = v / (1 - IoU + v); centre distance^2 0.1^2, enclosing diagonal^2 2^2 + 1.2^2.
  iou = 2 / 2.4
  v = 4 / math.pi**2 * (math.atan(2 / 1.2) - math.atan(2.0)) ** 2
  _close(got[2], (1 - (iou - 0.01 / 5.44 - v / (1 - iou + v) * v), iou), 1e-5)
  # Half-width shift: IoU 1/3 (< 0.5, no aspect term), distance^2 1/4, diagonal^2 3.25.
  _close(got[3], (1 - (1 / 3 - 0.25 / 3.25), 1 / 3), 1e-5)
  # Different aspects but IoU (1/2) / (3/2) = 1/3 < 0.5: still no aspect term. Centres
  # (.5, .5) and (1, .25): distance^2 0.3125; enclosing [0, 0, 2, 1]: diagonal^2 5.
  _close(got[4], (1 - (1 / 3 - 0.3125 / 5), 1 / 3), 1e-5)


def test_box_point_l1_and_soft_argmax():
  peak = jnp.full((4, 4), -50.0).at[0, 3].set(50.0)
  got = _run(
    lambda: (
      L.box_l1_loss(jnp.array([0.0, 0.1, 0.5, 0.5]), jnp.array([0.1, 0.1, 0.3, 0.6])),
      L.point_l1_loss(jnp.array([0.25, 0.5]), jnp.array([0.5, 0.0]), 2.0),
      soft_argmax_xy(jnp.array([[0.0, LN3], [0.0, 0.0]])) / 2,  # the point loss's readout
      soft_argmax_xy(peak) / 4,
    )
  )
  _close(got[0], 0.4)  # no num_objects division for boxes
  _close(got[1], 0.75 / 2)
  # exp(logits) / 6 = [[1, 3], [1, 1]] / 6: E[col] = 4/6, E[row] = 2/6, over size 2.
  _close(got[2], [1 / 3, 1 / 6])
  # x is the column, y the row.
  _close(got[3], [0.75, 0.0])


# ----------------------------------------------------------------------------- combination

# Mask-task clip, one frame, one step, N = 2, M = 2, 2x2 pixels, num_objects = 2.
# Object 0 (target T2): candidate A = +10 everywhere (dice 2/7 but focal large on the two
# background pixels), candidate B = -10 everywhere (dice 2/3, smaller focal since fg pixels
# weigh alpha = 1/4), IoU predictions 0.2 and 0.9. Object 1: absent target.
CAND_A, CAND_B = np.full((2, 2), 10.0, np.float32), np.full((2, 2), -10.0, np.float32)
MASK_TG = {"masks": np.stack([T2, np.zeros((2, 2), np.float32)])[None]}


def _mask_clip(absent_logits=0.0, absent_ious=(0.0, 0.0), absent_obj=0.0):
  masks = np.stack([np.stack([CAND_A, CAND_B]), np.full((2, 2, 2), absent_logits, np.float32)])
  return _outs(masks, ious=[[0.2, 0.9], list(absent_ious)], obj=[[0.0], [absent_obj]])


def _ab_losses():
  """Focal and dice of candidates A and B against T2 with num_objects = 1."""
  return _run(
    lambda: (
      L.sigmoid_focal_loss(np.stack([CAND_A, CAND_B]), T2, 1.0),
      L.dice_loss(np.stack([CAND_A, CAND_B]), T2, 1.0),
    )
  )


def test_multimask_supervises_lowest_weighted_candidate():
  focal, dice = _ab_losses()
  assert focal[1] < focal[0] and dice[0] < dice[1]  # so only the weights decide the pick
  # The released 20:1 focal:dice weights pick B.
  got = _loss(_mask_clip(), MASK_TG, _cfg("mask"), task="mask")
  _close(got["loss_mask"], focal[1] / 2)
  _close(got["loss_dice"], dice[1] / 2)
  # Dice-heavy weights pick A.
  cfg = _cfg("mask", weight_dict=dict(loss_mask=1e-3, loss_dice=1.0, loss_iou=1.0))
  got = _loss(_mask_clip(), MASK_TG, cfg, task="mask")
  _close(got["loss_mask"], focal[0] / 2)
  _close(got["loss_dice"], dice[0] / 2)


def test_iou_supervision_class_loss_and_core_loss():
  # Actual IoUs: A predicts all 4 pixels vs 2 fg -> 1/2; B predicts none -> 0.
  # L1 errors |0.2 - 0.5| = 0.3 and |0.9 - 0| = 0.9; B is the picked candidate.
  got = _loss(_mask_clip(), MASK_TG, _cfg("mask"), task="mask")
  _close(got["loss_iou"], (0.3 + 0.9) / 2 / 2)  # mean over candidates, / 2 objects
  # Object scores 0: BCE ln2 for the present and for the absent object, / 2 objects.
  _close(got["loss_class"], LN2)
  _close(
    got["core_loss"],
    20 * got["loss_mask"] + got["loss_dice"] + got["loss_iou"] + got["loss_class"],
    1e-5,
  )
  assert set(got) == {"loss_mask", "loss_dice", "loss_iou", "loss_class", "core_loss"}
  cfg = _cfg("mask", supervise_all_iou=False, iou_use_l1_loss=False)
  got = _loss(_mask_clip(), MASK_TG, cfg, task="mask")
  _close(got["loss_iou"], 0.9**2 / 2)  # picked candidate only, squared


def test_absent_target_gates_all_but_class_loss_mask_task():
  ref = _loss(_mask_clip(), MASK_TG, _cfg("mask"), task="mask")
  got = _loss(
    _mask_clip(absent_logits=3.0, absent_ious=(0.7, 0.1), absent_obj=2.0),
    MASK_TG,
    _cfg("mask"),
    task="mask",
  )
  for k in ("loss_mask", "loss_dice", "loss_iou"):
    _close(got[k], ref[k])
  # Class loss: ln2 (present, logit 0) + BCE(2, target 0) = ln(1 + e^2), over 2 objects.
  _close(got["loss_class"], (LN2 + math.log1p(math.exp(2.0))) / 2, 1e-5)


def test_num_objects_can_be_given():
  ref = _loss(_mask_clip(), MASK_TG, _cfg("mask"), task="mask")
  got = _loss(_mask_clip(), MASK_TG, _cfg("mask"), task="mask", num_objects=4.0)
  for k in ref:
    _close(got[k], ref[k] / 2, 1e-5)


# Box-task clip, size 2, N = 2, M = 1. Object 0: target box [0,0,2,2] px -> [0,0,1,1],
# predicted [0.5,0,1.5,1] (IoU 1/3, CIoU 1/3 - 1/13, L1 1), IoU prediction 1, mask logits
# +10 vs target T2 (mask IoU 1/2). Object 1: absent, its target becomes [0, 0, 1, 1].
BOX_TG = {
  "masks": np.stack([T2, np.zeros((2, 2), np.float32)])[None],
  "boxes": np.array([[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]], np.float32),
  "visibles": np.array([[True, False]]),
}


def _box_losses(absent_box, quirk, absent_logits=10.0):
  boxes = np.array([[[0.5, 0.0, 1.5, 1.0]], [absent_box]], np.float32)  # [N, M=1, 4]
  masks = np.stack([CAND_A[None], np.full((1, 2, 2), absent_logits, np.float32)])
  outs = _outs(masks, ious=[[1.0], [0.3]], boxes=boxes)
  return _loss(outs, BOX_TG, _cfg("box", box_l1_reference_quirk=quirk), task="box")


def test_box_task_hand_values():
  got = _box_losses([0.0, 0.0, 1.0, 1.0], quirk=False)
  _close(got["loss_ciou"], 1 - (1 / 3 - 1 / 13), 1e-5)  # not divided by num_objects
  _close(got["loss_l1"], 1.0)
  # Box IoU term |1 - 1/3| plus (pred_mask) mask IoU term |1 - 1/2|, over 2 objects.
  _close(got["loss_iou"], (2 / 3 + 1 / 2) / 2, 1e-5)
  focal_a = _run(lambda: L.sigmoid_focal_loss(CAND_A, T2, 2.0))
  _close(got["loss_mask"], focal_a)


def test_box_task_gating_and_reference_l1_quirk():
  same, shifted = [0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.9, 0.9]
  # Gated like CIoU: the absent object's box and mask change nothing.
  a = _box_losses(same, quirk=False)
  b = _box_losses(shifted, quirk=False, absent_logits=-4.0)
  for k in a:
    _close(b[k], a[k])
  # The reference sums L1 over every candidate, ungated, against the [0, 0, 1, 1] stand-in.
  a, b = _box_losses(same, quirk=True), _box_losses(shifted, quirk=True)
  _close(a["loss_l1"], 1.0)
  _close(b["loss_l1"], 1.0 + 0.4)
  _close(b["loss_ciou"], a["loss_ciou"])


def test_point_task_hand_values_and_gating():
  # soft-argmax of [[0, ln3], [0, 0]] is (1/3, 1/6); target pixel (1, 0) / size 2 = (0.5, 0).
  logits = np.array([[0.0, LN3], [0.0, 0.0]], np.float32)
  soft = np.array([[1.0, 0.5], [0.0, 0.0]], np.float32)
  tg = {
    "masks": np.stack([soft, soft])[None],
    "points": np.array([[[1.0, 0.0], [0.0, 0.0]]]),
    "visibles": np.array([[True, False]]),
  }
  cfg = ml_collections.ConfigDict(_cfg("point"))
  got = _loss(_outs(np.stack([logits[None], logits[None]])), tg, cfg, task="point")
  _close(got["loss_l1"], (1 / 6 + 1 / 6) / 2, 1e-5)  # / num_objects = 2
  # Soft-label dice: p = [[.5, .75], [.5, .5]]; den = 2.25 + 1.5, |p - t|_1 = 1.75,
  # numerator 2: 1 - 3 / 4.75 = 7/19 (the binary formula would give 8/19).
  _close(got["loss_dice"], (7 / 19) / 2, 1e-5)
  moved = _loss(
    _outs(np.stack([logits[None], -logits[None]]), ious=[[0], [1]]), tg, cfg, task="point"
  )
  for k in ("loss_mask", "loss_dice", "loss_l1", "loss_iou", "loss_class"):
    _close(moved[k], got[k])


def test_point_l1_takes_part_in_candidate_choice():
  # Mirrored logits on a uniform target give equal mask losses; only the point L1 separates
  # the candidates: peak column 1 -> x = 1/2, peak column 0 -> x = 0 (target x = 0).
  left = np.array([[4.0, -4.0], [4.0, -4.0]], np.float32)
  tg = {
    "masks": np.full((1, 1, 2, 2), 0.5, np.float32),
    "points": np.array([[[0.0, 0.5]]]),
    "visibles": np.array([[True]]),
  }
  cands = np.stack([left[:, ::-1], left])
  got = _loss(_outs(cands[None]), tg, _cfg("point"), task="point")
  e = 1 / (1 + math.exp(8.0))  # softmax weight of a -4 pixel against a +4 one
  _close(got["loss_l1"], e / 2, 1e-5)  # |E[col] / 2 - 0| + |1/4 - 1/4| for `left`


def _random_clip(task, seed, t=2, s=2, n=3, m=1, h=4):
  """Random predictions and targets for T frames, S steps, N objects (one absent), M candidates."""
  rng = np.random.default_rng(seed)
  f32 = np.float32
  boxes = np.sort(rng.random((t, s, n, m, 2, 2)), axis=-2).reshape(t, s, n, m, 4)
  outs = {
    "multistep_pred_multimasks_high_res": rng.normal(size=(t, s, n, m, h, h)).astype(f32) * 3,
    "multistep_pred_ious": rng.random((t, s, n, m)).astype(f32),
    "multistep_object_score_logits": rng.normal(size=(t, s, n, 1)).astype(f32),
    "multistep_pred_multiboxes_xyxy_norm": boxes.astype(f32),
  }
  # An object predicted absent, as the model emits it (NO_OBJ_SCORE logits, zero boxes).
  outs["multistep_pred_multimasks_high_res"][0, 0, 1] = -1024.0
  outs["multistep_pred_multiboxes_xyxy_norm"][0, 0, 1] = 0.0
  masks = rng.random((t, n, h, h)) > 0.5
  masks[-1, 0] = False
  tg = {
    "masks": masks if task != "point" else (masks * 0.8).astype(f32),
    "visibles": masks.any(axis=(-2, -1)),
    "boxes": np.tile(np.array([0.5, 1.0, 3.0, 4.0], f32), (t, n, 1)),
    "points": (rng.random((t, n, 2)) * h).astype(f32),
  }
  return outs, tg, _cfg(task, size=h)


def _pad(x, axis, extra, fill=7.0):
  """Append `extra` junk entries along `axis` (True for boolean arrays)."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, extra)
  return np.pad(x, pad, constant_values=True if x.dtype == bool else fill)


@pytest.mark.parametrize("task", L.TASKS)
def test_padding_summation_jit_and_finite_gradients(task):
  outs, tg, cfg = _random_clip(task, 4)
  ref = _loss(outs, tg, cfg, task=task)
  # One more object, frame and step, and two more candidates (M = 1 padded to 3), all junk.
  axes = {
    "multistep_pred_multimasks_high_res": 3,
    "multistep_pred_ious": 3,
    "multistep_object_score_logits": None,
    "multistep_pred_multiboxes_xyxy_norm": 3,
  }
  pouts = {}
  for k, m_ax in axes.items():
    x = _pad(_pad(_pad(outs[k], 2, 1), 0, 1), 1, 1)
    pouts[k] = _pad(x, m_ax, 2, fill=-3.0) if m_ax is not None else x
  ptg = {k: _pad(_pad(v, 1, 1), 0, 1) for k, v in tg.items()}
  cand_valid = np.zeros((3, 3, 3), bool)
  cand_valid[..., 0] = True

  def core(o, frames, steps):
    valid = np.zeros((3, 4), bool)
    valid[:, :3] = True
    out = L.multistep_loss(
      o,
      ptg,
      cfg,
      task=task,
      valid=valid & frames[:, None],
      step_valid=steps[None, :] & frames[:, None],
      candidate_valid=cand_valid,
    )
    return out["core_loss"], out

  run = jax.jit(jax.value_and_grad(core, has_aux=True))
  (_, got), grads = run(pouts, np.array([True, True, False]), np.array([True, True, False]))
  for k in ref:
    _close(got[k], ref[k], 1e-5)
  assert float(got["core_loss"]) > 0
  for k, g in grads.items():
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), k
    # Padding receives no gradient at all.
    assert not g[2].any() and not g[:, 2].any() and not g[:, :, 3].any(), k
    if axes[k] is not None:
      assert not g[:, :, :, 1:].any(), k
  assert np.abs(np.asarray(grads["multistep_pred_multimasks_high_res"])).sum() > 0
  if task == "box":
    assert np.abs(np.asarray(grads["multistep_pred_multiboxes_xyxy_norm"])).sum() > 0
  # Every component is the sum of its per-frame, per-step values (all objects exist in both
  # frames, so num_objects stays 3 when only one frame is kept).
  parts = [
    run(pouts, np.arange(3) == t, np.arange(3) == s)[0][1] for t in range(2) for s in range(2)
  ]
  for k in ref:
    _close(sum(float(p[k]) for p in parts), ref[k], 1e-5)


def test_config_values_and_errors():
  cfg = L.default_loss_config()
  assert dict(cfg.mask.weight_dict) == dict(
    loss_mask=20.0, loss_dice=1.0, loss_iou=1.0, loss_class=1.0
  )
  assert dict(cfg.box.weight_dict) == dict(
    loss_mask=0.5, loss_dice=0.1, loss_ciou=1.0, loss_l1=1.0, loss_iou=1.0, loss_class=1.0
  )
  assert cfg.point.weight_dict.loss_l1 == 20.0 and cfg.box.pred_mask and cfg.point.size == 1024
  outs, tg, good = _random_clip("point", 8, t=1, s=1, n=2)
  with pytest.raises(ValueError, match="loss_l1"):
    L.multistep_loss(
      outs, tg, {"weight_dict": {"loss_mask": 1, "loss_dice": 1, "loss_iou": 1}}, task="point"
    )
  with pytest.raises(ValueError, match="loss_bogus"):
    jax.eval_shape(
      lambda o: L.multistep_loss(
        o, tg, dict(good, weight_dict=dict(good["weight_dict"], loss_bogus=1.0)), task="point"
      ),
      outs,
    )
  with pytest.raises(ValueError, match="task"):
    L.multistep_loss(outs, tg, good, task="boxes")
