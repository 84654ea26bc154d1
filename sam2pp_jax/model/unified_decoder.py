"""SAM 2++ unified decoder: SAM 2 mask decoder with per-task mask heads and a box head.

Shared between tasks: the two-way transformer, the output tokens, the IoU head (sigmoid) and
the object-score MLP.  Per task ("mask" | "box" | "point"): the high-res feature projections
`conv_s0_{task}` / `conv_s1_{task}`, the upscaling stack `output_upscaling_{task}_{0,1,3}` and
the hypernetwork MLPs; the box task adds `box_head`.  `task` and `multimask_output` are
static, so only the active head is traced.  Maps are NHWC, tokens [B, N, C].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam2pp_jax.model.corner_head import PyramidCornerHead, soft_argmax_xy
from sam2pp_jax.model.layers import MLP, ConvTranspose2x2, cast, conv2d, dot_f32, gelu, layer_norm
from sam2pp_jax.model.presets import TASKS
from sam2pp_jax.model.two_way_transformer import TwoWayTransformer


def _check_task(task: str):
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class UnifiedDecoder(nn.Module):
  """Predicts mask logits at S/4, IoU, object score and (box task) boxes from prompt tokens.

  The reference configuration always uses the high-res features (SAM 2.1 `use_high_res_features`),
  predicts object scores with a 3-layer MLP and predicts box-task masks from the
  hypernetworks (`unified_decoder_box_head_pred_masks`); those choices are fixed here.
  """

  transformer_dim: int = 256
  image_size: int = 1024
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  iou_prediction_use_sigmoid: bool = True
  use_multimask_token_for_obj_ptr: bool = True
  transformer_depth: int = 2
  transformer_num_heads: int = 8
  transformer_mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  box_head_inner_dim: int = 256
  box_head_bn_eps: float = 1e-5
  dtype: Any = None  # computation dtype (None: float32, nothing cast); mask logits stay f32

  @property
  def num_mask_tokens(self) -> int:
    return self.num_multimask_outputs + 1

  def setup(self):
    d, dt = self.transformer_dim, self.dtype
    if self.image_size % 16:
      raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
    if self.box_head_inner_dim // 8 != d // 8:
      raise ValueError(
        "the box head's score-map width (inner_dim/8) must equal the "
        "hypernetwork width (transformer_dim/8)"
      )
    self.transformer = TwoWayTransformer(
      depth=self.transformer_depth,
      embedding_dim=d,
      num_heads=self.transformer_num_heads,
      mlp_dim=self.transformer_mlp_dim,
      attention_downsample_rate=self.attention_downsample_rate,
      dtype=dt,
    )
    self.obj_score_token = nn.Embed(1, d)
    self.iou_token = nn.Embed(1, d)
    self.mask_tokens = nn.Embed(self.num_mask_tokens, d)
    self.iou_prediction_head = MLP(
      self.iou_head_hidden_dim,
      self.num_mask_tokens,
      self.iou_head_depth,
      sigmoid_output=self.iou_prediction_use_sigmoid,
      dtype=dt,
    )
    self.pred_obj_score_head = MLP(d, 1, 3, dtype=dt)
    # Per-task heads, registered under the reference names (setattr keeps the exact names).
    for t in TASKS:
      setattr(self, f"conv_s0_{t}", conv2d(d // 8, 1, dtype=dt))
      setattr(self, f"conv_s1_{t}", conv2d(d // 4, 1, dtype=dt))
      setattr(self, f"output_upscaling_{t}_0", ConvTranspose2x2(d // 4, dtype=dt))
      setattr(self, f"output_upscaling_{t}_1", layer_norm(1e-6, dtype=dt))
      setattr(self, f"output_upscaling_{t}_3", ConvTranspose2x2(d // 8, dtype=dt))
      setattr(
        self,
        f"output_hypernetworks_mlps_{t}",
        [MLP(d, d // 8, 3, dtype=dt) for _ in range(self.num_mask_tokens)],
      )
    self.box_head = PyramidCornerHead(
      inplanes=d,
      channel=self.box_head_inner_dim,
      stride=4,
      bn_eps=self.box_head_bn_eps,
      dtype=dt,
    )

  def _head(self, name: str, task: str):
    return getattr(self, f"{name}_{task}")

  def project_high_res_features(self, feat_s0, feat_s1, task: str):
    """FPN levels 0 (S/4) and 1 (S/8), [B,h,w,C] -> (s0 [..,C/8], s1 [..,C/4]); run once per
    frame."""
    _check_task(task)
    return self._head("conv_s0", task)(feat_s0), self._head("conv_s1", task)(feat_s1)

  def _upscale(self, src, feat_s0, feat_s1, task: str):
    x = self._head("output_upscaling", task + "_0")(src) + feat_s1
    x = gelu(self._head("output_upscaling", task + "_1")(x))
    x = self._head("output_upscaling", task + "_3")(x) + feat_s0
    return gelu(x)

  def __call__(
    self,
    image_embeddings,
    image_pe,
    sparse_prompt_embeddings,
    dense_prompt_embeddings,
    high_res_features,
    *,
    task: str,
    multimask_output: bool,
    repeat_image: bool = False,
  ):
    """Run the decoder for one task.

    image_embeddings [B,h,w,C] (h = w = S/16), image_pe [1,h,w,C], sparse [B,N,C],
    dense [B,h,w,C], high_res_features = (s0 [B,S/4,S/4,C/8], s1 [B,S/8,S/8,C/4]) already
    projected.  Returns dict: masks [B,M,S/4,S/4] logits (no object-score gating),
    iou_pred [B,M], sam_tokens_out [B,M',C], object_score_logits [B,1], boxes [B,M,4]
    normalised xyxy (box task) or None; M = 3 with multimask_output else 1.
    """
    _check_task(task)
    d = self.transformer_dim
    bs = sparse_prompt_embeddings.shape[0]
    out_tokens = jnp.concatenate(
      [self.obj_score_token.embedding, self.iou_token.embedding, self.mask_tokens.embedding], axis=0
    )
    out_tokens = jnp.broadcast_to(out_tokens[None], (bs, *out_tokens.shape))
    tokens = jnp.concatenate(
      [out_tokens.astype(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], axis=1
    )
    tokens = cast(tokens, self.dtype)
    if repeat_image:
      src = jnp.repeat(image_embeddings, bs, axis=0)
    else:
      if image_embeddings.shape[0] != bs:
        raise ValueError(f"image batch {image_embeddings.shape[0]} != prompt batch {bs}")
      src = image_embeddings
    src = cast(src + dense_prompt_embeddings, self.dtype)
    if image_pe.shape[0] != 1:
      raise ValueError("image_pe must have batch size 1 (from get_dense_pe)")
    image_pe = cast(image_pe, self.dtype)
    b, h, w, _ = src.shape

    hs, src_tokens = self.transformer(src, image_pe, tokens)
    iou_token_out = hs[:, 1]
    mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

    src = src_tokens.reshape(b, h, w, d)
    feat_s0, feat_s1 = high_res_features
    upscaled = self._upscale(src, feat_s0, feat_s1, task)
    mlps = self._head("output_hypernetworks_mlps", task)
    hyper_in = jnp.stack(
      [mlps[i](mask_tokens_out[:, i]) for i in range(self.num_mask_tokens)], axis=1
    )
    # mask logits accumulate into float32 (the loss and the 4x upsampling read them)
    masks = dot_f32("bnc,bhwc->bnhw", hyper_in, upscaled)
    boxes = None
    if task == "box":
      boxes = self.box_head(feat_s0, feat_s1, src, hyper_in)

    iou_pred = self.iou_prediction_head(iou_token_out)
    object_score_logits = self.pred_obj_score_head(hs[:, 0])

    if not isinstance(multimask_output, bool):
      # traced switch (training): always M candidates; the single-mask case repeats token 0's
      # output in every slot, so an arg-max over IoUs still picks it
      multi = jnp.asarray(multimask_output, bool)
      m = self.num_mask_tokens - 1
      pick = lambda a: jnp.where(multi, a[:, 1:], jnp.repeat(a[:, 0:1], m, axis=1))
      masks, iou_pred = pick(masks), pick(iou_pred)
      boxes = None if boxes is None else pick(boxes)
      sam_tokens_out = (
        pick(mask_tokens_out)
        if self.use_multimask_token_for_obj_ptr
        else jnp.repeat(mask_tokens_out[:, 0:1], m, axis=1)
      )
    else:
      sel = slice(1, None) if multimask_output else slice(0, 1)
      masks, iou_pred = masks[:, sel], iou_pred[:, sel]
      if boxes is not None:
        boxes = boxes[:, sel]
      if multimask_output and self.use_multimask_token_for_obj_ptr:
        sam_tokens_out = mask_tokens_out[:, 1:]
      else:
        sam_tokens_out = mask_tokens_out[:, 0:1]
    return {
      "masks": masks,
      "iou_pred": iou_pred,
      "sam_tokens_out": sam_tokens_out,
      "object_score_logits": object_score_logits,
      "boxes": boxes,
    }

  def init_all(self, batch_size: int = 1):
    """Runs every task's head once on zeros so that `init` creates all parameters."""
    d, s = self.transformer_dim, self.image_size
    h = s // 16
    z = lambda *shape: jnp.zeros(shape, jnp.float32)
    outs = {}
    for t in TASKS:
      feats = self.project_high_res_features(
        z(batch_size, 4 * h, 4 * h, d), z(batch_size, 2 * h, 2 * h, d), t
      )
      outs[t] = self(
        z(batch_size, h, h, d),
        z(1, h, h, d),
        z(batch_size, 2, d),
        z(batch_size, h, h, d),
        feats,
        task=t,
        multimask_output=True,
      )
    return outs


def argmax_point(logits):
  """Integer (x, y) of the first maximum in row-major order: [..., H, W] -> [..., 2] int32."""
  *lead, h, w = logits.shape
  idx = jnp.argmax(logits.reshape(*lead, h * w), axis=-1).astype(jnp.int32)
  return jnp.stack([idx % w, idx // w], axis=-1)


def soft_argmax_point(logits, normalize: bool = True):
  """Differentiable point read-out: softmax-expected (col, row) of [..., H, W] logits.

  With `normalize`, divided by (W, H) as in the reference point loss (coords in [0, 1)).
  """
  h, w = logits.shape[-2:]
  xy = soft_argmax_xy(logits, 1.0)
  if normalize:
    xy = xy / jnp.asarray([w, h], jnp.float32)
  return xy
