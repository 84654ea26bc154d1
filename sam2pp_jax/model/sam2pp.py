"""SAM 2++ assembled: image encoding, prompted decoding, memory conditioning and encoding.

Every entry point takes `task` ("mask" | "box" | "point") as a static Python argument, so only
the active memory encoder / memory attention / decoder head is traced. Parameter names equal the
reference state dict (see `sam2pp_jax.convert.key_map`). The tracker (tracking/) strings these
steps together; this file only holds the per-frame math.

Mixed precision (`build_model(..., compute_dtype="bfloat16")`, training): params stay float32;
matmuls, convolutions and activations run in bf16, while LayerNorm statistics, attention scores
and softmax, RoPE, and everything the heads return (mask / IoU / score logits, boxes, pointers)
are float32, where the reference's torch.autocast keeps float32 or casts back (`.float()`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sam2pp_jax.model import lora
from sam2pp_jax.model.image_encoder import ImageEncoder
from sam2pp_jax.model.layers import MLP, cast, conv2d
from sam2pp_jax.model.memory_attention import MemoryAttention
from sam2pp_jax.model.memory_encoder import MemoryEncoder
from sam2pp_jax.model.position_encoding import sine_encode_1d
from sam2pp_jax.model.presets import TASKS, get_model_config, validate_model_config
from sam2pp_jax.model.prompt_encoder import PromptEncoder
from sam2pp_jax.model.resize import resize_bilinear
from sam2pp_jax.model.unified_decoder import UnifiedDecoder

NO_OBJ_SCORE = -1024.0  # logits written where the object is judged absent
MASK_OUT_SCALE, MASK_OUT_BIAS = 20.0, -10.0  # binary mask -> +-10 logits
# compute_dtype names -> the modules' dtype (None: float32 params and inputs, nothing cast)
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _trunc_normal(std: float = 0.02):
  return nn.initializers.truncated_normal(stddev=std)


class SAM2Plus(nn.Module):
  """The whole SAM 2++ parameter tree and its per-frame computations."""

  config: ml_collections.FrozenConfigDict
  dtype: Any = None  # computation dtype of every submodule (see the module docstring)

  # ------------------------------------------------------------------------------------------
  # construction
  # ------------------------------------------------------------------------------------------
  def setup(self):
    c = self.config
    validate_model_config(c)
    s, d, m = int(c.image_size), int(c.hidden_dim), int(c.mem_dim)
    dt = self.dtype
    self.image_encoder = ImageEncoder(
      embed_dim=c.trunk.embed_dim,
      num_heads=c.trunk.num_heads,
      stages=tuple(c.trunk.stages),
      global_att_blocks=tuple(c.trunk.global_att_blocks),
      window_pos_embed_bkg_spatial_size=tuple(c.trunk.window_pos_embed_bkg_spatial_size),
      window_spec=tuple(c.trunk.window_spec),
      q_pool=c.trunk.q_pool,
      q_stride=tuple(c.trunk.q_stride),
      dim_mul=c.trunk.dim_mul,
      head_mul=c.trunk.head_mul,
      drop_path_rate=c.trunk.drop_path_rate,
      d_model=c.neck.d_model,
      backbone_channel_list=tuple(c.neck.backbone_channel_list),
      fpn_top_down_levels=tuple(c.neck.fpn_top_down_levels),
      fpn_interp_model=c.neck.fpn_interp_model,
      scalp=c.scalp,
      dtype=dt,
    )
    self.sam_prompt_encoder = PromptEncoder(
      embed_dim=d,
      image_embedding_size=(s // 16, s // 16),
      input_image_size=(s, s),
      mask_in_chans=c.decoder.mask_in_chans,
      dtype=dt,
    )
    self.sam_unified_decoder = UnifiedDecoder(
      transformer_dim=d,
      image_size=s,
      num_multimask_outputs=c.decoder.num_multimask_outputs,
      iou_head_depth=c.decoder.iou_head_depth,
      iou_head_hidden_dim=c.decoder.iou_head_hidden_dim,
      transformer_depth=c.decoder.transformer_depth,
      transformer_num_heads=c.decoder.transformer_num_heads,
      transformer_mlp_dim=c.decoder.transformer_mlp_dim,
      attention_downsample_rate=c.decoder.attention_downsample_rate,
      box_head_inner_dim=c.decoder.box_head_inner_dim,
      dtype=dt,
    )
    ma, me = c.memory_attention, c.memory_encoder
    for t in TASKS:
      setattr(
        self,
        f"memory_attention_{t}",
        MemoryAttention(
          d_model=d,
          num_layers=ma.num_layers,
          pos_enc_at_input=ma.pos_enc_at_input,
          dim_feedforward=ma.dim_feedforward,
          dropout=ma.dropout,
          num_heads=ma.num_heads,
          rope_theta=ma.rope_theta,
          dtype=dt,
        ),
      )
      setattr(
        self,
        f"memory_encoder_{t}",
        MemoryEncoder(
          out_dim=m,
          in_dim=d,
          fuser_layers=me.fuser_layers,
          ds_kernel_size=me.mask_kernel_size,
          ds_stride=me.mask_stride,
          ds_padding=me.mask_padding,
          ds_total_stride=me.mask_total_stride,
          dtype=dt,
        ),
      )
    self.obj_ptr_proj = MLP(d, d, 3, dtype=dt)
    self.obj_ptr_tpos_proj = nn.Dense(m, dtype=dt)
    self.mask_downsample = conv2d(1, 4, stride=4, dtype=dt)
    self.maskmem_tpos_enc = self.param(
      "maskmem_tpos_enc", _trunc_normal(), (c.num_maskmem, 1, 1, m)
    )
    self.no_mem_embed = self.param("no_mem_embed", _trunc_normal(), (1, 1, d))
    self.no_mem_pos_enc = self.param("no_mem_pos_enc", _trunc_normal(), (1, 1, d))
    self.no_obj_ptr = self.param("no_obj_ptr", _trunc_normal(), (1, d))
    self.no_obj_embed_spatial = self.param("no_obj_embed_spatial", _trunc_normal(), (1, m))

  def apply(self, variables, *args, **kwargs):
    """Module.apply that also runs LoRA factors attached to a layer's params (training with
    peft's dropout, model/lora.py); plain params are untouched."""
    with nn.intercept_methods(lora.forward_interceptor):
      return super().apply(variables, *args, **kwargs)

  @property
  def image_size(self) -> int:
    return int(self.config.image_size)

  def _memory_attention(self, task):
    return getattr(self, f"memory_attention_{task}")

  def _memory_encoder(self, task):
    return getattr(self, f"memory_encoder_{task}")

  # ------------------------------------------------------------------------------------------
  # image
  # ------------------------------------------------------------------------------------------
  def encode_image(self, images, *, task: str, deterministic: bool = True) -> dict:
    """images [B,S,S,3] (normalised) -> features for one task.

    Returns dict: vision [B,S/16,S/16,C] (raw level 2, shared by tasks), vision_pos (its sine
    PE), s0 [B,S/4,S/4,C/8] and s1 [B,S/8,S/8,C/4] (task-projected high-res levels), all in
    the computation dtype. deterministic=False applies the trunk's drop-path (training; needs a
    "dropout" rng).
    """
    _check_task(task)
    out = self.image_encoder(images, deterministic)
    fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
    s0, s1 = self.sam_unified_decoder.project_high_res_features(fpn[0], fpn[1], task)
    feats = {
      "vision": fpn[-1],
      "vision_pos": pos[-1],
      "s0": s0,
      "s1": s1,
      "fpn0": fpn[0],
      "fpn1": fpn[1],
    }
    # one dtype for every level (the neck's top-down sums are float32, as torch's)
    return {k: cast(v, self.dtype) for k, v in feats.items()}

  # ------------------------------------------------------------------------------------------
  # prompts + decoder
  # ------------------------------------------------------------------------------------------
  def sam_heads(
    self,
    vision,
    s0,
    s1,
    point_coords=None,
    point_labels=None,
    mask_prompt=None,
    *,
    task: str,
    multimask_output: bool,
  ) -> dict:
    """Prompt encoder + unified decoder + selection + object pointer for one frame.

    vision [B,h,w,C] is the (memory-conditioned) S/16 embedding; points [B,P,2] in model pixels
    with labels [B,P] (None -> one not-a-point token); mask_prompt [B,H',W',1] logits or None.
    multimask_output may be a traced bool (training): then M candidates are always returned,
    the single-mask case as M copies of candidate 0. Every returned array but `raw` is float32.
    """
    _check_task(task)
    b = vision.shape[0]
    if point_coords is None:
      point_coords = jnp.zeros((b, 1, 2), jnp.float32)
      point_labels = -jnp.ones((b, 1), jnp.int32)
    if mask_prompt is not None:
      size = self.sam_prompt_encoder.mask_input_size
      if tuple(mask_prompt.shape[1:3]) != tuple(size):
        mask_prompt = resize_bilinear(mask_prompt.astype(jnp.float32), size, antialias=True)
    sparse, dense = self.sam_prompt_encoder(point_coords, point_labels, None, mask_prompt)
    dec = self.sam_unified_decoder(
      vision,
      self.sam_prompt_encoder.get_dense_pe(),
      sparse,
      dense,
      (s0, s1),
      task=task,
      multimask_output=multimask_output,
      repeat_image=False,
    )
    f32 = lambda a: None if a is None else a.astype(jnp.float32)  # as the reference's .float()
    obj_logit = f32(dec["object_score_logits"])  # [B,1]
    is_obj = obj_logit > 0
    masks = jnp.where(is_obj[:, :, None, None], f32(dec["masks"]), NO_OBJ_SCORE)
    boxes = f32(dec["boxes"])
    if boxes is not None:
      boxes = jnp.where(is_obj[:, :, None], boxes, 0.0)
    ious = f32(dec["iou_pred"])
    tokens = dec["sam_tokens_out"]
    if not isinstance(multimask_output, bool) or multimask_output:
      # (a traced multimask_output gives M padded candidates; see the decoder)
      best = jnp.argmax(ious, axis=-1)
      pick = lambda x: jnp.take_along_axis(x, best.reshape((b,) + (1,) * (x.ndim - 1)), axis=1)
      low_res = pick(masks)
      box = pick(boxes) if boxes is not None else None
      token = pick(tokens)[:, 0] if tokens.shape[1] > 1 else tokens[:, 0]
    else:
      best = jnp.zeros((b,), jnp.int32)
      low_res, box, token = masks, boxes, tokens[:, 0]
    lam = is_obj.astype(jnp.float32)
    obj_ptr = f32(self.obj_ptr_proj(token))
    obj_ptr = lam * obj_ptr + (1.0 - lam) * self.no_obj_ptr
    return {
      "multi_masks": masks,  # [B,M,S/4,S/4]
      "multi_boxes": boxes,  # [B,M,4] or None
      "ious": ious,  # [B,M]
      "best_index": best,  # [B]
      "low_res_masks": low_res[:, 0],  # [B,S/4,S/4]
      "high_res_masks": self.upsample_to_image(low_res[:, 0]),  # [B,S,S]
      "boxes": box[:, 0] if box is not None else None,  # [B,4] normalised
      "obj_ptr": obj_ptr,  # [B,C]
      "object_score_logits": obj_logit,  # [B,1]
      "raw": dec,
    }

  def candidate_pointers(self, tokens, object_score_logits, threshold: float = 0.0):
    """Object pointers of every candidate token [B,M,C] with the presence gate at `threshold`
    (SAM 2 uses 0; SAMURAI's min_obj_score_logits lowers it): [B,M,C]. A memory policy
    that picks a candidate other than the decoder's best takes its pointer from here."""
    lam = (object_score_logits > threshold).astype(jnp.float32)[:, :, None]  # [B,1,1]
    ptr = self.obj_ptr_proj(tokens).astype(jnp.float32)
    return lam * ptr + (1.0 - lam) * self.no_obj_ptr

  def upsample_to_image(self, low_res):
    """[B,h,w] logits -> [B,S,S] (bilinear, align_corners=False, no antialias)."""
    s = self.image_size
    return resize_bilinear(low_res[..., None], (s, s))[..., 0]

  def prompt_as_output(
    self,
    vision,
    s0,
    s1,
    mask_input,
    point_coords=None,
    point_labels=None,
    *,
    task: str,
    presence_threshold: float = 0.0,
  ) -> dict:
    """Prompted frame whose prompt itself is the output (no memory, no decoding of the mask).

    mask_input [B,S,S] is the binary mask (mask task; box task in training: the GT mask of a
    clean-box frame, as the reference's `_use_box_as_output`) or the Gaussian heatmap in [0,1]
    (point task). The decoder runs once, single-mask, only for the object pointer: from the
    mask (mask task), the point + heatmap (point task) or the box alone (box task).
    presence_threshold (static): the decoder's object-score gate on that pointer (SAM 2: 0;
    SAMURAI's min_obj_score_logits lowers it, in its _forward_sam_heads on every call).
    """
    _check_task(task)
    m = mask_input.astype(jnp.float32)
    boxes = None
    if task in ("mask", "box"):
      high = m * MASK_OUT_SCALE + MASK_OUT_BIAS
      pts, labels = (None, None) if task == "mask" else (point_coords, point_labels)
    else:
      p = jnp.clip(m, 1e-6, 1.0 - 1e-6)
      high = jnp.log(p / (1.0 - p))
      pts, labels = point_coords, point_labels
    if task == "box":
      if point_coords is None or point_coords.shape[1] != 2:
        raise ValueError("the box task's prompt-as-output needs the box as 2 corner points")
      boxes = point_coords.reshape(m.shape[0], 4) / float(self.image_size)
    s = self.image_size
    low = resize_bilinear(high[..., None], (s // 4, s // 4), antialias=True)[..., 0]
    ptr_out = self.sam_heads(
      vision,
      s0,
      s1,
      pts,
      labels,
      None if task == "box" else self.mask_downsample(m[..., None]),
      task=task,
      multimask_output=False,
    )
    present = jnp.any(m.reshape(m.shape[0], -1) > 0, axis=1, keepdims=True)
    lam = present.astype(jnp.float32)
    ptr = ptr_out["obj_ptr"]
    if float(presence_threshold) != 0.0:
      tokens = ptr_out["raw"]["sam_tokens_out"][:, :1]  # the single-mask token
      score = ptr_out["object_score_logits"]
      ptr = self.candidate_pointers(tokens, score, float(presence_threshold))[:, 0]
    obj_ptr = lam * ptr + (1.0 - lam) * self.no_obj_ptr
    return {
      "low_res_masks": low,
      "high_res_masks": high,
      "boxes": boxes,
      "obj_ptr": obj_ptr,
      "object_score_logits": MASK_OUT_SCALE * lam + MASK_OUT_BIAS,
      "ious": jnp.ones((m.shape[0], 1), jnp.float32),
      "ptr_call": ptr_out,
    }

  # ------------------------------------------------------------------------------------------
  # memory
  # ------------------------------------------------------------------------------------------
  def condition_on_memory(
    self,
    vision,
    vision_pos,
    memory,
    memory_pos,
    memory_mask=None,
    *,
    task: str,
    num_obj_ptr_tokens: int,
    deterministic: bool = True,
    key_scale=None,
  ):
    """Memory attention: [B,h,w,C] frame features attend to [B,M,Cm] memory tokens.
    deterministic=False applies its dropout (training; needs a "dropout" rng). key_scale
    [B,M]: optional per-token factors of the cross-attention keys (SAM2Long). Returns the
    conditioned features in the computation dtype."""
    _check_task(task)
    b, h, w, c = vision.shape
    out = self._memory_attention(task)(
      vision.reshape(b, h * w, c),
      vision_pos.reshape(b, h * w, c),
      memory,
      memory_pos,
      num_obj_ptr_tokens=num_obj_ptr_tokens,
      memory_mask=memory_mask,
      feat_hw=(h, w),
      deterministic=deterministic,
      key_scale=key_scale,
    )
    return out.reshape(b, h, w, c)

  def no_memory_features(self, vision):
    """Initial conditioning frame without a mask prompt: add the learned no-memory embedding
    (in the computation dtype, like the memory route's features)."""
    return cast(vision + self.no_mem_embed[0], self.dtype)

  def encode_memory(
    self, vision, high_res_logits, object_score_logits, *, task: str, binarize: bool = False
  ):
    """(vision [B,h,w,C], logits [B,S,S], score [B,1]) -> (memory [B,h,w,Cm], pos [B,h,w,Cm]).
    binarize (static): encode the mask logits > 0 instead of their sigmoid (the reference's
    binarize_mask_from_pts_for_mem_enc on prompted frames)."""
    _check_task(task)
    c = self.config
    logits = high_res_logits.astype(jnp.float32)
    mask = (logits > 0).astype(jnp.float32) if binarize else jax.nn.sigmoid(logits)
    mask = mask * c.sigmoid_scale_for_mem_enc + c.sigmoid_bias_for_mem_enc
    feats, pos = self._memory_encoder(task)(vision, mask[..., None])
    absent = (object_score_logits <= 0).astype(feats.dtype)  # [B,1]
    feats = feats + absent[:, :, None, None] * self.no_obj_embed_spatial[0]
    return feats, pos

  def memory_time_encoding(self, slot: int | jax.Array):
    """Temporal encoding [Cm] added to a spatial memory's position (index 0 = nearest past)."""
    return self.maskmem_tpos_enc[slot, 0, 0]

  def obj_ptr_pos_encoding(self, rel_pos, t_diff_max):
    """[N] relative frame offsets -> [N,Cm] pointer position encodings."""
    d = int(self.config.hidden_dim)
    pe = sine_encode_1d(jnp.asarray(rel_pos, jnp.float32) / jnp.float32(t_diff_max), d)
    return self.obj_ptr_tpos_proj(pe)

  # ------------------------------------------------------------------------------------------
  # initialisation: touch every parameter of every task
  # ------------------------------------------------------------------------------------------
  def __call__(self, images):
    """Initialisation path: runs every branch of every task once on `images` [B,S,S,3]."""
    outs = {}
    b = images.shape[0]
    m = int(self.config.mem_dim)
    d = int(self.config.hidden_dim)
    nptr = d // m
    for t in TASKS:
      f = self.encode_image(images, task=t)
      hw = f["vision"].shape[1] * f["vision"].shape[2]
      mem = jnp.zeros((b, hw + nptr, m), jnp.float32)
      cond = self.condition_on_memory(
        f["vision"], f["vision_pos"], mem, mem, task=t, num_obj_ptr_tokens=nptr
      )
      o = self.sam_heads(cond, f["s0"], f["s1"], task=t, multimask_output=True)
      if t != "box":
        o = self.prompt_as_output(
          self.no_memory_features(f["vision"]),
          f["s0"],
          f["s1"],
          jnp.zeros(images.shape[:3], jnp.float32),
          task=t,
          point_coords=jnp.zeros((b, 1, 2)),
          point_labels=jnp.ones((b, 1), jnp.int32),
        )
      feats, _ = self.encode_memory(
        f["vision"], o["high_res_masks"], o["object_score_logits"], task=t
      )
      outs[t] = (feats, self.obj_ptr_pos_encoding(jnp.arange(2), 1.0), self.memory_time_encoding(0))
    return outs


def build_model(
  config: ml_collections.ConfigDict | str, compute_dtype: str = "float32"
) -> SAM2Plus:
  """A SAM2Plus module from a preset name or a model ConfigDict. compute_dtype "bfloat16" is
  mixed precision (float32 params, bf16 compute; see the module docstring); "float32" (inference
  and parity) casts nothing."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
      f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
    )
  if isinstance(config, str):
    config = get_model_config(config)
  validate_model_config(config)
  return SAM2Plus(ml_collections.FrozenConfigDict(config), COMPUTE_DTYPES[compute_dtype])


def param_shapes(model: SAM2Plus) -> Any:
  """Abstract params (ShapeDtypeStructs) of the whole model, without computing anything.

  No parameter shape depends on the image size, so the template is traced at 64x64 (much
  cheaper in time and memory than tracing a 1024 model); tests pin it to real manifests.
  The trace (~3-8 s on CPU) runs once per configuration; each call gets its own containers.
  """
  cfg = ml_collections.ConfigDict(model.config.to_dict())
  cfg.image_size = 64
  return jax.tree.map(lambda leaf: leaf, _traced_param_shapes(ml_collections.FrozenConfigDict(cfg)))


@functools.lru_cache(maxsize=8)
def _traced_param_shapes(config: ml_collections.FrozenConfigDict) -> Any:
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(SAM2Plus(config).init, jax.random.key(0), x)["params"]


def init_params(model: SAM2Plus, key: jax.Array) -> Any:
  """Randomly initialised params (all tasks)."""
  s = model.image_size
  return jax.jit(model.init)(key, jnp.zeros((1, s, s, 3), jnp.float32))["params"]
