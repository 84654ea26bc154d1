"""Build the model structure and weights a parity fixture was recorded with."""

from __future__ import annotations

import ast

import ml_collections

from sam2pp_jax.convert import key_map
from sam2pp_jax.convert.sources import detect_source, fill_missing, sam2_to_sam2pp
from sam2pp_jax.model.presets import get_model_config
from sam2pp_jax.model.sam2pp import SAM2Plus, build_model, param_shapes
from sam2pp_jax.parity.fixture import Fixture

# hydra override key (after "model.") -> config path; None = no structural effect for us.
_OVERRIDES = {
  "_target_": None,
  "non_overlap_masks": None,  # we never apply the non-overlap constraint (off in fixtures)
  "image_size": "image_size",
  "image_encoder.trunk.embed_dim": "trunk.embed_dim",
  "image_encoder.trunk.num_heads": "trunk.num_heads",
  "image_encoder.trunk.stages": "trunk.stages",
  "image_encoder.trunk.global_att_blocks": "trunk.global_att_blocks",
  "image_encoder.trunk.window_pos_embed_bkg_spatial_size": (
    "trunk.window_pos_embed_bkg_spatial_size"
  ),
  "image_encoder.trunk.window_spec": "trunk.window_spec",
  "image_encoder.neck.backbone_channel_list": "neck.backbone_channel_list",
  # RoPE tables always follow the actual S/16 feature map.
  "memory_attention.layer.self_attention.feat_sizes": None,
  "memory_attention.layer.cross_attention.feat_sizes": None,
}


def config_from_overrides(overrides: list[str], base: str = "b+") -> ml_collections.ConfigDict:
  """The released B+ structure with the fixture's hydra overrides applied."""
  c = get_model_config(base)
  for ov in overrides:
    k, _, v = ov.lstrip("+").partition("=")
    if not k.startswith("model."):
      raise ValueError(f"unsupported fixture override {ov!r} (expected model.*)")
    k = k[len("model.") :]
    if k not in _OVERRIDES:
      raise ValueError(
        f"fixture override {ov!r} has no mapping in sam2pp_jax.parity.model_from_fixture._OVERRIDES"
      )
    path = _OVERRIDES[k]
    if path is None:
      continue
    try:
      val = ast.literal_eval(v)
    except (ValueError, SyntaxError):
      val = v
    if isinstance(val, list):
      val = tuple(val)
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = val
  c.preset = "fixture"
  return c


def model_and_params(fx: Fixture) -> tuple[SAM2Plus, dict]:
  """(model, params) for a fixture: structure from its preset (live fixtures; B+ otherwise) and
  overrides, weights from its state dict (a SAM 2.x one brought into our layout as the converter
  does)."""
  cfg = config_from_overrides(fx.overrides, base=fx.config.get("preset", "b+"))
  if int(cfg.image_size) != fx.image_size:
    raise ValueError(f"{fx.path}: config image_size {cfg.image_size} != info {fx.image_size}")
  model = build_model(cfg)
  template = param_shapes(model)
  sd = fx.state_dict()
  if detect_source(sd.keys()) == "sam2":
    sd, _ = fill_missing(sam2_to_sam2pp(sd), key_map.reference_keys(template), 0)
  params = key_map.torch_to_flax(sd, template=template)
  return model, params
