"""SAMURAI policy: its candidate choice / Kalman regimes and its memory ring against plain
re-statements of the original's per-frame rules (single object, numpy float64), run on
constructed frames; the options plumbing; a whole tracked video."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.tracking import cli
from sam2pp_jax.tracking.memory import Samurai, get_policy, parse_options
from sam2pp_jax.tracking.memory.policy import Candidates
from sam2pp_jax.tracking.memory_bank import EMPTY, MemoryBank
from sam2pp_jax.tracking.step import StepOut

S = 32  # candidate mask size
M = 3


# ------------------------------------------------------------------ the original, restated
class NumpyKalman:
  """ByteTrack's constant-velocity filter as SAMURAI configures it (float64)."""

  F = np.eye(8) + np.eye(8, k=4)
  H = np.eye(4, 8)

  def initiate(self, z):
    h = z[3]
    std = [h / 10, h / 10, 1e-2, h / 10, h / 16, h / 16, 1e-5, h / 16]
    return np.r_[z, np.zeros(4)], np.diag(np.square(std))

  def predict(self, x, p):
    h = x[3]
    q = np.diag(np.square([h / 20, h / 20, 1e-2, h / 20, h / 160, h / 160, 1e-5, h / 160]))
    return self.F @ x, self.F @ p @ self.F.T + q

  def update(self, x, p, z):
    h = x[3]
    r = np.diag(np.square([h / 20, h / 20, 1e-1, h / 20]))
    s = self.H @ p @ self.H.T + r
    k = p @ self.H.T @ np.linalg.inv(s)
    return x + k @ (z - self.H @ x), p - k @ s @ k.T


def xyah(b):
  x1, y1, x2, y2 = b
  h = y2 - y1
  h = 1 if h == 0 else h
  return np.array([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / h, h], float)


def to_xyxy(m):
  xc, yc, a, h = m
  return [xc - a * h / 2, yc - h / 2, xc + a * h / 2, yc + h / 2]


def box_of(mask):
  ys, xs = np.nonzero(mask > 0)
  return [0, 0, 0, 0] if len(xs) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]


def iou_xyxy(a, b):
  if list(b) == [0, 0, 0, 0]:
    return 0.0
  inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union != 0 else 0.0


def original_choice(kf, st, masks, ious, cfg: Samurai):
  """One multimask frame of the original (single object): -> (index, motion score or None)."""
  if st["stable"] == 0:
    j = int(np.argmax(ious))
    st["x"], st["p"] = kf.initiate(xyah(box_of(masks[j])))
    st["stable"] += 1
    return j, None
  st["x"], st["p"] = kf.predict(st["x"], st["p"])
  if st["stable"] < cfg.stable_frames_threshold:
    j = int(np.argmax(ious))
    if ious[j] > cfg.stable_ious_threshold:
      st["x"], st["p"] = kf.update(st["x"], st["p"], xyah(box_of(masks[j])))
      st["stable"] += 1
    else:
      st["stable"] = 0
    return j, None
  boxes = [box_of(m) for m in masks]
  kf_ious = np.array([iou_xyxy(to_xyxy(st["x"][:4]), b) for b in boxes])
  w = cfg.kf_score_weight
  j = int(np.argmax(w * kf_ious + (1 - w) * ious))
  if ious[j] < cfg.stable_ious_threshold:
    st["stable"] = 0
  else:
    st["x"], st["p"] = kf.update(st["x"], st["p"], xyah(boxes[j]))
  return j, kf_ious[j]


# ------------------------------------------------------------------ constructed frames
def rect(x0, y0, w, h):
  m = np.full((S, S), -5.0, np.float32)
  m[max(y0, 0) : max(y0 + h, 0), max(x0, 0) : max(x0 + w, 0)] = 5.0
  return m


