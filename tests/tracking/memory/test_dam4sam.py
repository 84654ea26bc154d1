"""DAM4SAM policy (d4sm capacities): its admission rules, list slots, evictions and read view
on constructed candidates against hand-computed expectations and a plain restatement of
d4sm's per-frame list update; objects as a batch axis; the whole-video scan and the
interactive predictor; the options plumbing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam2pp_jax.checkpoint import save_model
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.tracking import cli as track_cli
from sam2pp_jax.tracking.memory import DAM4SAM, get_policy
from sam2pp_jax.tracking.memory.dam4sam import DRM, FREE, RAM
from sam2pp_jax.tracking.memory.policy import Candidates
from sam2pp_jax.tracking.memory_bank import MemoryBank
from sam2pp_jax.tracking.predictor import VideoPredictor
from sam2pp_jax.tracking.propagate import track_video
from sam2pp_jax.tracking.step import StepOut

S = 32  # candidate mask size
M = 3
KINDS = {RAM: "ram", DRM: "drm"}


# ------------------------------------------------------------------ constructed frames
def rect(x0, y0, w, h):
  m = np.zeros((S, S), bool)
  m[y0 : y0 + h, x0 : x0 + w] = True
  return m


def frame(kind, w=10, h=10, iou=0.9):
  """Candidates (logits [M,S,S]) and predicted IoUs of one object on one frame. kind "A": the
  target (IoU `iou`) with a far blob in an alternative (a distractor); "P": the same with a
  failing IoU 0.5; "N": alternatives inside the target (no distractor); "I": invisible."""
  target = rect(4, 4, w, h)
  blob = rect(27, 27, 2, 2)
  if kind == "I":
    masks = np.zeros((M, S, S), bool)
  elif kind == "N":
    masks = np.stack([target, target & rect(4, 4, 5, 5), target])
  else:
    masks = np.stack([target, target | blob, target & rect(4, 4, 5, 5)])
  ious = np.array([0.5 if kind == "P" else iou, 0.3, 0.2], np.float32)
  return np.where(masks, 5.0, -5.0).astype(np.float32), ious


def inputs(frames):
  """Per-object (masks, ious) -> the StepOut and Candidates of a batch of objects."""
  masks = jnp.asarray(np.stack([f[0] for f in frames]))
  ious = jnp.asarray(np.stack([f[1] for f in frames]))
  b = masks.shape[0]
  z = jnp.zeros
  out = StepOut(
    low_res=z((b, 8, 8)),
    high_res=z((b, S, S)),
    score=jnp.ones((b,)),
    obj_ptr=z((b, 4)),
    box=None,
    multi_high_res=masks,
    ious=ious,
    multi_boxes=None,
    candidate_valid=jnp.ones((M,), bool),
    pix=z((b, 1, 1, 4)),
  )
  cands = Candidates(
    low_res=z((b, M, 8, 8)),
    high_res=masks,
    obj_ptr=jnp.broadcast_to(jnp.arange(M * 4, dtype=jnp.float32).reshape(M, 4), (b, M, 4)),
    boxes=None,
    valid=jnp.ones((M,), bool),
  )
  return out, cands


def new_bank(policy, b=1, num_maskmem=7):
  bank = MemoryBank.empty(b, 1, 4, 4, num_maskmem=num_maskmem, max_obj_ptrs=16)
  return bank.replace(policy_state=policy.init_state(b))


def _step(policy):
  """One tracked frame as track_step runs it: choose, ring slot, the bank write (the pointer
  written is the chosen candidate's plus t, so a pointer slot tells its frame)."""

  @jax.jit
  def step(bank, out, cands, t):
    o, st, meta = policy.choose(bank.policy_state, out, cands, t, True)
    slot, st = policy.ring_slot(st, bank, t, meta)
    b = out.score.shape[0]
    z = jnp.zeros((b, 1, 1, 4))
    ptr = o.obj_ptr + t.astype(jnp.float32)
    bank = bank.write(t, z, z[:1], ptr, slot=slot, meta=meta, ptr_slot=policy.ptr_slot(st))
    return bank.replace(policy_state=st)

  return step


def run(policy, kinds, bank=None, t0=1, **kw):
  """Track one object through frames of `kinds` from frame t0; returns the final bank."""
  step = _step(policy)
  bank = new_bank(policy) if bank is None else bank
  for i, k in enumerate(kinds):
    bank = step(bank, *inputs([frame(k, **kw)]), jnp.int32(t0 + i))
  return bank


def entries(state, o=0):
  """The object's list (without the prompt frame) as [(frame, kind)], list order."""
  kind, order, fr = (np.asarray(x)[o] for x in (state.kind, state.order, state.frame))
  used = sorted((order[j], j) for j in range(len(kind)) if kind[j] != FREE)
  return [(int(fr[j]), KINDS[int(kind[j])]) for _, j in used]


# ------------------------------------------------------------------ d4sm restated
class D4smList:
  """d4sm's per-object list update (M:440-576, both DRM branches), frames of constructed
  kinds: "A" passes every admission test but the size-list length and the spacing."""

  def __init__(self, delta=5, max_ram=3, max_drm=3):
    self.delta, self.max_ram, self.max_drm = delta, max_ram, max_drm
    self.mem, self.pending, self.last_added, self.n_sizes = [], None, -1, 0
    self.evicted = {"ram": 0, "drm": 0}

  def _idx(self, kind):
    return [i for i, e in enumerate(self.mem) if e[1] == kind]

  def _pop(self, kind):
    self.mem.pop(self._idx(kind)[0])
    self.evicted[kind] += 1

  def step(self, t, kind):
    cap = self.max_ram + self.max_drm  # list entries besides the prompt frame
    if self.pending is not None:
      self.mem[-1] = self.pending
      self.pending = None
      if len(self._idx("drm")) > self.max_drm:
        self._pop("drm")
    if kind == "I":
      return
    ram = self._idx("ram")
    if not ram or self.mem[ram[-1]][0] % self.delta == 0:
      self.mem.append((t, "ram"))
    else:
      self.mem[ram[-1]] = (t, "ram")
    if len(self._idx("ram")) > self.max_ram and len(self.mem) > cap:
      self._pop("ram")
    self.n_sizes += 1
    spaced = self.last_added == -1 or t - self.last_added > self.delta
    if kind == "A" and self.n_sizes > 1 and spaced and self.max_drm > 0:
      self.last_added = t
      if self.mem[-1][0] == t:
        self.pending = (t, "drm")
      else:  # not reached with use_last: kept to show it
        self.mem.append((t, "drm"))
        if len(self.mem) > cap:
          self._pop("drm" if len(self._idx("drm")) > self.max_drm else "ram")

  def rows(self, r):
    """Each entry's temporal row: DRM the conditioning row r, RAM the entries after it."""
    return [r if k == "drm" else len(self.mem) - i - 1 for i, (_, k) in enumerate(self.mem)]


def view_rows(policy, bank, t):
  """The view's (frame, row) of every read ring slot, in list order."""
  v = policy.view(bank, jnp.int32(t))
  st = bank.policy_state
  ok, row = np.asarray(v.mem_ok[0]), np.asarray(v.mem_tpos[0])
  order, fr = np.asarray(st.order[0]), np.asarray(bank.mem_frame[0])
  n = st.kind.shape[1]
  assert not ok[n:].any()
  got = sorted((order[j], int(fr[j]), int(row[j])) for j in range(n) if ok[j])
  return [(f, r) for _, f, r in got]


# ------------------------------------------------------------------ list slots and view
def test_hand_computed_sequence():
  """Frames 1..9 of kinds A A P P P P I A P (delta 5), the list after each, by hand:
  1 [R1] (first size: no admission)   2 [R2] admitted (R1 % 5 != 0: overwritten)
  3 [D2 R3] (R2 -> D2; no RAM: new)   4 [D2 R4]   5 [D2 R5]   6 [D2 R5 R6] (5 % 5 == 0: new)
  7 invisible: unchanged              8 [D2 R5 R8] admitted (8 - 2 > 5)
  9 [D2 R5 D8 R9] (R8 -> D8 in place; R5 % 5 == 0: new)."""
  policy = DAM4SAM()
  want = {
    1: [(1, "ram")],
    2: [(2, "ram")],
    3: [(2, "drm"), (3, "ram")],
    4: [(2, "drm"), (4, "ram")],
    5: [(2, "drm"), (5, "ram")],
    6: [(2, "drm"), (5, "ram"), (6, "ram")],
    7: [(2, "drm"), (5, "ram"), (6, "ram")],
    8: [(2, "drm"), (5, "ram"), (8, "ram")],
    9: [(2, "drm"), (5, "ram"), (8, "drm"), (9, "ram")],
  }
  pending = {2: True, 8: True}
  step = _step(policy)
  bank = new_bank(policy)
  for t, k in enumerate("AAPPPPIAP", start=1):
    before = bank.policy_state
    bank = step(bank, *inputs([frame(k)]), jnp.int32(t))
    st = bank.policy_state
    assert entries(st) == want[t], t
    assert bool(st.pending[0]) == pending.get(t, False), t
    if k == "I":  # nothing written, the slots as they were
      assert int(st.slot[0]) == -1
      np.testing.assert_array_equal(np.asarray(st.frame), np.asarray(before.frame))
      assert int(st.history.count[0]) == int(before.history.count[0])
  assert int(bank.policy_state.history.last_added[0]) == 8
  # read at frame 10: D2 and D8 at the conditioning row 6, R5 behind 2 entries, R9 newest
  assert view_rows(policy, bank, 10) == [(2, 6), (5, 2), (8, 6), (9, 0)]
  # the ring holds what the list says
  st = bank.policy_state
  used = np.asarray(st.kind[0]) != FREE
  np.testing.assert_array_equal(
    np.asarray(bank.mem_frame[0])[:6][used], np.asarray(st.frame[0])[used]
  )


def test_ram_borrows_free_drm_places_then_evicts_oldest():
  """No admission (IoU 0.5): the RAM chain of multiples of 5 grows to all 6 places; frame 31
  then drops the oldest (R5): [R10 R15 R20 R25 R30 R31]."""
  policy = DAM4SAM()
  bank = run(policy, "P" * 30)
  assert entries(bank.policy_state) == [(f, "ram") for f in (5, 10, 15, 20, 25, 30)]
  bank = run(policy, "P", bank=bank, t0=31)
  assert entries(bank.policy_state) == [(f, "ram") for f in (10, 15, 20, 25, 30, 31)]
  assert view_rows(policy, bank, 32) == [(10, 5), (15, 4), (20, 3), (25, 2), (30, 1), (31, 0)]


@pytest.mark.parametrize(
  "seed, opts", [(0, {}), (1, {}), (2, dict(update_delta=3, max_ram=2, max_drm=1))]
)
def test_list_follows_d4sm_over_random_frames(seed, opts):
  """120 frames of random kinds: after every frame the same list (frames, kinds, order) and
  read rows as the restated d4sm update; both evictions happen."""
  policy = DAM4SAM(**opts)
  ref = D4smList(opts.get("update_delta", 5), opts.get("max_ram", 3), opts.get("max_drm", 3))
  rng = np.random.default_rng(seed)
  step = _step(policy)
  bank = new_bank(policy)
  for t in range(1, 121):
    k = "APPIN"[rng.choice(5, p=[0.45, 0.25, 0.1, 0.1, 0.1])]
    bank = step(bank, *inputs([frame(k)]), jnp.int32(t))
    ref.step(t, k)
    assert entries(bank.policy_state) == ref.mem, t
    want = list(zip([f for f, _ in ref.mem], ref.rows(6)))
    assert view_rows(policy, bank, t + 1) == want, t
  assert ref.evicted["ram"] > 0 and ref.evicted["drm"] > 0


def test_pointers_of_invisible_frames_are_not_read():
  """Frames 1..5 with frame 3 invisible: at frame 6 the pointers of 1, 2, 4, 5 are read at
  1 + their rank from the newest (5 -> 1, 4 -> 2, 2 -> 3, 1 -> 4), over the list length 4."""
  policy = DAM4SAM()
  bank = run(policy, "PPIPP")
  v = policy.view(bank, jnp.int32(6))
  frames = np.asarray(policy.pointer_frames(bank.policy_state, bank.ptr.shape[1]))[0]
  ok = np.asarray(v.ptr_ok[0])
  assert sorted(frames[ok].tolist()) == [1, 2, 4, 5]
  rel = dict(zip(frames[ok].tolist(), np.asarray(v.ptr_rel[0])[ok].tolist()))
  assert rel == {5: 1.0, 4: 2.0, 2: 3.0, 1: 4.0}
  assert float(v.ptr_norm[0]) == 4.0


def test_pointer_list_follows_d4sm():
  """40 frames, a third invisible, more than P = 15 visible ones: after every frame the
  pointers read are d4sm's list (M:457-470: the last 15 visible frames, however old), each at
  1 + its rank from the newest, over the list length (at least 1); the ring slots the policy
  wrote hold exactly those frames' pointers."""
  policy = DAM4SAM()
  rng = np.random.default_rng(7)
  step = _step(policy)
  bank = new_bank(policy)
  listed = []  # d4sm's pointer list without the prompt's, oldest first
  base = float(np.asarray(inputs([frame("P")])[1].obj_ptr)[0, 0, 0])  # candidate 0's pointer
  for t in range(1, 41):
    k = "PI"[rng.choice(2, p=[0.65, 0.35])]
    bank = step(bank, *inputs([frame(k)]), jnp.int32(t))
    if k != "I":
      listed = (listed + [t])[-15:]
    v = policy.view(bank, jnp.int32(t + 1))
    frames = np.asarray(policy.pointer_frames(bank.policy_state, bank.ptr.shape[1]))[0]
    ok = np.asarray(v.ptr_ok[0])
    assert sorted(frames[ok].tolist()) == listed, t
    rank = {f: len(listed) - i for i, f in enumerate(listed)}
    np.testing.assert_array_equal(np.asarray(v.ptr_rel[0])[ok], [rank[f] for f in frames[ok]])
    assert float(v.ptr_norm[0]) == max(1, len(listed))
    np.testing.assert_array_equal(np.asarray(bank.ptr[0, :, 0])[ok] - base, frames[ok])
  assert listed[0] < 40 - 15  # the list reaches further back than the last 15 frames


# ------------------------------------------------------------------ admission rules
def admitted_at_end(policy, kinds, sizes=None, ious=None):
  """Track one object; whether the last frame was admitted (pending after it)."""
  step = _step(policy)
  bank = new_bank(policy)
  for i, k in enumerate(kinds):
    w, h = (10, 10) if sizes is None else sizes[i]
    iou = 0.9 if ious is None else ious[i]
    bank = step(bank, *inputs([frame(k, w, h, iou)]), jnp.int32(i + 1))
  return bool(bank.policy_state.pending[0])


@pytest.mark.parametrize(
  "last, want",
  [
    ((11, 11), False),  # 121 / median(9 x 100, 121) = 1.21 > 1.2
    ((11, 10), True),  # 110 / 100 = 1.1
    ((9, 9), True),  # 81 / median(81, 9 x 100) = 0.81
    ((8, 10), True),  # 80 / median(80, 9 x 100) = 0.8, inclusive
    ((7, 11), False),  # 77 / 100 = 0.77
  ],
)
def test_size_ratio(last, want):
  kinds = "P" * 10 + "A"
  assert admitted_at_end(DAM4SAM(), kinds, [(10, 10)] * 10 + [last]) is want


def test_size_median_window_is_the_last_ten_visible_sizes():
  """Ten frames of 400 px, nine of 100 px, invisible frames (no size pushed), then 100 px:
  the median of the last 10 visible sizes is 100 (ratio 1, admitted; all 20: 250). With four
  100 px frames only, the last 10 are 5 x 400 and 5 x 100: median 250, ratio 0.4, refused."""
  big, small = [(20, 20)] * 10, [(10, 10)] * 9
  kinds = "P" * 10 + "P" * 9 + "III" + "A"
  assert admitted_at_end(DAM4SAM(), kinds, big + small + [(10, 10)] * 4)
  kinds = "P" * 10 + "P" * 4 + "III" + "A"
  assert not admitted_at_end(DAM4SAM(), kinds, big + small[:4] + [(10, 10)] * 4)


def test_first_visible_frame_and_iou_threshold():
  assert not admitted_at_end(DAM4SAM(), "A")  # a single size: no ratio
  assert admitted_at_end(DAM4SAM(), "IPA")  # the invisible frame pushed no size
  assert not admitted_at_end(DAM4SAM(), "PA", ious=[0.9, 0.75])
  assert admitted_at_end(DAM4SAM(), "PA", ious=[0.9, 0.85])
  assert admitted_at_end(DAM4SAM(iou_threshold=0.7), "PA", ious=[0.9, 0.75])


@pytest.mark.parametrize("delta", [5, 3])
def test_update_delta_spacing(delta):
  """Admitted at 2; the next admission needs t - 2 > delta."""
  policy = DAM4SAM(update_delta=delta)
  assert not admitted_at_end(policy, "PA" + "P" * (delta - 1) + "A")  # t = delta + 2
  assert admitted_at_end(policy, "PA" + "P" * delta + "A")  # t = delta + 3
  bank = run(policy, "PA" + "P" * delta + "A")
  assert int(bank.policy_state.history.last_added[0]) == delta + 3


def test_distractor_test():
  """A far blob in an alternative: box IoU 100 / 22^2 <= 0.7, admitted. Alternatives inside
  the target: all dropped, refused. A one-column extension: box IoU 100 / 110 > 0.7,
  refused; with distractor_box_iou 0.95, admitted."""
  assert admitted_at_end(DAM4SAM(), "PA")
  assert not admitted_at_end(DAM4SAM(), "PN")
  policy = DAM4SAM()
  masks, ious = frame("A")
  masks[1] = np.where(rect(4, 4, 11, 10), 5.0, -5.0)
  for p, want in ((policy, False), (DAM4SAM(distractor_box_iou=0.95), True)):
    step = _step(p)
    bank = step(new_bank(p), *inputs([frame("P")]), jnp.int32(1))
    bank = step(bank, *inputs([(masks, ious)]), jnp.int32(2))
    assert bool(bank.policy_state.pending[0]) is want


def test_invisible_frame_still_turns_the_admitted_frame_into_drm():
  policy = DAM4SAM()
  bank = run(policy, "PAI")
  assert entries(bank.policy_state) == [(2, "drm")]
  assert int(bank.policy_state.slot[0]) == -1


def test_no_drm_places_means_no_admission():
  bank = run(DAM4SAM(max_drm=0), "PA" + "P" * 6 + "A")
  st = bank.policy_state
  assert not bool(st.pending[0]) and int(st.history.last_added[0]) == -1
  assert all(k == "ram" for _, k in entries(st))


def test_objects_are_independent():
  """Two objects with different frame kinds in one batch == each alone."""
  policy = DAM4SAM(update_delta=2, max_ram=2, max_drm=2)
  rng = np.random.default_rng(5)
  seqs = ["".join("APIN"[i] for i in rng.choice(4, 30, p=[0.5, 0.2, 0.2, 0.1])) for _ in "ab"]
  step = _step(policy)
  both = new_bank(policy, 2)
  for t in range(30):
    both = step(both, *inputs([frame(s[t]) for s in seqs]), jnp.int32(t + 1))
  for o, s in enumerate(seqs):
    alone = run(policy, s)
    assert entries(both.policy_state, o) == entries(alone.policy_state)
    for a, b in zip(jax.tree.leaves(both.policy_state), jax.tree.leaves(alone.policy_state)):
      np.testing.assert_array_equal(np.asarray(a)[o], np.asarray(b)[0])


def test_prompt_frame_changes_nothing():
  """The box task decodes the prompt frame with candidates: the state stays fresh."""
  policy = DAM4SAM()
  st0 = policy.init_state(1)
  out, st, _ = policy.choose(st0, *inputs([frame("A")]), jnp.int32(0), True)
  for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(st0)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------ options
def test_get_policy_coerces_and_refuses():
  p = get_policy("dam4sam", max_drm="2", iou_threshold="0.7", update_delta="4")
  assert p == DAM4SAM(max_drm=2, iou_threshold=0.7, update_delta=4)
  assert isinstance(p.max_drm, int) and isinstance(p.iou_threshold, float)
  assert get_policy("dam4sam").options()["max_ram"] == 3
  with pytest.raises(ValueError, match="no option.*use_last"):
    get_policy("dam4sam", use_last="true")
  with pytest.raises(ValueError, match="not a int"):
    get_policy("dam4sam", max_ram="x")
  with pytest.raises(ValueError, match="max_ram >= 1"):
    get_policy("dam4sam", max_ram="0")
  with pytest.raises(ValueError, match="do not fit"):
    run(DAM4SAM(max_ram=4), "P", bank=new_bank(DAM4SAM(max_ram=4), num_maskmem=7))


# ------------------------------------------------------------------ tracking (tiny model)
HW = (48, 64)
T = 8
# tiny: num_maskmem 3 (2 ring slots); permissive admission so that random weights admit
TINY = DAM4SAM(
  update_delta=2,
  max_ram=1,
  max_drm=1,
  iou_threshold=0.0,
  area_ratio_low=0.0,
  area_ratio_high=100.0,
  distractor_box_iou=1.0,
)


@pytest.fixture(scope="module")
def tiny():
  model = build_model("tiny")
  params = random_params(model, 1)  # seed 1: candidates differ, so frames get admitted
  frames = (
    np.random.default_rng(3)
    .standard_normal((T, model.config.image_size, model.config.image_size, 3))
    .astype(np.float32)
  )
  masks = np.zeros((2,) + HW, bool)
  masks[0, 10:30, 20:44] = True
  masks[1, 4:20, 2:30] = True
  return model, params, frames, masks


def _track(tiny, masks, policy=TINY, **kw):
  model, params, frames, _ = tiny
  return track_video(
    model,
    params,
    frames,
    HW,
    "mask",
    {"mask": masks},
    chunk=3,
    memory=policy,
    return_bank=True,
    **kw,
  )


@pytest.mark.slow  # ~20 s of tracking; CI runs it (make test-slow)
def test_tracking_objects_independent_and_drm_used(tiny):
  both = _track(tiny, tiny[3])
  st = both["bank"].policy_state
  assert np.all(np.asarray(st.history.last_added) >= 1)  # something was admitted
  for o in range(2):
    alone = _track(tiny, tiny[3][o : o + 1])
    np.testing.assert_allclose(
      both["low_res_mask_logits"][:, o], alone["low_res_mask_logits"][:, 0], atol=2e-4
    )
    sa = alone["bank"].policy_state
    assert entries(st, o) == entries(sa)
    np.testing.assert_array_equal(np.asarray(st.ptr_list[o]), np.asarray(sa.ptr_list[0]))
    assert int(st.n_ptr[o]) == int(sa.n_ptr[0])


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_predictor_equals_scan(tiny):
  """The predictor (host layout of the state's slots, state per object on the host) == the
  scan (ring slots and state in the bank); then its refusals."""
  model, params, frames, masks = tiny
  pred = VideoPredictor(model, params, "mask", encode_chunk=2, memory=TINY)
  state = pred.init_state(frames, video_hw=HW)
  for k in (0, 1):
    pred.add_new_mask(state, 0, 10 + k, masks[k])
  got = {f: m for f, _, m in pred.propagate_in_video(state)}
  ref = _track(tiny, masks)
  np.testing.assert_allclose(
    np.stack([got[f] for f in range(T)]), ref["video_res_mask_logits"], atol=5e-4, rtol=1e-4
  )
  st = ref["bank"].policy_state
  for k in (0, 1):
    ptr = np.stack([pred.frame_output(state, f, 10 + k)["obj_ptr"] for f in range(T)])
    np.testing.assert_allclose(ptr, ref["obj_ptr"][:, k], atol=5e-4, rtol=1e-4)
    assert entries(state.objects[k].policy_state) == entries(st, k)
  assert any(k == "drm" for o in (0, 1) for _, k in entries(st, o))
  # a second pass from the prompt frame restarts the memory and gives the same masks
  again = {f: m for f, _, m in pred.propagate_in_video(state)}
  np.testing.assert_allclose(again[T - 1], got[T - 1], atol=1e-5)
  # a correction on a tracked frame is refused before anything is stored on the object
  o = state.objects[0]
  before = (dict(o.point_inputs), dict(o.mask_inputs), o.temp["cond"].copy(), o.policy_state)
  with pytest.raises(ValueError, match="dam4sam.*cannot correct frame 3.*corrections on tracked"):
    pred.add_new_points_or_box(state, 3, 10, points=[[40.0, 20.0]], labels=[0])
  with pytest.raises(ValueError, match="dam4sam.*cannot correct frame 0"):
    pred.add_new_mask(state, 0, 10, masks[1])
  assert o.point_inputs == before[0] and 3 not in o.point_inputs
  assert sorted(o.mask_inputs) == sorted(before[1]) == [0]
  np.testing.assert_array_equal(o.mask_inputs[0], before[1][0])
  assert not o.temp["cond"] and not o.temp["non_cond"]
  assert o.policy_state is before[3]
  with pytest.raises(ValueError, match="prompt frame 0: frame 7 does not come after it"):
    next(pred.propagate_in_video(state, start_frame_idx=T - 1, reverse=True))
  assert list(pred.propagate_in_video(state, reverse=True)) == []  # nothing before frame 0


def test_predictor_equals_scan_from_a_middle_frame(tiny):
  """Prompts on frame K = 3: propagating forward, then in reverse (each pass from the prompt
  frame's state, not continuing the other) == track_video(prompt_frame=K, reverse=...), the
  lists in clip frames from K alike; start_frame_idx=K with max_frame_num_to_track gives the
  first frames of a pass, and continuing from where it stopped the rest. Then the refusals
  of prompts on a second frame and of passes that do not start at K."""
  model, params, frames, masks = tiny
  k0 = 3
  pred = VideoPredictor(model, params, "mask", encode_chunk=2, memory=TINY)
  state = pred.init_state(frames, video_hw=HW)
  for k in (0, 1):
    pred.add_new_mask(state, k0, 10 + k, masks[k])
  refs, drm = {}, False
  for reverse in (False, True):
    got = {f: m for f, _, m in pred.propagate_in_video(state, reverse=reverse)}
    ref = refs[reverse] = _track(tiny, masks, prompt_frame=k0, reverse=reverse)
    idx = [int(f) for f in ref["frame_idx"]]
    assert list(got) == idx == (list(range(k0, -1, -1)) if reverse else list(range(k0, T)))
    np.testing.assert_allclose(
      np.stack([got[f] for f in idx]), ref["video_res_mask_logits"], atol=5e-4, rtol=1e-4
    )
    st = ref["bank"].policy_state
    for k in (0, 1):
      ptr = np.stack([pred.frame_output(state, f, 10 + k)["obj_ptr"] for f in idx])
      np.testing.assert_allclose(ptr, ref["obj_ptr"][:, k], atol=5e-4, rtol=1e-4)
      mine = state.objects[k].policy_state
      assert entries(mine) == entries(st, k)
      np.testing.assert_array_equal(np.asarray(mine.ptr_list[0]), np.asarray(st.ptr_list[k]))
      assert int(mine.origin[0]) == k0 and int(mine.step[0]) == (-1 if reverse else 1)
      drm = drm or any(kd == "drm" for _, kd in entries(st, k))
  assert drm
  # forward again from K in two pieces: 2 frames after K, then on from the frame after them
  part = {f: m for f, _, m in pred.propagate_in_video(state, k0, max_frame_num_to_track=2)}
  rest = {f: m for f, _, m in pred.propagate_in_video(state, k0 + 3)}
  assert list(part) == [3, 4, 5] and list(rest) == [6, 7]
  part.update(rest)
  np.testing.assert_allclose(
    np.stack([part[f] for f in range(k0, T)]),
    refs[False]["video_res_mask_logits"],
    atol=5e-4,
    rtol=1e-4,
  )
  # a prompt on a second frame (a new object too) is refused before anything is stored
  with pytest.raises(ValueError, match="dam4sam.*one prompted frame.*frame 3.*frame 5"):
    pred.add_new_mask(state, 5, 12, masks[0])
  assert state.obj_ids == [10, 11] and all(sorted(o.mask_inputs) == [3] for o in state.objects)
  # a pass that does not start at K, or does not follow the last frame of one in its direction
  for start, reverse in ((1, False), (6, True)):
    way = "reverse" if reverse else "forward"
    with pytest.raises(ValueError, match=f"frame 3: frame {start} does not come after it in {way}"):
      next(pred.propagate_in_video(state, start_frame_idx=start, reverse=reverse))
  for start, reverse in ((6, False), (1, True)):
    way = "reverse" if reverse else "forward"
    with pytest.raises(ValueError, match=rf"frame {start} \({way}\) cannot follow frame 7"):
      next(pred.propagate_in_video(state, start_frame_idx=start, reverse=reverse))


def test_a_list_larger_than_the_ring_is_refused_before_any_frame(tmp_path, capsys):
  """The defaults (3 + 3 entries) need num_maskmem 7; on the tiny model (2 ring slots) every
  path refuses at once with the fix, track.py before it reads the video."""
  model = build_model("tiny")
  params = random_params(model, 0)
  ckpt = save_model(tmp_path / "ckpt", params, "tiny")
  argv = ["--checkpoint", str(ckpt), "--video", "nowhere", "--task", "mask", "--prompt", "x"]
  assert track_cli.main([*argv, "--out", str(tmp_path / "o"), "--memory", "dam4sam"]) == 2
  err = capsys.readouterr().err
  assert "do not fit this model's 2 ring slots" in err and "max_ram=1" in err
  assert "nowhere" not in err  # refused before the video was opened
  with pytest.raises(ValueError, match="2 ring slots"):
    VideoPredictor(model, params, "mask", memory="dam4sam")
  frames = np.zeros((3, 64, 64, 3), np.float32)
  masks = np.ones((1, 64, 64), bool)
  with pytest.raises(ValueError, match="2 ring slots"):
    track_video(model, params, frames, (64, 64), "mask", {"mask": masks}, memory="dam4sam")
  VideoPredictor(model, params, "mask", memory=DAM4SAM(max_ram=1, max_drm=1))  # fits
