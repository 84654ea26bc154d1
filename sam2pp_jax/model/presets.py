"""Model presets as ml_collections ConfigDicts (names follow the reference yaml keys).

`b+` is the released SAM2-Plus B+ MAME structure; `t`/`s`/`l` swap in the SAM 2.1 trunks;
`parity_small` is exactly the model of the dev parity fixtures; `tiny` is for fast tests.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("tiny", "t", "s", "b+", "l", "parity_small")
TASKS = ("mask", "box", "point")  # the granularities, in this order everywhere: import this one

TRUNKS = {
  "t": dict(
    embed_dim=96,
    num_heads=1,
    stages=(1, 2, 7, 2),
    global_att_blocks=(5, 7, 9),
    window_pos_embed_bkg_spatial_size=(7, 7),
    window_spec=(8, 4, 14, 7),
    backbone_channel_list=(768, 384, 192, 96),
  ),
  "s": dict(
    embed_dim=96,
    num_heads=1,
    stages=(1, 2, 11, 2),
    global_att_blocks=(7, 10, 13),
    window_pos_embed_bkg_spatial_size=(7, 7),
    window_spec=(8, 4, 14, 7),
    backbone_channel_list=(768, 384, 192, 96),
  ),
  "b+": dict(
    embed_dim=112,
    num_heads=2,
    stages=(2, 3, 16, 3),
    global_att_blocks=(12, 16, 20),
    window_pos_embed_bkg_spatial_size=(14, 14),
    window_spec=(8, 4, 14, 7),
    backbone_channel_list=(896, 448, 224, 112),
  ),
  "l": dict(
    embed_dim=144,
    num_heads=2,
    stages=(2, 6, 36, 4),
    global_att_blocks=(23, 33, 43),
    window_pos_embed_bkg_spatial_size=(7, 7),
    window_spec=(8, 4, 16, 8),
    backbone_channel_list=(1152, 576, 288, 144),
  ),
  "tiny": dict(
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(2,),
    window_pos_embed_bkg_spatial_size=(4, 4),
    window_spec=(4, 4, 4, 2),
    backbone_channel_list=(128, 64, 32, 16),
  ),
}


def get_model_config(preset: str = "b+") -> ml_collections.ConfigDict:
  """The model structure of a preset; see module docstring."""
  if preset not in PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
  trunk_key = "t" if preset == "parity_small" else preset
  tr = dict(TRUNKS[trunk_key])
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.image_size = {"tiny": 64, "parity_small": 256}.get(preset, 1024)
  c.tasks = TASKS

  c.trunk = ml_collections.ConfigDict(
    dict(
      embed_dim=tr["embed_dim"],
      num_heads=tr["num_heads"],
      stages=tr["stages"],
      global_att_blocks=tr["global_att_blocks"],
      window_pos_embed_bkg_spatial_size=tr["window_pos_embed_bkg_spatial_size"],
      window_spec=tr["window_spec"],
      q_pool=3,
      q_stride=(2, 2),
      dim_mul=2.0,
      head_mul=2.0,
      drop_path_rate=0.0,
    )
  )
  c.neck = ml_collections.ConfigDict(
    dict(
      d_model=256,
      backbone_channel_list=tr["backbone_channel_list"],
      fpn_top_down_levels=(2, 3),
      fpn_interp_model="nearest",
    )
  )
  c.scalp = 1

  c.hidden_dim = 256  # d_model of decoder / memory attention
  c.mem_dim = 64  # memory encoder output channels
  c.memory_attention = ml_collections.ConfigDict(
    dict(
      num_layers=4,
      dim_feedforward=2048,
      num_heads=1,
      rope_theta=10000.0,
      dropout=0.1,
      pos_enc_at_input=True,
    )
  )
  c.memory_encoder = ml_collections.ConfigDict(
    dict(
      mask_kernel_size=3,
      mask_stride=2,
      mask_padding=1,
      mask_total_stride=16,
      fuser_layers=2,
      fuser_kernel_size=7,
      fuser_padding=3,
      layer_scale_init_value=1e-6,
    )
  )
  c.decoder = ml_collections.ConfigDict(
    dict(
      transformer_depth=2,
      transformer_mlp_dim=2048,
      transformer_num_heads=8,
      attention_downsample_rate=2,
      num_multimask_outputs=3,
      iou_head_depth=3,
      iou_head_hidden_dim=256,
      box_head_inner_dim=256,
      box_head_freeze_bn=True,
      mask_in_chans=16,
    )
  )
  c.num_maskmem = 7
  c.max_obj_ptrs_in_encoder = 16
  c.max_cond_frames_in_attn = -1
  c.sigmoid_scale_for_mem_enc = 20.0
  c.sigmoid_bias_for_mem_enc = -10.0
  c.multimask_min_pt_num = 0
  c.multimask_max_pt_num = 1
  c.point_gaussian_radius = 5
  c.point_gaussian_sigma = 2.0
  c.lora = ml_collections.ConfigDict(dict(rank=128, alpha=32.0))

  if preset == "tiny":
    c.hidden_dim = 64
    c.mem_dim = 16
    c.neck.d_model = 64
    c.memory_attention.update(num_layers=2, dim_feedforward=128, num_heads=1)
    c.decoder.update(
      transformer_mlp_dim=128,
      transformer_num_heads=2,
      iou_head_hidden_dim=64,
      box_head_inner_dim=64,
    )
    c.num_maskmem = 3
    c.max_obj_ptrs_in_encoder = 4
    c.lora.update(rank=4, alpha=8.0)
  return c


def validate_model_config(c: ml_collections.ConfigDict) -> None:
  """Reject structures the model cannot build, naming the field."""
  s = int(c.image_size)
  if s % 16:
    raise ValueError(f"image_size must be a multiple of 16 (stride-16 features), got {s}")
  if c.hidden_dim % c.mem_dim:
    raise ValueError(f"hidden_dim ({c.hidden_dim}) must be a multiple of mem_dim ({c.mem_dim})")
  if c.neck.d_model != c.hidden_dim:
    raise ValueError(f"neck.d_model ({c.neck.d_model}) must equal hidden_dim ({c.hidden_dim})")
  if c.decoder.box_head_inner_dim // 8 != c.hidden_dim // 8:
    raise ValueError(
      f"decoder.box_head_inner_dim ({c.decoder.box_head_inner_dim}) must give "
      f"the hypernetwork width: inner_dim/8 == hidden_dim/8 ({c.hidden_dim // 8})"
    )
  mic = int(c.decoder.mask_in_chans)
  if mic % 4 or mic < 8:
    # the prompt encoder's first mask conv has mask_in_chans // 4 channels and a LayerNorm
    # over them: with one channel the LayerNorm outputs a constant and mask prompts are lost
    raise ValueError(
      f"decoder.mask_in_chans must be a multiple of 4 and >= 8 (its first "
      f"LayerNorm needs >= 2 channels), got {mic}"
    )
  if len(c.trunk.stages) != len(c.trunk.window_spec):
    raise ValueError("trunk.stages and trunk.window_spec must have the same length")
  for t in c.tasks:
    if t not in TASKS:
      raise ValueError(f"unknown task {t!r} in config.tasks; expected a subset of {TASKS}")
