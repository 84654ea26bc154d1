"""Benchmark-only: record per-frame decisions of the ORIGINAL trackers as test fixtures.

Why: tests/tracking/memory/test_originals.py checks that our memory policies reproduce what each
original repository's own predictor decides, frame by frame, with the same weights and video.

Not part of the package, never imported by it; needs torch (CPU), hydra-core, omegaconf, iopath
and the originals' git mirrors. Nothing of the originals is copied: each one is extracted from
its mirror with `git archive HEAD <paths>` into --work, put first on sys.path, and driven
through its public predictor API; values are recorded by wrapping methods on the live objects.
Every original vendors a package named `sam2`, so one process drives one original (call this
script once per --policy).

Common to every policy
  * weights: SAM 2.1 Hiera-T structure (configs/sam2.1/sam2.1_hiera_t.yaml of the original;
    SAMURAI: configs/samurai/sam2.1_hiera_t.yaml) at image_size 256 (hydra overrides below,
    memory-attention RoPE feat_sizes [16,16]); every tensor from shared/parity/det_init.py
    (`det_state_dict(manifest "sam2.1_t", base_seed)`), loaded with a strict load_state_dict.
  * video: `sam2pp_jax.data.synthetic.generate_video(video_seed, 240x320, 2 objects)`; each
    frame Gaussian-blurred (sigma 1.5), area-resized to 256x256 and quantised to multiples of 4
    (so the shipped frames compress to ~0.4 MB). These uint8 frames ARE the model input:
    patch 1 replaces the original's frame loader. Prompt: object 1's mask on frame 0 at 240x320
    (`add_new_mask`), then `propagate_in_video` forward over every frame.
  * apply_postprocessing=False (no hole filling with the CUDA-only _C extension; the other
    post-processing flags only act on click prompts).

Runtime patches (never edits of the originals' files)
  1. `<sam2>.sam2_video_predictor.load_video_frames` -> returns the fixture's frames as
     float32 ((u8 / 255 - mean) / std, computed in float32 numpy exactly as our test does),
     with the video size 240x320.
  2. `torch.Tensor.cuda` / `torch.nn.Module.cuda` -> identity (DAM4SAM's and d4sm's `.cuda()`);
     predictors are built with device="cpu"; `torch.autocast("cuda", ...)` is left as is (a
     no-op warning on a CPU-only torch).
  3. Recording wrappers on the model instance: `_forward_sam_heads` (candidate IoUs, object score,
     which candidate was kept: the candidate equal to the returned mask), the memory attention's
     forward pre-hook (which stored frames' spatial memories and pointers are in its memory
     tokens, matched by exact equality with the outputs in the inference state), and the
     predictor's `_run_single_frame_inference` (the frame being processed).
  4. Stand-in modules for torchvision (absent; only unused helpers import it) and loguru
     (SAMURAI's logger -> the logging module).
  SAMURAI: after each multimask step, the model's `kf_mean`, `kf_covariance`, `stable_frames`
  and the Kalman IoUs of the candidates (a wrapper on `kf.compute_iou`).
  5. SAM2Long: `MemoryAttentionLayer._forward_ca` recompiled from its own source with the
     literal 4096 (= (1024/16)^2 tokens per memory frame, its only size assumption) set to
     (256/16)^2.
     Options go into the inference state as vos_inference() does (its function defaults are
     num_pathway 3, iou_thre 0.1, uncertainty 2; the argparse defaults 3, 0.3, 1). The fixture
     uses 3 / 0.6 / 0.4 so that confident frames (top-k, frames 2-6) and uncertain ones (the
     diversity walk, 7-11) both occur and pathway 2's weak frames leave its memory list.
     Recorded per frame and pathway: candidate IoUs and object score (`track_step`), memory
     and pointer frames read ("frame:slot", slot = pathway at that frame), the object scores
     the keys are ranked by; per kept pathway: (parent, candidate), IoU, score, cumulative
     score; the lineage and the backtracked path. The parent on frame 2 is read from the
     lineage, which cannot tell the (identical) pathways apart there.
  6. d4sm (alanlukezic/d4sm, the multi-object DAM4SAM with fixed capacities that our policy
     follows; driven instead of jovanavidenovic/DAM4SAM): `build_sam` of tracking_wrapper_mot
     builds the T config at 256 without a checkpoint and strict-loads the det weights; the
     tracker's `_prepare_image` returns the fixture frame; its capacities (update_delta,
     max_ram, max_drm) are set as attributes (fixture: 1 / 3 / 3, so the full list drops its
     oldest RAM entry from frame 7); the VOT toolkit's box overlap (numba, requests, ...)
     is a stand-in that raises if called: the det weights' predicted IoUs (<= 0.69) never
     pass the hard-coded 0.8, so no DRM admission happens and the box test is never reached.
     fill_holes_in_mask_scores falls back to no filling (no CUDA _C), as in our policy.

Output: <out>/<policy>.npz + <policy>.json (per-frame decisions, options, versions), and the
shared <out>/video.npz (frames_u8 [T,256,256,3], prompt_mask [240,320]) and
<out>/manifest_sam2.1_t.json (the SAM 2.1-T state-dict keys and shapes the weights are made from).

    .venv/bin/python bench/memory_originals.py --policy sam2 --out tests/tracking/memory/originals
    (sam2 / samurai / sam2long / dam4sam: --seed 4; sam2long: --opt uncertainty=0.4
    --opt iou_thre=0.6)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIRRORS = "/work/.mirror"
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "parity")
IMAGE_SIZE = 256
VIDEO_HW = (240, 320)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# policy -> (mirror, paths to extract, sys.path root inside the extraction, hydra config name)
ORIGINALS = {
  "sam2": ("MCG-NJU+SAM2-Plus", ["sam2"], "", "configs/sam2.1/sam2.1_hiera_t.yaml"),
  "samurai": ("yangchris11+samurai", ["sam2/sam2"], "sam2", "configs/samurai/sam2.1_hiera_t.yaml"),
  "sam2long": ("Mark12Ding+SAM2Long", ["sam2"], "", "configs/sam2.1/sam2.1_hiera_t.yaml"),
  "dam4sam": (
    "alanlukezic+d4sm",
    ["sam2", "tracking_wrapper_mot.py"],
    "",
    "configs/sam2.1/sam2.1_hiera_t.yaml",
  ),
}
SMALL_OVERRIDES = [
  f"++model.image_size={IMAGE_SIZE}",
  "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
  "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
]
# Default options of each original in its fixture (chosen so that the rules fire, see json).
DEFAULT_OPTIONS = {
  "sam2": {},
  "sam2long": {"num_pathway": 3, "iou_thre": 0.1, "uncertainty": 2.0},
  # d4sm's capacities are tracker attributes (update_delta 5, max_ram 3, max_drm 3); 1 makes
  # every visible frame a new RAM entry, so the full list drops its oldest RAM within 12 frames
  "dam4sam": {"update_delta": 1, "max_ram": 3, "max_drm": 3},
  "samurai": {
    "stable_frames_threshold": 3,
    "stable_ious_threshold": 0.3,
    "min_obj_score_logits": -1.0,
    "kf_score_weight": 0.25,
    "memory_bank_iou_threshold": 0.66,
    "memory_bank_obj_score_threshold": 0.0,
    "memory_bank_kf_score_threshold": 0.0,
  },
}


def fail(msg: str) -> None:
  print(f"memory_originals: {msg}", file=sys.stderr)
  sys.exit(2)


# --------------------------------------------------------------------------------------------
# inputs


def make_video(video_seed: int, frames: int):
  """(frames_u8 [T,S,S,3], prompt_mask [H,W] bool): the shared synthetic clip."""
  import cv2
  import numpy as np

  from sam2pp_jax.data.synthetic import generate_video

  v = generate_video(
    video_seed, num_frames=frames, height=VIDEO_HW[0], width=VIDEO_HW[1], num_objects=(2, 2)
  )
  s = IMAGE_SIZE
  f = np.stack(
    [
      cv2.resize(cv2.GaussianBlur(x, (0, 0), 1.5), (s, s), interpolation=cv2.INTER_AREA)
      for x in v["frames"]
    ]
  )
  return (f // 4) * 4, v["masks"][0] == 1


def normalise(frames_u8):
  """float32 [T,S,S,3] model input (the same arithmetic as the test)."""
  import numpy as np

  x = frames_u8.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def det_weights(base_seed: int) -> dict:
  sys.path.insert(0, SHARED)
  try:
    import det_init
  finally:
    sys.path.remove(SHARED)
  man = json.load(open(os.path.join(SHARED, "manifest_sam2.json")))["models"]["sam2.1_t"]
  return det_init.det_state_dict({k["key"]: k["shape"] for k in man["keys"]}, base_seed)


def checkout(policy: str, work: str) -> tuple[str, str]:
  """(sys.path root, commit) of the original, extracted from its mirror on first use."""
  mirror, paths, sub, _ = ORIGINALS[policy]
  git_dir = os.path.join(MIRRORS, mirror, "repo")
  if not os.path.isdir(git_dir):
    fail(f"no git mirror of the original at {git_dir} (needed for --policy {policy})")
  commit = subprocess.check_output(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], text=True)
  dest = os.path.join(work, mirror)
  if not os.path.isdir(dest):
    os.makedirs(dest + ".tmp", exist_ok=True)
    arch = subprocess.run(
      ["git", "--git-dir", git_dir, "archive", "HEAD", *paths], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", dest + ".tmp"], input=arch.stdout, check=True)
    os.rename(dest + ".tmp", dest)
  return os.path.join(dest, sub), commit.strip()


# --------------------------------------------------------------------------------------------
# patches and recorders


def patch_cpu(torch) -> None:
  """Patch 2: `.cuda()` is the identity (CPU-only run)."""
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self


def stub_modules() -> None:
  """Patch 4: stand-ins for imports the recorded paths never use (torchvision: only helpers
  this path does not call; loguru: SAMURAI's logger, replaced by the logging module)."""
  import logging

  try:
    import torchvision  # noqa: F401
  except ImportError:
    sys.modules["torchvision"] = types.ModuleType("torchvision")
  try:
    import loguru  # noqa: F401
  except ImportError:
    lg = types.ModuleType("loguru")
    lg.logger = logging.getLogger("loguru")
    sys.modules["loguru"] = lg


def patch_sam2long_tokens() -> None:
  """Patch 5 (SAM2Long): its memory attention splits the keys into memory frames with the
  literal 4096 = (1024 / 16)^2 tokens per frame; the method is recompiled from ITS OWN source
  with that literal (both occurrences) replaced by (IMAGE_SIZE / 16)^2, nothing else changed."""
  import inspect
  import textwrap

  from sam2.modeling import memory_attention as ma

  src = textwrap.dedent(inspect.getsource(ma.MemoryAttentionLayer._forward_ca))
  if src.count("4096") != 2:
    fail("SAM2Long's _forward_ca no longer has exactly two literals 4096; patch 5 is stale")
  ns: dict = {}
  tokens = str((IMAGE_SIZE // 16) ** 2)
  exec(compile(src.replace("4096", tokens), ma.__file__, "exec"), vars(ma), ns)
  ma.MemoryAttentionLayer._forward_ca = ns["_forward_ca"]


class Recorder:
  """Per-frame records filled by the wrappers (patch 3)."""

  def __init__(self, torch):
    self.torch = torch
    self.state = None
    self.frame = None
    self.rec: dict[int, dict] = {}

  def cur(self) -> dict:
    return self.rec.setdefault(int(self.frame), {})

  def stored(self):
    """(label, memory [B,C,H,W], pointer [B,C]) of every stored output in the inference state;
    label = frame, or "frame:slot" for SAM2Long's per-pathway stacks (last axis)."""
    st = self.state or {}
    dicts = [st.get("output_dict")] + list(st.get("output_dict_per_obj", {}).values())
    for d in dicts:
      if not d:
        continue
      for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
        for f, out in d.get(kind, {}).items():
          if not isinstance(out, dict) or out.get("maskmem_features") is None:
            continue
          m, p = out["maskmem_features"], out["obj_ptr"]
          if m.dim() == 5:
            for k in range(m.shape[-1]):
              yield f"{f}:{k}", m[..., k], p[..., k] if p.dim() == 3 else p
          else:
            yield int(f), m, p

  def wrap_heads(self, model):
    orig = model._forward_sam_heads
    torch = self.torch

    def heads(*a, **k):
      res = orig(*a, **k)
      low_multi, ious, low = res[0], res[2], res[3]
      r = self.cur()
      if low_multi.shape[1] > 1:  # a tracking step (the prompt frame keeps its mask)
        same = [bool(torch.equal(low_multi[:, i], low[:, 0])) for i in range(low_multi.shape[1])]
        r["ious"] = ious[0].float().numpy().tolist()
        r["chosen"] = same.index(True) if True in same else -1
        r["score"] = float(res[6][0, 0])
        r["low_res"] = low[0, 0].float().numpy()
        self.after_heads(model, r)
      return res

    model._forward_sam_heads = heads

  def after_heads(self, model, r) -> None:
    pass

  def wrap_memory(self, model):
    torch = self.torch
    hw = (IMAGE_SIZE // 16) ** 2

    def pre(mod, args, kwargs):
      mem = kwargs["memory"]  # [N, B, Cm]
      nptr = int(kwargs.get("num_obj_ptr_tokens", 0))
      spatial, ptr = mem[: mem.shape[0] - nptr], mem[mem.shape[0] - nptr :]
      stored = [(f, m[0].flatten(1).t().float(), p[0].float()) for f, m, p in self.stored()]
      frames, ptr_frames = [], []
      for c in range(spatial.shape[0] // hw):
        chunk = spatial[c * hw : (c + 1) * hw, 0]
        hit = [f for f, m, _ in stored if m.shape == chunk.shape and torch.equal(m, chunk.float())]
        frames.append(hit[0] if hit else -1)
      split = 256 // ptr.shape[-1] if nptr else 1
      for c in range(nptr // split):
        tok = ptr[c * split : (c + 1) * split, 0].reshape(-1)
        hit = [f for f, _, p in stored if p.shape == tok.shape and torch.equal(p, tok.float())]
        ptr_frames.append(hit[0] if hit else -1)
      r = self.cur()
      r.setdefault("mem_frames", frames)
      r.setdefault("ptr_frames", ptr_frames)
      r.setdefault("mem_frames_per_call", []).append(frames)
      r.setdefault("ptr_frames_per_call", []).append(ptr_frames)
      fs, ps = kwargs.get("object_frame_scores"), kwargs.get("object_ptr_scores")
      if fs is not None:  # SAM2Long: the object scores its key factors are ranked by
        r.setdefault("key_frame_scores_per_call", []).append([float(x[0]) for x in fs])
        r.setdefault("key_ptr_scores_per_call", []).append([float(x[0]) for x in ps])
      return None

    model.memory_attention.register_forward_pre_hook(pre, with_kwargs=True)

  def wrap_frames(self, pred):
    orig = pred._run_single_frame_inference

    def run(*a, **k):
      self.frame = k["frame_idx"] if "frame_idx" in k else a[2]
      return orig(*a, **k)

    pred._run_single_frame_inference = run
    orig_init = pred.init_state

    def init(*a, **k):
      self.state = orig_init(*a, **k)
      return self.state

    pred.init_state = init


class SamuraiRecorder(Recorder):
  def wrap_heads(self, model):
    super().wrap_heads(model)
    kf = model.kf
    orig = kf.compute_iou

    def compute_iou(*a, **k):
      out = orig(*a, **k)
      self.cur()["kf_ious"] = [float(x) for x in out]
      return out

    kf.compute_iou = compute_iou

  def after_heads(self, model, r) -> None:
    import numpy as np

    r["kf_mean"] = np.asarray(model.kf_mean, np.float64).tolist()
    r["kf_cov"] = np.asarray(model.kf_covariance, np.float64).tolist()
    r["stable"] = int(model.stable_frames)


class Sam2LongRecorder(Recorder):
  """SAM2Long: per pathway the candidates' IoUs and object score (a wrapper on `track_step`),
  per frame the kept pathways' cumulative scores and lineage (the return value of
  `_run_single_frame_inference`); (parent, candidate) of each kept pathway is the unique pair
  whose score reproduces its cumulative score."""

  def __init__(self, torch):
    super().__init__(torch)
    self.prev_acc = None
    self.lineage = None

  def wrap_heads(self, model):
    orig = model.track_step

    def track_step(*a, **k):
      out = orig(*a, **k)
      r = self.cur()
      r.setdefault("pathway_ious", []).append(out["ious"][0].float().numpy().tolist())
      r.setdefault("pathway_scores", []).append(float(out["object_score_logits"][0, 0]))
      return out

    model.track_step = track_step

  def wrap_frames(self, pred):
    import copy
    import math

    super().wrap_frames(pred)
    inner = pred._run_single_frame_inference

    def run(*a, **k):
      out, masks, picks = inner(*a, **k)
      if "acc_score" not in out:  # the prompt frame
        return out, masks, picks
      r = self.cur()
      t = int(self.frame)
      acc = [float(x) for x in out["acc_score"]]
      if self.prev_acc is not None:
        kept = []
        for k_, a_ in enumerate(acc):
          parent = int(picks[k_][t - 1])  # the copied lineage of the parent
          js = [
            j
            for j, v in enumerate(r["pathway_ious"][parent])
            if abs(self.prev_acc[parent] + math.log(v + 1e-5) - a_) < 1e-9
          ]
          kept.append([parent, js[0] if len(js) == 1 else -1])
        r["kept_parent_candidate"] = kept
        r["confident"] = max(abs(x) for x in r["pathway_scores"]) > self.uncertainty
      r["acc_score"] = acc
      r["kept_ious"] = [float(x) for x in out["ious"].reshape(-1)]
      r["kept_scores"] = [float(x) for x in out["object_score_logits"].reshape(-1)]
      self.prev_acc = acc
      self.lineage = copy.deepcopy(picks)
      return out, masks, picks

    pred._run_single_frame_inference = run


class D4smRecorder(Recorder):
  """d4sm (DAM4SAM's multi-object port): the object's memory list (frame, kind) after every
  frame, the pending DRM entry, the admission test's inputs and which test failed; memory and
  pointer reads are matched against the tracker's own per-object lists."""

  def __init__(self, torch):
    super().__init__(torch)
    self.tracker = None

  def wrap_memory(self, model):
    torch = self.torch
    hw = (IMAGE_SIZE // 16) ** 2

    def pre(mod, args, kwargs):
      tr = self.tracker
      mem = kwargs["memory"]
      nptr = int(kwargs.get("num_obj_ptr_tokens", 0))
      spatial, ptr = mem[: mem.shape[0] - nptr], mem[mem.shape[0] - nptr :]
      if spatial.shape[0] % hw or not tr.per_object_outputs_all:
        return None  # the prompt frame's dummy memory token
      stored = [
        (int(e["frame_idx"]), e["maskmem_features"][0].flatten(1).t().float())
        for e in tr.per_object_outputs_all[1]
      ]
      ptrs = [(int(e["frame_idx"]), e["obj_ptr"][0].float()) for e in tr.per_object_obj_ptr[1]]
      frames, ptr_frames = [], []
      for c in range(spatial.shape[0] // hw):
        chunk = spatial[c * hw : (c + 1) * hw, 0].float()
        hit = [f for f, m in stored if m.shape == chunk.shape and torch.equal(m, chunk)]
        frames.append(hit[0] if hit else -1)
      split = 256 // ptr.shape[-1] if nptr else 1
      for c in range(nptr // split):
        tok = ptr[c * split : (c + 1) * split, 0].reshape(-1).float()
        hit = [f for f, p in ptrs if p.shape == tok.shape and torch.equal(p, tok)]
        ptr_frames.append(hit[0] if hit else -1)
      r = self.cur()
      r["mem_frames"], r["ptr_frames"] = frames, ptr_frames
      return None

    model.memory_attention.register_forward_pre_hook(pre, with_kwargs=True)

  def after_track(self, t: int, n_pixels: int) -> None:
    """The tracker's state after frame t (object 1)."""
    tr = self.tracker
    r = self.cur()
    kind = lambda e: "init" if e["is_init"] else ("drm" if e["is_drm"] else "ram")
    r["memory_list"] = [[int(e["frame_idx"]), kind(e)] for e in tr.per_object_outputs_all[1]]
    r["ptr_list"] = [int(e["frame_idx"]) for e in tr.per_object_obj_ptr[1]]
    nxt = tr.add_to_drm_next[1]
    r["drm_next"] = None if nxt is None else int(nxt["frame_idx"])
    r["last_added"] = int(tr.last_added[0])
    r["visible"] = bool(n_pixels > 0)
    r["n_pixels_video_res"] = int(n_pixels)
    sizes = tr.object_sizes[0]
    r["object_sizes_len"] = len(sizes)
    if n_pixels > 0:  # the admission test ran (M:507-531); its inputs, as M computes them
      import numpy as np

      ratio = -1.0
      if len(sizes) > 1:
        ratio = float(sizes[-1] / np.median([x for x in sizes[-300:] if x >= 1][-10:]))
      m_iou = max(r["ious"])
      gap = t - self.prev_last_added > tr.update_delta or self.prev_last_added == -1
      r["admission"] = {
        "max_iou": float(m_iou),
        "size_ratio": ratio,
        "spacing_ok": bool(gap),
        "admitted": r["last_added"] == t,
        "failed": "iou"
        if not m_iou > 0.8
        else "size_ratio"
        if not 0.8 <= ratio <= 1.2
        else "spacing"
        if not gap
        else (None if r["last_added"] == t else "distractor_box"),
      }
    self.prev_last_added = int(tr.last_added[0])


def stub_vot() -> None:
  """Patch 6 (d4sm): the VOT toolkit's `calculate_overlaps` / `Rectangle` (whose import chain
  needs numba, requests, attributee, ...) are stand-ins that RAISE when called: they are only
  reached by the distractor-box test, after the IoU, size and spacing tests passed."""

  def refuse(*a, **k):
    raise RuntimeError("d4sm reached the VOT box overlap: this fixture cannot record it")

  for name in ("vot", "vot.region", "vot.region.raster", "vot.region.shapes"):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["vot.region.raster"].calculate_overlaps = refuse
  sys.modules["vot.region.shapes"].Rectangle = refuse


def run_d4sm(root, sd, options, frames_u8, prompt_mask, torch):
  """d4sm's DAM4SAMMOT on the fixture: initialize(mask of object 1) then track() per frame.

  Patches: `build_sam` (module global of tracking_wrapper_mot) builds the T config at 256
  without a checkpoint (device cpu, its own apply_postprocessing=True overrides kept) and
  strict-loads the det weights; the tracker's `_prepare_image` returns the fixture frame;
  fill_holes_in_mask_scores falls back to no filling (the CUDA _C extension is absent)."""
  import numpy as np

  stub_modules()
  stub_vot()
  sys.path.insert(0, root)
  import sam2  # noqa: F401
  import tracking_wrapper_mot as tw

  assert os.path.abspath(tw.__file__).startswith(os.path.abspath(root)), tw.__file__
  orig_build = tw.build_sam

  def build_sam(config_file, ckpt_path=None, device="cuda", **k):
    extra = list(k.pop("hydra_overrides_extra", [])) + SMALL_OVERRIDES
    model = orig_build(config_file, None, device="cpu", hydra_overrides_extra=extra, **k)
    model.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in sd.items()}, strict=True)
    return model.eval()

  tw.build_sam = build_sam
  tracker = tw.DAM4SAMMOT(model_size="tiny", checkpoint_dir="<det weights>")
  for k, v in options.items():  # the fixed capacities are plain tracker attributes
    if not hasattr(tracker, k):
      fail(f"d4sm's tracker has no attribute {k!r}")
    setattr(tracker, k, v)
  rec = D4smRecorder(torch)
  rec.tracker = tracker
  rec.prev_last_added = -1
  rec.wrap_heads(tracker.sam)
  rec.wrap_memory(tracker.sam)
  x = torch.from_numpy(normalise(frames_u8).transpose(0, 3, 1, 2).copy())
  tracker._prepare_image = lambda image: x[tracker.frame_index]
  image = types.SimpleNamespace(height=VIDEO_HW[0], width=VIDEO_HW[1])
  tracker.n_frames = len(frames_u8)
  masks = [prompt_mask]
  with torch.inference_mode():
    rec.frame = 0
    tracker.initialize(image, [{"mask": prompt_mask}])
    for t in range(1, len(frames_u8)):
      rec.frame = t
      m = tracker.track(image)["masks"][0].astype(bool)
      rec.after_track(t, int(m.sum()))
      masks.append(m)
  return rec, np.stack(masks)


# --------------------------------------------------------------------------------------------
# drivers


def build(policy, root, sd, options, torch):
  """The original's video predictor on CPU with the det weights (strict load)."""
  stub_modules()
  sys.path.insert(0, root)
  import sam2  # noqa: F401  (the original's package: registers its hydra config module)
  from sam2.build_sam import build_sam2_video_predictor

  assert os.path.abspath(sam2.__file__).startswith(os.path.abspath(root)), sam2.__file__
  extra = list(SMALL_OVERRIDES) + [f"++model.{k}={v}" for k, v in options.items()]
  pred = build_sam2_video_predictor(
    ORIGINALS[policy][3],
    ckpt_path=None,
    device="cpu",
    apply_postprocessing=False,
    hydra_overrides_extra=extra,
  )
  missing, unexpected = pred.load_state_dict(
    {k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True
  )
  pred.eval()
  return pred


def run_predictor(pred, rec, frames_u8, prompt_mask, torch):
  """Patch 1 + add_new_mask on frame 0 + propagate; per-frame binarised video-res masks."""
  import numpy as np

  vp = sys.modules[type(pred).__module__]
  x = torch.from_numpy(normalise(frames_u8).transpose(0, 3, 1, 2).copy())

  def load_video_frames(*a, **k):
    return x, VIDEO_HW[0], VIDEO_HW[1]

  vp.load_video_frames = load_video_frames
  masks = {}
  with torch.inference_mode():
    state = pred.init_state(video_path="<fixture frames>")
    for k, v in rec.state_options.items():  # SAM2Long reads its options from the state
      state[k] = v
    pred.add_new_mask(state, frame_idx=0, obj_id=1, mask=prompt_mask)
    out = pred.propagate_in_video(state)
    if isinstance(out, tuple):  # SAM2Long: (obj_ids, video-res masks of the backtracked path)
      return np.stack([(m[0, 0] > 0).numpy() for m in out[1]])
    for f, _ids, m in out:
      masks[int(f)] = (m[0, 0] > 0).numpy()
  return np.stack([masks[i] for i in range(len(frames_u8))])


def record(policy: str, args) -> tuple[dict, dict]:
  try:
    import torch
  except ImportError:
    fail("torch is not installed (benchmark-only: pip install torch, CPU build)")
  for mod in ("hydra", "omegaconf", "iopath"):
    try:
      __import__(mod)
    except ImportError:
      fail(f"the originals need {mod!r} (pip install hydra-core omegaconf iopath)")
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  patch_cpu(torch)
  root, commit = checkout(policy, args.work)
  options = dict(DEFAULT_OPTIONS.get(policy, {}))
  for item in args.opt or ():
    k, _, v = item.partition("=")
    options[k] = json.loads(v)
  frames_u8, prompt_mask = make_video(args.video_seed, args.frames)
  sd = det_weights(args.seed)
  if policy == "dam4sam":
    t0 = time.time()
    rec, masks = run_d4sm(root, sd, options, frames_u8, prompt_mask, torch)
    return pack(policy, rec, masks, frames_u8, prompt_mask, options, commit, args, time.time() - t0)
  state_options = options if policy == "sam2long" else {}
  pred = build(policy, root, sd, {} if state_options else options, torch)
  if policy == "sam2long":
    patch_sam2long_tokens()
  rec = {"sam2": Recorder, "samurai": SamuraiRecorder, "sam2long": Sam2LongRecorder}[policy](torch)
  rec.state_options = state_options
  rec.uncertainty = float(options.get("uncertainty", 0.0))
  rec.wrap_heads(pred)
  rec.wrap_memory(pred)
  rec.wrap_frames(pred)
  t0 = time.time()
  masks = run_predictor(pred, rec, frames_u8, prompt_mask, torch)
  return pack(policy, rec, masks, frames_u8, prompt_mask, options, commit, args, time.time() - t0)


def pack(policy, rec, masks, frames_u8, prompt_mask, options, commit, args, seconds):
  import numpy as np

  t = len(frames_u8)
  frames = []
  for f in range(t):
    r = rec.rec.get(f, {})
    row = {k: v for k, v in r.items() if k != "low_res"}
    if policy == "sam2long":  # one memory-attention call per pathway, in pathway order
      for key in ("mem_frames", "ptr_frames", "key_frame_scores", "key_ptr_scores"):
        if f"{key}_per_call" in row:
          row[f"{key}_per_pathway"] = row.pop(f"{key}_per_call")
    else:
      row.pop("mem_frames_per_call", None)
      row.pop("ptr_frames_per_call", None)
    row["frame"] = f
    frames.append(row)
  low = np.stack(
    [rec.rec.get(f, {}).get("low_res", np.zeros((64, 64), np.float32)) for f in range(t)]
  )
  arrays = {"masks_packed": np.packbits(masks, axis=-1), "low_res_f16": low.astype(np.float16)}
  if policy == "sam2long":  # no single kept low-res per frame before the backtrack
    arrays.pop("low_res_f16")
  import torch

  info = {
    "policy": policy,
    "original": {"mirror": ORIGINALS[policy][0], "commit": commit},
    "config": ORIGINALS[policy][3],
    "hydra_overrides": SMALL_OVERRIDES  # SAM2Long: options in the state; d4sm: attributes
    + ([f"++model.{k}={v}" for k, v in options.items()] if policy == "samurai" else []),
    "options": options,
    "weights": {"manifest": "shared/parity/manifest_sam2.json:sam2.1_t", "base_seed": args.seed},
    "video": {
      "file": "video.npz",
      "video_seed": args.video_seed,
      "frames": t,
      "video_hw": list(VIDEO_HW),
      "image_size": IMAGE_SIZE,
      "frames_sha256": _sha(frames_u8),
    },
    "prompt": "add_new_mask(frame_idx=0, obj_id=1, mask=video.npz:prompt_mask)",
    "torch": torch.__version__,
    "threads": args.threads,
    "seconds": round(seconds, 1),
    "maps_to": MAPS_TO,
    "frames": frames,
  }
  if getattr(rec, "lineage", None) is not None:
    info["backtracked_path"] = [int(rec.lineage[0].get(f, 0)) for f in range(t)]
    info["lineage_per_pathway"] = [[int(x.get(f, 0)) for f in range(t)] for x in rec.lineage]
  return info, arrays


MAPS_TO = {
  "masks_packed": "np.packbits(mask, axis=-1) of each frame's video-res mask (logits > 0), "
  "[T,240,40] uint8 -> track_video(...)['video_res_mask_logits'][:, 0] > 0",
  "low_res_f16": "the kept low-res logits [T,64,64] float16 (frame 0: zeros) -> "
  "track_video(...)['low_res_mask_logits'][:, 0]",
  "frames[t].chosen": "the candidate kept on frame t (index into the decoder's multimask "
  "outputs) -> the candidate whose predicted IoU equals the bank's mem_iou written on frame t",
  "frames[t].ious": "the decoder's predicted IoUs of the candidates on frame t",
  "frames[t].score": "object score logit -> track_video(...)['object_score_logits'][t, 0]",
  "frames[t].mem_frames": "frames whose spatial memory frame t's memory attention reads, in "
  "token order (cond first) -> bank before frame t: cond_frame + mem_frame[policy.view(...)]",
  "frames[t].ptr_frames": "frames whose object pointers frame t reads -> bank.cond_frame + "
  "ptr_frame within the pointer window",
  "frames[t].kf_mean/kf_cov/stable": "SAMURAI's Kalman state after frame t -> "
  "bank.policy_state.mean/cov/stable after frame t",
  "frames[t].kf_ious": "SAMURAI's IoU of the predicted box with each candidate's box",
}


def _sha(a) -> str:
  import hashlib

  return hashlib.sha256(a.tobytes()).hexdigest()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--policy", required=True, choices=sorted(ORIGINALS))
  p.add_argument("--out", required=True)
  p.add_argument("--frames", type=int, default=12)
  p.add_argument("--seed", type=int, default=0, help="det_init base seed of the weights")
  p.add_argument("--video-seed", type=int, default=3)
  p.add_argument("--threads", type=int, default=1)
  p.add_argument("--work", default="/tmp/sam2pp_originals", help="where originals are extracted")
  p.add_argument("--opt", action="append", help="an original's option k=<json value>")
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  import numpy as np

  from sam2pp_jax.io.atomic import atomic_path, atomic_write_text

  info, arrays = record(args.policy, args)
  os.makedirs(args.out, exist_ok=True)
  frames_u8, prompt_mask = make_video(args.video_seed, args.frames)
  # fixtures of one folder share video.npz; another video gets its own file, so a run with
  # other --frames / --video-seed never changes the frames an earlier fixture refers to
  name = "video.npz"
  vpath = os.path.join(args.out, name)
  if os.path.exists(vpath):
    with np.load(vpath) as z:
      same = z["frames_u8"].shape == frames_u8.shape and np.array_equal(z["frames_u8"], frames_u8)
    if not same:
      name = f"video_v{args.video_seed}_t{args.frames}.npz"
      vpath = os.path.join(args.out, name)
  info["video"]["file"] = name
  with atomic_path(vpath, suffix=".npz") as tmp:
    np.savez_compressed(tmp, frames_u8=frames_u8, prompt_mask=prompt_mask)
  with atomic_path(os.path.join(args.out, f"{args.policy}.npz"), suffix=".npz") as tmp:
    np.savez_compressed(tmp, **arrays)
  man = {k: list(v.shape) for k, v in det_weights(args.seed).items()}
  atomic_write_text(
    os.path.join(args.out, "manifest_sam2.1_t.json"), json.dumps(man, separators=(",", ":"))
  )
  atomic_write_text(os.path.join(args.out, f"{args.policy}.json"), json.dumps(info, indent=1))
  print(json.dumps({r["frame"]: [r.get("chosen"), r.get("mem_frames")] for r in info["frames"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
