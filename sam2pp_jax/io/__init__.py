"""The bottom layer: file and video I/O with no dependency on the rest of the package.

  io.video   frames / video files -> uint8 RGB, natural sort, PIL-exact resize, normalisation
  io.png     palette PNG masks (DAVIS palette)
  io.atomic  temp-then-rename writes of files and folders

Nothing here imports another `sam2pp_jax` module (tests/test_layers.py checks it).
"""
