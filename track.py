#!/usr/bin/env python3
"""Track objects through a video with a sam2pp_jax checkpoint; write benchmark-format results.

  python track.py --checkpoint DIR --video PATH --task mask|box|point --prompt P --out DIR
                  [--frame N] [--reverse] [--viz] [--chunk K] [--point-readout argmax|soft_argmax]

`python track.py --help` lists the options; prompts, outputs and the code are in
sam2pp_jax/tracking/cli.py.
"""

import sys

from sam2pp_jax.tracking.cli import (
  InputError,
  build_parser,
  main,
  parse_box_prompt,
  parse_mask_prompt,
  parse_point_prompt,
  run,
)

__all__ = [
  "InputError",
  "build_parser",
  "main",
  "parse_box_prompt",
  "parse_mask_prompt",
  "parse_point_prompt",
  "run",
]

if __name__ == "__main__":
  sys.exit(main())
