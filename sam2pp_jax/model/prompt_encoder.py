"""SAM prompt encoder: points/boxes -> sparse tokens, mask -> dense S/16 map (NHWC)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam2pp_jax.model.layers import conv2d, gelu, layer_norm
from sam2pp_jax.model.position_encoding import random_fourier_encode, random_fourier_grid


class PositionEmbeddingRandom(nn.Module):
  """Holds the fixed Gaussian frequency matrix [2, F] of the random-Fourier encoding."""

  num_pos_feats: int = 128
  scale: float = 1.0

  def setup(self):
    scale = self.scale if self.scale and self.scale > 0 else 1.0
    self.positional_encoding_gaussian_matrix = self.param(
      "positional_encoding_gaussian_matrix",
      lambda rng, shape: scale * jax.random.normal(rng, shape, jnp.float32),
      (2, self.num_pos_feats),
    )

  def encode_pixels(self, coords, image_hw: tuple[int, int]):
    """coords [..., 2] as (x, y) in pixels of an image_hw image -> [..., 2F]."""
    h, w = image_hw
    norm = jnp.stack([coords[..., 0] / w, coords[..., 1] / h], axis=-1)
    return random_fourier_encode(norm.astype(jnp.float32), self.positional_encoding_gaussian_matrix)

  def __call__(self, size: tuple[int, int]):
    """[h, w, 2F] encoding of the pixel centres of an h x w grid."""
    return random_fourier_grid(size[0], size[1], self.positional_encoding_gaussian_matrix)


class PromptEncoder(nn.Module):
  """Embeds point prompts (labels -1..3), optional boxes, and an optional mask prompt.

  Labels: -1 padding / not a point, 0 negative, 1 positive, 2/3 box corners.
  """

  embed_dim: int = 256
  image_embedding_size: tuple[int, int] = (64, 64)
  input_image_size: tuple[int, int] = (1024, 1024)
  mask_in_chans: int = 16
  num_point_embeddings: int = 4
  dtype: Any = None  # the mask path's computation dtype; point/box encodings stay float32

  def setup(self):
    self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
    self.point_embeddings = [nn.Embed(1, self.embed_dim) for _ in range(self.num_point_embeddings)]
    self.not_a_point_embed = nn.Embed(1, self.embed_dim)
    self.no_mask_embed = nn.Embed(1, self.embed_dim)
    # Reference Sequential slots: 0 conv, 1 LayerNorm2d, 2 GELU, 3 conv, 4 LayerNorm2d, 5 GELU,
    # 6 conv.
    dt = self.dtype
    self.mask_downscaling_0 = conv2d(self.mask_in_chans // 4, 2, stride=2, dtype=dt)
    self.mask_downscaling_1 = layer_norm(1e-6, dtype=dt)
    self.mask_downscaling_3 = conv2d(self.mask_in_chans, 2, stride=2, dtype=dt)
    self.mask_downscaling_4 = layer_norm(1e-6, dtype=dt)
    self.mask_downscaling_6 = conv2d(self.embed_dim, 1, dtype=dt)

  @property
  def mask_input_size(self) -> tuple[int, int]:
    return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

  def get_dense_pe(self):
    """[1, h, w, C] position encoding of the image-embedding grid (the decoder's image_pe)."""
    return self.pe_layer(tuple(self.image_embedding_size))[None]

  def _embed_points(self, coords, labels, pad: bool):
    coords = coords.astype(jnp.float32) + 0.5  # pixel centres
    labels = labels.astype(jnp.int32)
    if pad:
      b = coords.shape[0]
      coords = jnp.concatenate([coords, jnp.zeros((b, 1, 2), coords.dtype)], axis=1)
      labels = jnp.concatenate([labels, -jnp.ones((b, 1), labels.dtype)], axis=1)
    emb = self.pe_layer.encode_pixels(coords, tuple(self.input_image_size))
    lab = labels[..., None]
    emb = jnp.where(lab == -1, jnp.zeros_like(emb) + self.not_a_point_embed.embedding[0], emb)
    for i in range(self.num_point_embeddings):
      emb = jnp.where(lab == i, emb + self.point_embeddings[i].embedding[0], emb)
    return emb

  def _embed_boxes(self, boxes):
    coords = (boxes.astype(jnp.float32) + 0.5).reshape(-1, 2, 2)
    emb = self.pe_layer.encode_pixels(coords, tuple(self.input_image_size))
    corner = jnp.stack(
      [self.point_embeddings[2].embedding[0], self.point_embeddings[3].embedding[0]], axis=0
    )
    return emb + corner

  def embed_masks(self, masks):
    """[B, 4h, 4w, 1] mask prompt (logits or 0/1) -> [B, h, w, C]."""
    x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(masks)))
    x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
    return self.mask_downscaling_6(x)

  def __call__(self, point_coords=None, point_labels=None, boxes=None, masks=None):
    """Sparse [B, N, C] and dense [B, h, w, C] prompt embeddings.

    point_coords [B,P,2] (x, y in input-image pixels), point_labels [B,P] int; a padding
    point is appended when no box is given. boxes [B,4] xyxy pixels; masks [B,4h,4w,1].
    """
    if point_coords is not None:
      bs = point_coords.shape[0]
    elif boxes is not None:
      bs = boxes.shape[0]
    elif masks is not None:
      bs = masks.shape[0]
    else:
      bs = 1
    parts = []
    if point_coords is not None:
      parts.append(self._embed_points(point_coords, point_labels, pad=boxes is None))
    if boxes is not None:
      parts.append(self._embed_boxes(boxes))
    if parts:
      sparse = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    else:
      sparse = jnp.zeros((bs, 0, self.embed_dim), jnp.float32)
    if masks is not None:
      dense = self.embed_masks(masks)
    else:
      h, w = self.image_embedding_size
      dense = jnp.broadcast_to(self.no_mask_embed.embedding[0], (bs, h, w, self.embed_dim))
    return sparse, dense

  def init_all(self, batch_size: int = 1):
    """Touches every parameter (points, box corners, mask path, dense PE); use as init method."""
    coords = jnp.zeros((batch_size, 1, 2), jnp.float32)
    labels = jnp.ones((batch_size, 1), jnp.int32)
    masks = jnp.zeros((batch_size, *self.mask_input_size, 1), jnp.float32)
    sparse, dense = self(coords, labels, None, masks)
    _, dense_none = self(coords, labels)
    return sparse, dense, dense_none, self.get_dense_pe()