def frames(n, rng):
  """Per frame: 3 candidate masks (the moving target, a distractor, a jittered target) and
  predicted IoUs that sometimes favour the distractor or drop below 0.3."""
  out = []
  for t in range(n):
    target = rect(2 + t // 2, 4 + t // 3, 8, 10)
    distractor = rect(int(rng.integers(0, 24)), int(rng.integers(0, 22)), 6, 9)
    jitter = rect(2 + t // 2 + int(rng.integers(-2, 3)), 4 + t // 3, 7, 10)
    masks = np.stack([target, distractor, jitter])
    ious = rng.uniform(0.05, 1.0, M).astype(np.float32)
    if rng.random() < 0.5:
      ious[0] = max(ious[0], 0.9)
    out.append((masks, ious))
  return out


def step_out(masks, ious):
  b = 1
  z = jnp.zeros
  return StepOut(
    low_res=z((b, 8, 8)),
    high_res=z((b, S, S)),
    score=jnp.ones((b,)),
    obj_ptr=z((b, 4)),
    box=None,
    multi_high_res=jnp.asarray(masks)[None],
    ious=jnp.asarray(ious)[None],
    multi_boxes=None,
    candidate_valid=jnp.ones((M,), bool),
    pix=z((b, 1, 1, 4)),
  )


def cands(masks):
  return Candidates(
    low_res=jnp.zeros((1, M, 8, 8)),
    high_res=jnp.asarray(masks)[None],
    obj_ptr=jnp.arange(M * 4, dtype=jnp.float32).reshape(1, M, 4),
    boxes=None,
    valid=jnp.ones((M,), bool),
  )


@pytest.mark.parametrize("seed", [0, 1])
def test_choice_and_filter_follow_the_original(seed):
  """60 multimask frames through all three regimes (restart, warm-up, motion-weighted): the
  same candidate, stable count, motion score and filter state as the restated original."""
  cfg = Samurai(stable_frames_threshold=5)
  rng = np.random.default_rng(seed)
  kf, ref = NumpyKalman(), {"stable": 0, "x": None, "p": None}
  state = cfg.init_state(1)
  choose = jax.jit(lambda st, o, c: cfg.choose(st, o, c, 1, True))
  seen = set()
  for masks, ious in frames(60, rng):
    regime = 0 if ref["stable"] == 0 else (1 if ref["stable"] < 5 else 2)
    seen.add(regime)
    j, motion = original_choice(kf, ref, masks, ious, cfg)
    out, state, meta = choose(state, step_out(masks, ious), cands(masks))
    assert int(state.stable[0]) == ref["stable"]
    np.testing.assert_allclose(np.asarray(out.obj_ptr[0]), np.arange(4) + 4 * j)
    assert float(meta["iou"][0]) == pytest.approx(float(ious[j]))
    if motion is None:
      assert np.isnan(float(meta["motion"][0]))
    else:
      assert float(meta["motion"][0]) == pytest.approx(motion, abs=1e-5)
    np.testing.assert_allclose(np.asarray(state.mean[0]), ref["x"], rtol=1e-4, atol=1e-3)
  assert seen == {0, 1, 2}


def test_single_mask_frames_leave_the_filter_alone():
  cfg = Samurai()
  masks, ious = frames(1, np.random.default_rng(0))[0]
  st0 = cfg.init_state(1)
  out, st, meta = cfg.choose(st0, step_out(masks, ious), cands(masks), 3, False)
  assert int(st.stable[0]) == 0 and np.all(np.asarray(st.mean) == 0)
  np.testing.assert_array_equal(np.asarray(out.obj_ptr[0]), np.arange(4))  # candidate 0
  assert np.isnan(float(meta["motion"][0]))


# ------------------------------------------------------------------ memory ring and view
def original_memory_frames(t, kept, num_maskmem=7, max_ptrs=16):
  """The frames (newest last) the original reads at frame t: valid frames found scanning
  t-1 .. 2, stopping at max_ptrs-1, the previous frame always; the last num_maskmem-1."""
  valid = []
  for i in range(t - 1, 1, -1):
    if kept[i]:
      valid.insert(0, i)
    if len(valid) >= max_ptrs - 1:
      break
  if t - 1 not in valid:
    valid.append(t - 1)
  return [f for f in valid[-(num_maskmem - 1) :] if f >= 1]  # frame 0: the conditioning frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_holds_what_the_original_reads(seed):
  """Random pass/fail sequences of the memory test: the ring slots the view attends to are
  exactly the original's frames, with temporal rows by rank (newest 0)."""
  cfg = Samurai()
  rng = np.random.default_rng(seed)
  n, b = 40, 2
  bank = MemoryBank.empty(b, 1, 2, 4, num_maskmem=7, max_obj_ptrs=16, cond_capacity=1)
  state = cfg.init_state(b)
  ious = rng.uniform(0, 1, (n, b)).astype(np.float32)
  scores = rng.normal(1, 1, (n, b)).astype(np.float32)
  kept = (ious > 0.5) & (scores > 0)
  kept[:2] = False  # frame 0 is the conditioning frame; the original never finds frame 1
  for t in range(1, n):
    view = cfg.view(bank, t)
    for o in range(b):
      frames_ = np.asarray(bank.mem_frame[o])
      ok = np.asarray(view.mem_ok[o])
      got = sorted(frames_[ok].tolist())
      assert got == original_memory_frames(t, kept[:, o]), (t, o)
      rows = {int(f): int(q) for f, q, k in zip(frames_, np.asarray(view.mem_tpos[o]), ok) if k}
      assert [rows[f] for f in got] == list(range(len(got)))[::-1]
    meta = {"iou": jnp.asarray(ious[t]), "score": jnp.asarray(scores[t])}
    meta["motion"] = jnp.full((b,), jnp.nan)
    slot, state = cfg.ring_slot(state, bank, t, meta)
    feats = jnp.zeros((b, 1, 1, 2))
    bank = bank.write(t, feats, jnp.zeros((1, 1, 2)), jnp.zeros((b, 4)), slot=slot, meta=meta)
  assert np.all(np.asarray(bank.mem_frame) != EMPTY)


def test_motion_score_gates_memory_only_when_recorded():
  cfg = Samurai()
  st = cfg.init_state(3)
  meta = {
    "iou": jnp.asarray([0.9, 0.9, 0.9]),
    "score": jnp.asarray([1.0, 1.0, 1.0]),
    "motion": jnp.asarray([jnp.nan, 0.0, 0.2]),
  }
  _, st = cfg.ring_slot(st, _bank(3), 5, meta)
  assert np.asarray(st.head_kept).tolist() == [True, False, True]


def _bank(b):
  return MemoryBank.empty(b, 1, 2, 4, num_maskmem=7, max_obj_ptrs=16)


# ------------------------------------------------------------------ options
def test_options_by_name_with_clear_errors():
  p = get_policy("samurai", **parse_options(["kf_score_weight=0.15", "box_head_measurements=1"]))
  assert p.kf_score_weight == 0.15 and p.box_head_measurements is True
  assert hash(p) == hash(get_policy("samurai", kf_score_weight=0.15, box_head_measurements=True))
  with pytest.raises(ValueError, match="choose one of sam2, samurai"):
    get_policy("samurei")
  with pytest.raises(ValueError, match="no option.*kf_weight.*kf_score_weight=0.25"):
    get_policy("samurai", kf_weight=0.1)
  with pytest.raises(ValueError, match="is not a float"):
    get_policy("samurai", kf_score_weight="high")
  with pytest.raises(ValueError, match="name=value"):
    parse_options(["kf_score_weight"])


def test_track_cli_refuses_a_bad_memory_option(capsys):
  """track.py checks --memory / --memory-opt before loading anything: one error line, exit 2."""

  argv = ["--checkpoint", "nowhere", "--video", "nowhere", "--task", "mask", "--prompt", "x"]
  argv += ["--out", "nowhere", "--memory", "samurai", "--memory-opt", "kf_weight=0.1"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "no option(s) ['kf_weight']" in err and "kf_score_weight=0.25" in err
