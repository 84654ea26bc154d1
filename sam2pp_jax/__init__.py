"""sam2pp_jax: SAM 2++ (unified mask/box/point video tracking) in JAX/Flax."""

__version__ = "0.1.0"


def load_model(directory):
  """(config, params) from a checkpoint directory; `model.sam2pp.build_model(config)` applies
  them."""
  from sam2pp_jax.checkpoint import load_model as _load

  return _load(directory)
