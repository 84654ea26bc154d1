"""Image encoder = Hiera trunk + FPN neck, with `scalp` dropping the lowest-resolution levels.

Field defaults are the released SAM 2++ config (Hiera-B+ 112/2, neck d_model 256, top-down
fusion on levels 2 and 3 with nearest upsampling, scalp 1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from sam2pp_jax.model.fpn_neck import FpnNeck
from sam2pp_jax.model.hiera import Hiera


class ImageEncoder(nn.Module):
  """`__call__(images [B,S,S,3]) -> dict(backbone_fpn, vision_pos_enc, vision_features)`.

  `backbone_fpn` / `vision_pos_enc`: lists highest resolution first (S/4, S/8, S/16 after
  scalp 1), NHWC with d_model channels; `vision_features` is the last (coarsest) kept level.
  """

  # trunk
  embed_dim: int = 112
  num_heads: int = 2
  stages: tuple[int, ...] = (2, 3, 16, 3)
  global_att_blocks: tuple[int, ...] | None = (12, 16, 20)
  window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
  window_spec: tuple[int, ...] = (8, 4, 14, 7)
  q_pool: int = 3
  q_stride: tuple[int, int] = (2, 2)
  dim_mul: float = 2.0
  head_mul: float = 2.0
  drop_path_rate: float = 0.0
  # neck
  d_model: int = 256
  backbone_channel_list: tuple[int, ...] | None = None  # None -> the trunk's channel list
  fpn_top_down_levels: tuple[int, ...] | None = (2, 3)
  fpn_interp_model: str = "nearest"
  fuse_type: str = "sum"
  # wrapper
  scalp: int = 1
  dtype: Any = None  # computation dtype (None: float32, nothing cast)

  def _trunk(self) -> Hiera:
    return Hiera(
      embed_dim=self.embed_dim,
      num_heads=self.num_heads,
      drop_path_rate=self.drop_path_rate,
      q_pool=self.q_pool,
      q_stride=tuple(self.q_stride),
      stages=tuple(self.stages),
      dim_mul=self.dim_mul,
      head_mul=self.head_mul,
      window_pos_embed_bkg_spatial_size=tuple(self.window_pos_embed_bkg_spatial_size),
      window_spec=tuple(self.window_spec),
      global_att_blocks=(None if self.global_att_blocks is None else tuple(self.global_att_blocks)),
      dtype=self.dtype,
      name="trunk",
    )

  @nn.compact
  def __call__(self, images, deterministic: bool = True) -> dict:
    trunk = self._trunk()
    channels = tuple(trunk.channel_list)
    if self.backbone_channel_list is not None and tuple(self.backbone_channel_list) != channels:
      raise ValueError(
        f"neck backbone_channel_list {tuple(self.backbone_channel_list)} != "
        f"trunk channel list {channels}"
      )
    neck = FpnNeck(
      d_model=self.d_model,
      backbone_channel_list=channels,
      fpn_interp_model=self.fpn_interp_model,
      fuse_type=self.fuse_type,
      fpn_top_down_levels=(
        None if self.fpn_top_down_levels is None else tuple(self.fpn_top_down_levels)
      ),
      dtype=self.dtype,
      name="neck",
    )
    features, pos = neck(trunk(images, deterministic))
    if self.scalp > 0:
      features, pos = features[: -self.scalp], pos[: -self.scalp]
    return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
