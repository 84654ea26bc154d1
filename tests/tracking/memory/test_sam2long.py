"""The SAM2Long memory policy: its choice, reorder and key scaling on constructed inputs (hand-
computed expectations, the original's list logic transcribed), its reductions to known trackers,
object independence, and the predictor (whole-video) == the scan tracker."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_with_objects_present

from sam2pp_jax.tracking.memory import POLICIES, SAM2, SAM2Long, get_policy
from sam2pp_jax.tracking.memory.policy import Candidates
from sam2pp_jax.tracking.memory_bank import MemoryBank
from sam2pp_jax.tracking.predictor import VideoPredictor
from sam2pp_jax.tracking.propagate import track_video
from sam2pp_jax.tracking.step import StepOut

HW = (48, 48)
T = 7


def test_registered_and_options_coerced():
  assert POLICIES["sam2long"] is SAM2Long
  p = get_policy("sam2long", num_pathway="2", iou_thre="0.3", uncertainty="1", scale_keys="false")
  assert p == SAM2Long(num_pathway=2, iou_thre=0.3, uncertainty=1.0, scale_keys=False)
  d = SAM2Long()  # vos_inference()'s / the README's defaults, not argparse's (3, 0.3, 1)
  assert (d.num_pathway, d.iou_thre, d.uncertainty) == (3, 0.1, 2.0)
  assert d.rows_per_object == 3
  with pytest.raises(ValueError, match="num_pathway"):
    get_policy("sam2long", num_pathway="0")
  with pytest.raises(ValueError, match="sort_impl"):
    SAM2Long(sort_impl="fast")


# -- choose on constructed scores -----------------------------------------------------------
def _step_out(ious, obj):
  """A StepOut of N rows whose candidate j of row n carries the value 10 n + j."""
  ious = np.asarray(ious, np.float32)
  n, m = ious.shape
  v = (10 * np.arange(n)[:, None] + np.arange(m)[None]).astype(np.float32)  # [N,M]
  cands = Candidates(
    low_res=jnp.asarray(np.broadcast_to(v[:, :, None, None], (n, m, 2, 2))),
    high_res=jnp.asarray(np.broadcast_to(v[:, :, None, None], (n, m, 4, 4))),
    obj_ptr=jnp.asarray(np.broadcast_to(v[:, :, None], (n, m, 3))),
    boxes=None,
    valid=jnp.ones((m,), bool),
  )
  own = jnp.asarray(np.full((n, 2, 2), -1.0, np.float32))  # the decoder's own choice
  return StepOut(
    low_res=own,
    high_res=jnp.full((n, 4, 4), -1.0),
    score=jnp.asarray(obj, jnp.float32),
    obj_ptr=jnp.full((n, 3), -1.0),
    box=None,
    multi_high_res=cands.high_res,
    ious=jnp.asarray(ious),
    multi_boxes=None,
    candidate_valid=cands.valid,
    pix=jnp.zeros((n, 1)),
    candidates=cands,
  )


# object 0 (uncertain, max |obj| 1.5 <= 2): pathway 2's two best IoUs round alike (0.99)
IOU0 = [[0.9, 0.5, 0.2], [0.95, 0.3, 0.1], [0.991, 0.989, 0.5]]
OBJ0 = [1.0, -0.5, 1.5]
ACC0 = [0.0, -0.1, -0.05]
# object 1 (uncertain): every signed IoU rounds to 0.50, so the walk keeps one pair and the
# unrepresented pathways 0 and 2 add their best pairs, in id order
IOU1 = [[0.5, 0.5, 0.5]] * 3
OBJ1 = [1.0, 1.0, 1.0]
ACC1 = [-0.3, -0.1, -0.2]


def _choose(policy, ious, obj, acc, t=5):
  out = _step_out(ious, obj)
  st = policy.init_state(out.score.shape[0])
  st = st.replace(acc=jnp.asarray(acc, jnp.float32), head=jnp.arange(len(acc), dtype=jnp.int32))
  return policy.choose(st, out, out.candidates, t, True)


def test_choose_uncertain_walk_and_fill_up():
  """Two objects (object-major rows): the diversity walk skips a repeated rounded IoU, and
  the fill-up adds the unrepresented pathways' best pairs; rows, state and metadata follow."""
  policy = SAM2Long(num_pathway=3)
  out, st, meta = _choose(policy, IOU0 + IOU1, OBJ0 + OBJ1, ACC0 + ACC1)
  # object 0 by score: (2,0) .99, (2,1) .99 skipped, (0,0) .90, (1,0) -.95 (object logit < 0)
  parent = [2, 0, 1, 1, 0, 2]
  cand = [0, 0, 0, 0, 0, 0]
  np.testing.assert_array_equal(st.parent, parent)
  rows = np.asarray([0, 0, 0, 3, 3, 3]) + parent
  np.testing.assert_array_equal(out.low_res[:, 0, 0], 10 * rows + np.asarray(cand))
  np.testing.assert_array_equal(out.obj_ptr[:, 0], 10 * rows + np.asarray(cand))
  np.testing.assert_array_equal(st.head, rows)  # the state follows the parent too
  ious = np.asarray(IOU0 + IOU1)
  acc = np.asarray(ACC0 + ACC1)
  want = [acc[r] + math.log(ious[r, c] + 1e-5) for r, c in zip(rows, cand)]
  np.testing.assert_allclose(st.acc, want, rtol=1e-6)
  np.testing.assert_allclose(meta["iou"], ious[rows, cand], rtol=1e-6)
  np.testing.assert_array_equal(meta["score"], np.asarray(OBJ0 + OBJ1)[rows])


