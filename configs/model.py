"""Model presets: `--config configs/model.py:b+` (tiny, t, s, b+, l, parity_small)."""

from sam2pp_jax.model.presets import get_model_config


def get_config(arg: str = "b+"):
  return get_model_config(arg)
