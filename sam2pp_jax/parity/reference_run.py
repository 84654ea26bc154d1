"""Drive the official PyTorch video predictor (SAM2-Plus, or Meta's sam2 for SAM 2.x checkpoints)
from a checkout the user points to, and record what it computes, in the parity-fixture layout.

Nothing of the reference is edited or copied: its checkout goes first on sys.path, its own
builder loads the checkpoint (`torch.load(...)["model"]`, strict), and values are recorded with
forward hooks and instance-level wrappers that only look. torch is optional for the package:
`missing_requirements` says what to install, and nothing here imports torch at module level.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field

import numpy as np

SAM2PLUS = "sam2plus"
SAM2 = "sam2"
SAM2PLUS_CONFIG = "configs/sam2.1/sam2.1_hiera_b+_predmasks_decoupled_MAME.yaml"
SAM2_CONFIGS = {  # Meta's SAM 2.1 configs by trunk preset
  "t": "configs/sam2.1/sam2.1_hiera_t.yaml",
  "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
  "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
  "l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
# The reference's own dependencies (its setup.py / requirements), none of them ours.
REFERENCE_MODULES = {
  "torch": "torch==2.13.0",
  "hydra": "hydra-core",
  "omegaconf": "omegaconf",
  "iopath": "iopath",
  "einops": "einops",
  "natsort": "natsort",
}
INSTALL_HINT = (
  "pip install -e '.[reference]'   (torch 2.13 CPU, hydra-core, omegaconf, iopath, ...)"
)


class ReferenceError(RuntimeError):
  """The reference cannot be run as asked; the message says what to change."""


def missing_requirements() -> list[str]:
  """pip requirement names of the reference's dependencies that are not importable."""
  out = []
  for mod, req in REFERENCE_MODULES.items():
    try:
      __import__(mod)
    except ImportError:
      out.append(req)
  return out


def checkout_kind(repo: str) -> str:
  """'sam2plus' (has sam2_plus/) or 'sam2' (Meta's, has sam2/ and no sam2_plus/)."""
  if not repo or not os.path.isdir(repo):
    raise ReferenceError(
      f"--reference-repo {repo!r} is not a directory; clone github.com/MCG-NJU/SAM2-Plus "
      "(or facebookresearch/sam2 for SAM 2.x checkpoints) and pass its path, or set SAM2PLUS_REPO"
    )
  if os.path.isfile(os.path.join(repo, "sam2_plus", "sam2_video_predictor.py")):
    return SAM2PLUS
  if os.path.isfile(os.path.join(repo, "sam2", "sam2_video_predictor.py")):
    return SAM2
  raise ReferenceError(
    f"{repo}: neither sam2_plus/sam2_video_predictor.py (SAM2-Plus) nor "
    "sam2/sam2_video_predictor.py (Meta's sam2) is there; pass the repository root"
  )


def stub_torchvision() -> None:
  """SAM2-Plus imports torchvision.ops.boxes.box_area in a training helper this path never calls;
  torchvision has no CPU build here, so a stand-in that raises if ever called is installed."""
  try:
    import torchvision  # noqa: F401

    return
  except ImportError:
    pass

  def _never(*a, **k):
    raise RuntimeError("torchvision stand-in (parity live): this reference helper is unsupported")

  tv = types.ModuleType("torchvision")
  ops = types.ModuleType("torchvision.ops")
  boxes = types.ModuleType("torchvision.ops.boxes")
  boxes.box_area = boxes.batched_nms = ops.masks_to_boxes = _never
  ops.boxes, tv.ops = boxes, ops
  sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes})


def _np(x):
  return x.detach().float().cpu().numpy().copy()


@dataclass
class Frame:
  """What the reference produced for one frame: outputs/* slices and component dumps."""

  index: int
  outputs: dict = field(default_factory=dict)
  dumps: dict = field(default_factory=dict)  # "component/name" -> array (last call wins)
  candidates: np.ndarray | None = None  # decoder masks [M,S/4,S/4] of the frame's last call
  choice: int = -1  # the kept candidate (argmax predicted IoU when multimask, else 0)
  choice_margin: float = float("nan")  # top-1 minus top-2 predicted IoU