def test_choose_confident_top_k():
  """A confident frame (max |obj| > uncertainty) keeps the top K pairs by score, even two of
  one pathway with the same rounded IoU."""
  policy = SAM2Long(num_pathway=3)
  out, st, _ = _choose(policy, IOU0, [5.0, -0.5, 1.5], ACC0)
  np.testing.assert_array_equal(st.parent, [2, 2, 0])
  np.testing.assert_array_equal(out.low_res[:, 0, 0], [20, 21, 0])
  # the same scores below the uncertainty threshold: the walk of the test above
  _, st2, _ = _choose(SAM2Long(num_pathway=3, uncertainty=5.0), IOU0, [5.0, -0.5, 1.5], ACC0)
  np.testing.assert_array_equal(st2.parent, [2, 0, 1])


def test_first_tracked_frame_keeps_pathway_zero_own_choice():
  """Offsets 0 and 1 (prompt and first tracked frame): every pathway takes pathway 0's own
  decoder output and the scores restart at 0."""
  for t in (0, 1):
    out, st, meta = _choose(SAM2Long(num_pathway=3), IOU0, OBJ0, ACC0, t=t)
    np.testing.assert_array_equal(st.parent, [0, 0, 0])
    np.testing.assert_array_equal(st.acc, [0, 0, 0])
    np.testing.assert_array_equal(out.low_res, -np.ones((3, 2, 2)))
    np.testing.assert_allclose(meta["iou"], [0.9] * 3)


def _bank(n, r=6, p=15, cond=True):
  bank = MemoryBank.empty(n, 1, 2, 4, num_maskmem=r + 1, max_obj_ptrs=p + 1, cond_capacity=2)
  if cond:
    bank = bank.write_cond(
      0, 0, jnp.full((n, 1, 1, 2), 5.0), jnp.zeros((1, 1, 2)), jnp.ones((n, 4))
    )
  return bank


