"""sam2pp_jax: SAM 2++ (unified mask/box/point video tracking) in JAX/Flax."""

__version__ = "0.1.0"