class Recorder:
  """Forward hooks and wrappers on one predictor instance; `frame` is set by the wrappers."""

  def __init__(self, pred, kind: str, task: str):
    self.pred, self.kind, self.task = pred, kind, task
    self.frame: int | None = None
    self.buf: dict[int, dict] = {}
    self.prompt_inputs: dict = {}  # the model-resolution prompt of the last prompted call
    self.handles = []
    self._install()

  def _put(self, name, value):
    if self.frame is not None:
      self.buf.setdefault(self.frame, {})[name] = value

  def _wrap_frame(self, method):
    orig = getattr(self.pred, method)

    def wrapped(*a, **k):
      prev = self.frame
      self.frame = int(k["frame_idx"] if "frame_idx" in k else a[1])
      if k.get("point_inputs") is not None:
        self.prompt_inputs["point_coords_model"] = _np(k["point_inputs"]["point_coords"][0])
        labels = k["point_inputs"]["point_labels"][0]
        self.prompt_inputs["point_labels_model"] = labels.cpu().numpy().astype(np.int32)
      if k.get("mask_inputs") is not None:
        self.prompt_inputs["mask_inputs"] = _np(k["mask_inputs"][0, 0])
      try:
        return orig(*a, **k)
      finally:
        self.frame = prev

    setattr(self.pred, method, wrapped)

  def _install(self):
    import torch

    p, task = self.pred, self.task
    for m in ("_get_image_feature", "_run_single_frame_inference", "_run_memory_encoder"):
      self._wrap_frame(m)
    plus = self.kind == SAM2PLUS
    dec = p.sam_unified_decoder if plus else p.sam_mask_decoder
    mem_att = getattr(p, f"memory_attention_{task}") if plus else p.memory_attention
    mem_enc = getattr(p, f"memory_encoder_{task}") if plus else p.memory_encoder
    conv_s0 = getattr(dec, f"conv_s0_{task}") if plus else dec.conv_s0
    conv_s1 = getattr(dec, f"conv_s1_{task}") if plus else dec.conv_s1

    def on_encoder(mod, args, out):
      for i, f in enumerate(out["backbone_fpn"]):
        self._put(f"image_encoder/backbone_fpn_{i}", _np(f))
      self._put("image_encoder/vision_pos_enc_2", _np(out["vision_pos_enc"][-1]))

    def on_conv(name):
      return lambda mod, args, out: self._put(f"forward_image/{name}", _np(out))

    def on_prompt(mod, args, kwargs, out):
      pts = kwargs.get("points")
      if pts is not None:
        self._put("prompt_encoder/in_point_coords", _np(pts[0]))
        self._put("prompt_encoder/in_point_labels", pts[1].detach().cpu().numpy().astype(np.int32))
      if kwargs.get("masks") is not None:
        self._put("prompt_encoder/in_masks", _np(kwargs["masks"]))
        self._put("prompt_encoder/dense", _np(out[1]))
      self._put("prompt_encoder/sparse", _np(out[0]))

    def on_decoder(mod, args, kwargs, out):
      if plus:
        masks, boxes, iou, tokens, score = out
      else:
        (masks, iou, tokens, score), boxes = out, None
      mm = bool(kwargs["multimask_output"])
      self._put("unified_decoder/masks", _np(masks))
      self._put("unified_decoder/iou_pred", _np(iou))
      self._put("unified_decoder/sam_tokens_out", _np(tokens))
      self._put("unified_decoder/object_score_logits", _np(score))
      self._put("unified_decoder/multimask_output", np.asarray(mm))
      if boxes is not None:
        self._put("unified_decoder/boxes_xyxy_norm", _np(boxes))

    def on_mask_downsample(mod, args, out):
      self._put("mask_downsample/out", _np(out))

    def on_mem_att(mod, args, kwargs, out):
      curr = kwargs["curr"][-1] if isinstance(kwargs["curr"], list) else kwargs["curr"]
      hw = curr.shape[0]
      h = int(round(hw**0.5))
      self._put("memory_attention/in_memory", _np(kwargs["memory"]))
      self._put("memory_attention/in_memory_pos", _np(kwargs["memory_pos"]))
      self._put("memory_attention/num_obj_ptr_tokens", np.asarray(kwargs["num_obj_ptr_tokens"]))
      b, c = out.shape[1], out.shape[2]
      self._put("memory_attention/out", _np(out.permute(1, 2, 0).reshape(b, c, h, h)))

    def on_mem_enc(mod, args, kwargs, out):
      self._put("memory_encoder/vision_features", _np(out["vision_features"]))
      self._put("memory_encoder/vision_pos_enc", _np(out["vision_pos_enc"][0]))

    reg = self.handles.append
    reg(p.image_encoder.register_forward_hook(on_encoder))
    reg(conv_s0.register_forward_hook(on_conv("conv_s0_out")))
    reg(conv_s1.register_forward_hook(on_conv("conv_s1_out")))
    reg(p.sam_prompt_encoder.register_forward_hook(on_prompt, with_kwargs=True))
    reg(dec.register_forward_hook(on_decoder, with_kwargs=True))
    reg(p.mask_downsample.register_forward_hook(on_mask_downsample))
    reg(mem_att.register_forward_hook(on_mem_att, with_kwargs=True))
    reg(mem_enc.register_forward_hook(on_mem_enc, with_kwargs=True))
    orig_encode = p._encode_new_memory

    def encode_new_memory(*a, **k):
      feats, pos = orig_encode(*a, **k)
      self._put("memory_encoder/maskmem_features_f32", _np(feats))
      return feats, pos

    p._encode_new_memory = encode_new_memory
    self._torch = torch

  def take(self, t: int) -> dict:
    return self.buf.pop(t, {})