def test_reorder_rows_follow_parent():
  policy = SAM2Long(num_pathway=3)
  bank = _bank(6)
  fill = jnp.arange(6, dtype=jnp.float32)
  bank = bank.replace(
    mem_feats=bank.mem_feats + fill[:, None, None, None],
    ptr=bank.ptr + fill[:, None, None],
    mem_frame=jnp.broadcast_to(jnp.arange(6)[:, None], (6, 6)).astype(jnp.int32),
    policy_state=policy.init_state(6),
  )
  st = policy.init_state(6).replace(parent=jnp.asarray([2, 0, 1, 1, 1, 0], jnp.int32))
  got = policy.reorder(bank, st, None)
  rows = np.asarray([2, 0, 1, 4, 4, 3])
  np.testing.assert_array_equal(got.mem_feats[:, 0, 0, 0], rows)
  np.testing.assert_array_equal(got.ptr[:, 0, 0], rows)
  np.testing.assert_array_equal(got.mem_frame[:, 0], rows)
  np.testing.assert_array_equal(got.cond_frame, bank.cond_frame)  # shared by every row


def test_resolve_backtracks_the_best_lineage():
  """Host rows [T,B*K,...] -> the rows along pathway 0's ancestry, frame by frame."""
  policy = SAM2Long(num_pathway=3)
  # object 0: the last frame's pathway 0 <- pathway 2 (t=2) <- pathway 1 (t=1) <- 0 (t=0)
  parents = np.asarray([[0, 1, 2], [0, 0, 0], [1, 2, 1], [2, 0, 1]])
  parents = np.concatenate([parents, np.zeros_like(parents)], axis=1)  # object 1: all 0
  value = np.arange(4)[:, None] * 100 + np.arange(6)[None]  # frame * 100 + row
  rows, extras = policy.resolve(
    {"low_res": value, "sam2long_parent": parents, "sam2long_score": np.zeros((4, 6))}
  )
  np.testing.assert_array_equal(extras["pathway"][:, 0], [0, 1, 2, 0])
  np.testing.assert_array_equal(rows["low_res"][:, 0], [0, 101, 202, 300])
  np.testing.assert_array_equal(rows["low_res"][:, 1], [3, 103, 203, 303])
  assert set(rows) == {"low_res"} and extras["pathway_parents"].shape == (4, 2, 3)


# -- the gated read and key scaling vs the original's list logic ---------------------------
def _original_read(t, ious, scores, thre, r=6, max_ptrs=16):
  """SB:556-631 for frame t (prompt on 0): memory frames (oldest -> newest), their key
  factors, and pointers (newest -> oldest) with factors; MA:76-102's formula."""
  valid = []
  if t > 1:
    for i in range(t - 1, 0, -1):
      if ious[i] > thre and scores[i] > 0:
        valid.insert(0, i)
      if len(valid) >= max_ptrs - 1:
        break
    if t - 1 not in valid:
      valid.append(t - 1)
  mem = valid[-r:]
  ptrs = [valid[-d] for d in range(1, max_ptrs) if d < len(valid)]

  def scale(s):
    s = np.asarray(s, np.float32)
    lin = np.linspace(0.95, 1.05, len(s)).astype(np.float32) if len(s) > 1 else [0.95]
    out = np.zeros(len(s), np.float32)
    out[np.argsort(s, kind="stable")] = lin
    return out

  fs = scale([10.0] + [scores[i] for i in mem])
  ps = scale([10.0] + [scores[i] for i in ptrs])
  if len(mem) == 0:  # one frame (the prompt's): nothing is scaled
    fs, ps = np.ones_like(fs), np.ones_like(ps)
  return mem, fs, ptrs, ps


