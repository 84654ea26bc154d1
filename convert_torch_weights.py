"""Convert PyTorch SAM2-Plus / SAM 2 checkpoints to sam2pp_jax checkpoints, and back.

  python convert_torch_weights.py CHECKPOINT.pt OUT_DIR [--config b+|t|s|l|...]
                                  [--source auto|sam2plus|sam2] [--dtype float32|bfloat16]
  python convert_torch_weights.py --to-torch FLAX_DIR OUT.pt

Reading a .pt needs no torch and runs none of its pickle (only tensor globals are accepted).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("src", help="CHECKPOINT.pt (or FLAX_DIR with --to-torch)")
  ap.add_argument("dst", help="OUT_DIR (or OUT.pt with --to-torch)")
  ap.add_argument("--to-torch", action="store_true", help="export a sam2pp_jax checkpoint to .pt")
  ap.add_argument("--config", default=None, help="model preset (default: detected from shapes)")
  ap.add_argument("--source", default="auto", choices=["auto", "sam2plus", "sam2"])
  ap.add_argument(
    "--dtype",
    default="float32",
    choices=["float32", "bfloat16"],
    help="storage dtype of the converted params",
  )
  ap.add_argument("--seed", type=int, default=0, help="seed for params with no source (SAM 2)")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
  args = ap.parse_args(argv)

  from sam2pp_jax.checkpoint import CheckpointError
  from sam2pp_jax.convert.convert import ConversionError, convert_checkpoint, export_to_torch
  from sam2pp_jax.convert.key_map import KeyMapError
  from sam2pp_jax.convert.torch_reader import CheckpointReadError

  try:
    if args.to_torch:
      n = export_to_torch(args.src, args.dst)
      print(f"wrote {args.dst}: {n} tensors (reference key names, {{'model': state_dict}})")
    else:
      rep = convert_checkpoint(
        args.src,
        args.dst,
        config=args.config,
        source=args.source,
        dtype=args.dtype,
        seed=args.seed,
        overwrite=args.overwrite,
      )
      print(
        json.dumps(
          {k: rep[k] for k in ("source_kind", "preset", "keys_consumed", "total_params", "seconds")}
        )
      )
      if rep["fresh_init_keys"]:
        print(
          f"note: {len(rep['fresh_init_keys'])} params had no source and were initialised "
          f"fresh (seed {args.seed}); see {args.dst}/conversion_report.json"
        )
  except (ConversionError, CheckpointReadError, CheckpointError, KeyMapError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