class ReferencePredictor:
  """The official predictor built from a checkout, a config and a checkpoint (CPU, eval)."""

  def __init__(
    self,
    repo: str,
    checkpoint: str,
    task: str,
    *,
    kind: str | None = None,
    config_file: str | None = None,
    overrides: list[str] = (),
    preset: str = "b+",
    threads: int = 2,
    dtype: str = "float32",
  ):
    import torch

    self.torch = torch
    self.repo = os.path.abspath(repo)
    repo_kind = checkout_kind(self.repo)
    self.kind = kind or repo_kind  # a SAM2-Plus checkout also holds Meta's sam2 (vendored)
    if self.kind == SAM2PLUS and repo_kind != SAM2PLUS:
      raise ReferenceError(f"{self.repo}: a SAM2-Plus checkpoint needs a SAM2-Plus checkout")
    self.task = task
    self.dtype = dtype
    torch.set_num_threads(int(threads))
    if self.repo not in sys.path:
      sys.path.insert(0, self.repo)
    stub_torchvision()
    extra = ["++model.non_overlap_masks=false", *overrides]
    if self.kind == SAM2PLUS:
      from sam2_plus.build_sam import build_sam2_video_predictor_plus as build

      self.config_file = config_file or SAM2PLUS_CONFIG
      kw = {"task": task, "vos_optimized": False}
    else:
      if task != "mask":
        raise ReferenceError(
          f"--task {task}: Meta's sam2 predictor tracks masks only (SAM 2.x has no box head and no "
          "point task); use --task mask, or a SAM2-Plus checkout and checkpoint"
        )
      from sam2.build_sam import build_sam2_video_predictor as build

      self.config_file = config_file or SAM2_CONFIGS[preset]
      kw = {}
    try:
      self.pred = build(
        config_file=self.config_file,
        ckpt_path=os.path.abspath(checkpoint),
        device="cpu",
        mode="eval",
        hydra_overrides_extra=extra,
        apply_postprocessing=False,
        **kw,
      )
    except RuntimeError as e:  # strict load_state_dict: wrong config for this checkpoint
      raise ReferenceError(
        f"the reference could not load {checkpoint} with config {self.config_file}: "
        f"{str(e).splitlines()[0]} ... (pass the matching --config-file)"
      ) from None
    self._quiet_progress()
    self.image_size = int(self.pred.image_size)
    self.recorder = Recorder(self.pred, self.kind, task)

  def _quiet_progress(self):
    """The reference's own tqdm bars (frame loading, propagation) would interleave with ours: the
    module attribute `tqdm` of its predictor and loader is set to a pass-through (a runtime
    attribute, the code is untouched); `parity live` draws one bar per side instead."""
    for mod in ("sam2_plus.sam2_video_predictor", "sam2.sam2_video_predictor", "sam2.utils.misc"):
      m = sys.modules.get(mod)
      if m is not None and hasattr(m, "tqdm"):
        m.tqdm = lambda it, *a, **k: it

  def _autocast(self):
    import contextlib

    if self.dtype == "bfloat16":
      return self.torch.autocast(device_type="cpu", dtype=self.torch.bfloat16)
    return contextlib.nullcontext()

  def init(self, frame_dir: str):
    """The reference's init_state on a folder of frames (its own loader); returns the state."""
    with self.torch.inference_mode(), self._autocast():
      state = self.pred.init_state(frame_dir)
    self.images = state["images"]
    self.video_hw = (int(state["video_height"]), int(state["video_width"]))
    return state

  def track(self, state, prompt: dict):
    """The task's prompt call on frame 0, then propagate_in_video; yields a `Frame` per frame.

    prompt: mask -> {"mask": [H,W] bool}; box -> {"box_xyxy": [4]}; point -> {"points_xy":
    [P,2], "point_labels": [P], "radius", "sigma"}.  Object id 1.
    """
    torch, pred = self.torch, self.pred
    with torch.inference_mode(), self._autocast():
      if self.task == "mask":
        pred.add_new_mask(state, frame_idx=0, obj_id=1, mask=np.asarray(prompt["mask"], bool))
      elif self.task == "box":
        pred.add_new_points_or_box(
          state, frame_idx=0, obj_id=1, box=np.asarray(prompt["box_xyxy"], np.float32)
        )
      else:
        pred.add_new_points_and_generate_gaussian_mask(
          state,
          frame_idx=0,
          obj_id=1,
          points=np.asarray(prompt["points_xy"], np.float32),
          labels=np.asarray(prompt["point_labels"], np.int32),
          radius=int(prompt["radius"]),
          sigma=float(prompt["sigma"]),
        )
      for item in pred.propagate_in_video(state):
        t = int(item[0])
        yield self._frame(state, t, item)

  def _frame(self, state, t, item) -> Frame:
    out_dict = state["output_dict_per_obj"][0]
    cur = out_dict["cond_frame_outputs"].get(t) or out_dict["non_cond_frame_outputs"][t]
    f = Frame(index=t, dumps=self.recorder.take(t))
    logits = _np(item[2][0, 0])
    o = {
      "video_res_mask_logits": logits,
      "low_res_mask_logits": _np(cur["pred_masks"][0, 0]),
      "object_score_logits": _np(cur["object_score_logits"]).reshape(()),
      "obj_ptr": _np(cur["obj_ptr"][0]),
      "maskmem_features_bf16": _np(cur["maskmem_features"][0]),
      "maskmem_pos_enc": _np(cur["maskmem_pos_enc"][-1][0]),
    }
    if self.task == "box":
      o["pred_box_xyxy"] = _np(item[3][0, 0]) if item[3].ndim == 3 else _np(item[3][0])
      o["pred_box_xyxy_norm"] = _np(cur["pred_boxes_xyxy_norm"][0]).reshape(-1)[-4:]
    if self.task == "point":
      y, x = np.unravel_index(int(np.argmax(logits)), logits.shape)  # first maximum, row-major
      o["point_xy"] = np.asarray([x, y], np.int64)
      o["point_visible"] = np.asarray(float(o["object_score_logits"]) > 0)
    f.outputs = o
    d = f.dumps
    if "unified_decoder/masks" in d:
      f.candidates = d["unified_decoder/masks"][0]
      iou = d["unified_decoder/iou_pred"][0]
      f.choice = int(np.argmax(iou)) if bool(d["unified_decoder/multimask_output"]) else 0
      s = np.sort(iou)[::-1]
      f.choice_margin = float(s[0] - s[1]) if s.size > 1 else float("inf")
    return f

  def frames_nchw(self) -> np.ndarray:
    """float32 [T,3,S,S]: exactly what the reference model consumed."""
    return np.stack([_np(x) for x in self.images])