def test_gated_read_and_key_scales_match_original():
  """Ring writes through the policy hooks, then its view, against the original's search (15
  eligible frames at most, always t - 1, the oldest listed pointer unused) and key formula."""
  rng = np.random.default_rng(1)
  n_frames = 50
  ious = rng.uniform(0.0, 1.0, n_frames).astype(np.float32)
  scores = rng.uniform(-1.0, 3.0, n_frames).astype(np.float32)
  thre = 0.4
  policy = SAM2Long(num_pathway=1, iou_thre=thre, sort_impl="stable")
  bank = _bank(1).replace(policy_state=policy.init_state(1))
  seen_lone_pointer = seen_full = False
  for t in range(1, n_frames):
    view = policy.view(bank, t)
    mem, fs, ptrs, ps = _original_read(t, ious, scores, thre)
    ok = np.asarray(view.mem_ok[0])
    frames = np.asarray(bank.mem_frame[0])
    assert sorted(frames[ok]) == mem
    rank = {f: len(mem) - 1 - i for i, f in enumerate(mem)}
    for s in np.flatnonzero(ok):
      assert int(view.mem_tpos[0, s]) == rank[int(frames[s])]
      np.testing.assert_allclose(view.frame_key_scale[0, 2 + s], fs[1 + mem.index(frames[s])])
    np.testing.assert_allclose(view.frame_key_scale[0, 0], fs[0])  # the prompt frame
    pok = np.asarray(view.ptr_ok[0])
    assert int(pok.sum()) == len(ptrs)
    rel = np.asarray(view.ptr_rel[0])
    assert sorted(rel[pok].astype(int)) == list(range(1, len(ptrs) + 1))
    for s in np.flatnonzero(pok):
      np.testing.assert_allclose(view.ptr_key_scale[0, 2 + s], ps[int(rel[s])], rtol=1e-6)
    np.testing.assert_allclose(view.ptr_key_scale[0, 0], ps[0], rtol=1e-6)
    seen_lone_pointer |= len(mem) >= 1 and not ptrs
    seen_full |= len(ptrs) == 15
    # frame t's memory: the policy's slots and metadata
    meta = {"iou": jnp.asarray([ious[t]]), "score": jnp.asarray([scores[t]])}
    slot, st = policy.ring_slot(bank.policy_state, bank, t, meta)
    bank = bank.write(
      t,
      jnp.full((1, 1, 1, 2), float(t)),
      jnp.zeros((1, 1, 2)),
      jnp.full((1, 4), float(t)),
      slot=slot,
      meta=meta,
      ptr_slot=policy.ptr_slot(st),
    ).replace(policy_state=st)
  assert seen_lone_pointer and seen_full


def test_key_scale_ones_is_no_scale():
  """Memory attention with key factors of 1 == without them; other factors change it."""
  model, params = tiny_with_objects_present()
  c = model.config
  rng = np.random.default_rng(0)
  d, m = int(c.hidden_dim), int(c.mem_dim)
  vision = jnp.asarray(rng.standard_normal((1, 4, 4, d)), jnp.float32)
  mem = jnp.asarray(rng.standard_normal((1, 2 * 16 + d // m, m)), jnp.float32)
  call = lambda **kw: model.apply(
    {"params": params},
    vision,
    vision,
    mem,
    mem,
    jnp.ones(mem.shape[:2], bool),
    task="mask",
    num_obj_ptr_tokens=d // m,
    method="condition_on_memory",
    **kw,
  )
  plain = np.asarray(call())
  np.testing.assert_array_equal(call(key_scale=jnp.ones(mem.shape[:2])), plain)
  assert not np.allclose(call(key_scale=jnp.full(mem.shape[:2], 1.05)), plain, atol=1e-6)


# -- whole-video tracking ------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
  model, params = tiny_with_objects_present()
  s = int(model.config.image_size)
  frames = np.random.default_rng(0).standard_normal((T, s, s, 3)).astype(np.float32)
  masks = np.zeros((2,) + HW, bool)
  masks[0, 5:20, 8:30] = True
  masks[1, 25:44, 20:40] = True
  return model, params, frames, masks


def _track(setup, memory, masks=None):
  model, params, frames, m = setup
  return track_video(
    model,
    params,
    frames,
    HW,
    "mask",
    {"mask": m if masks is None else masks},
    chunk=3,
    memory=memory,
  )


def test_one_pathway_admitting_every_frame_is_sam2(setup):
  """num_pathway=1, every frame eligible, unscaled keys, every listed pointer: SAM 2 (the
  argmax-IoU candidate, the newest R memories and the newest pointers by distance)."""
  policy = SAM2Long(num_pathway=1, iou_thre=-math.inf, scale_keys=False, drop_oldest_pointer=False)
  got = _track(setup, policy)
  ref = _track(setup, SAM2())
  assert np.all(ref["object_score_logits"] > 0)  # so every frame passes the memory test
  np.testing.assert_allclose(got["low_res_mask_logits"], ref["low_res_mask_logits"], atol=2e-4)
  np.testing.assert_allclose(got["obj_ptr"], ref["obj_ptr"], atol=2e-4)
  assert got["pathway_parents"].shape == (T, 2, 1)


@pytest.mark.slow  # ~20 s of tracking; CI runs it (make test-slow)
def test_always_confident_pathways_stay_one(setup):
  """uncertainty < 0 (every frame confident): the K pathways, identical after the first
  tracked frame, keep (p, best) for every p, so the result is one pathway's."""
  many = _track(setup, SAM2Long(num_pathway=3, uncertainty=-1.0))
  one = _track(setup, SAM2Long(num_pathway=1, uncertainty=-1.0))
  np.testing.assert_allclose(many["low_res_mask_logits"], one["low_res_mask_logits"], atol=2e-4)
  assert many["low_res_mask_logits"].shape == one["low_res_mask_logits"].shape


@pytest.mark.slow  # ~20 s of tracking; CI runs it (make test-slow)
def test_objects_are_independent(setup):
  """Per-object pathways: two objects tracked together == each alone (uncertain frames, so the
  pathways diverge and the backtrack matters)."""
  policy = SAM2Long(num_pathway=2, uncertainty=10.0)
  both = _track(setup, policy)
  assert both["low_res_mask_logits"].shape[:2] == (T, 2)
  assert both["pathway_scores"].shape == (T, 2, 2)
  for o in range(2):
    alone = _track(setup, policy, setup[3][o : o + 1])
    np.testing.assert_allclose(
      both["low_res_mask_logits"][:, o], alone["low_res_mask_logits"][:, 0], atol=2e-4
    )
    np.testing.assert_array_equal(both["pathway_parents"][:, o], alone["pathway_parents"][:, 0])
    np.testing.assert_array_equal(both["pathway"][:, o], alone["pathway"][:, 0])


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_predictor_equals_scan(setup):
  """VideoPredictor(memory=sam2long).propagate_in_video == track_video; corrections on tracked
  frames and prompts on a second frame are refused by name."""
  model, params, frames, masks = setup
  policy = SAM2Long(num_pathway=2, uncertainty=10.0)
  pred = VideoPredictor(model, params, "mask", encode_chunk=3, memory=policy)
  state = pred.init_state(frames, video_hw=HW)
  for k in range(2):
    pred.add_new_mask(state, 0, 10 + k, masks[k])
  got = {f: m for f, _, m in pred.propagate_in_video(state)}
  assert sorted(got) == list(range(T))
  ref = track_video(model, params, frames, HW, "mask", {"mask": masks}, chunk=3, memory=policy)
  np.testing.assert_allclose(
    np.stack([got[f] for f in range(T)]), ref["video_res_mask_logits"], atol=2e-4
  )
  ptr = np.stack([pred.frame_output(state, f, 11)["obj_ptr"] for f in range(T)])
  np.testing.assert_allclose(ptr, ref["obj_ptr"][:, 1], atol=2e-4)
  # a correction on a tracked frame is refused before anything is stored on the object
  o = state.objects[0]
  before = (dict(o.point_inputs), dict(o.mask_inputs))
  with pytest.raises(ValueError, match="sam2long.*cannot correct frame 3"):
    pred.add_new_mask(state, 3, 10, masks[0])
  with pytest.raises(ValueError, match="sam2long.*cannot correct frame 4"):
    pred.add_new_points_or_box(state, 4, 10, points=[[40.0, 20.0]], labels=[1])
  assert o.point_inputs == before[0] == {}
  assert sorted(o.mask_inputs) == sorted(before[1]) == [0] and o.mask_inputs[0] is before[1][0]
  assert not o.temp["cond"] and not o.temp["non_cond"]
  pred.add_new_mask(state, 2, 12, masks[1])  # a new object prompted on another frame
  with pytest.raises(ValueError, match="sam2long.*one prompted frame"):
    next(pred.propagate_in_video(state))
