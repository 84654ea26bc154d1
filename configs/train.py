"""Training recipes: `python train.py --config configs/train.py:<name> --workdir DIR`.

  reference  the released SAM 2++ three-task recipe (b+ at 1024, LoRA on memory attention,
             lr 5e-5 / vision 5e-6, corrections, 1:4:5 tasks); needs --config.init_from
  pretrain_tiny  the tiny preset from scratch: the recipe of the shipped checkpoints/tiny
  finetune_tiny  make demo's short fine-tune of checkpoints/tiny (--config.init_from)
  demo       the tiny preset from scratch on synthetic video, sized for <= 10 CPU-minutes
  test       a very small variant for unit tests (point task only, 3 frames, batch 2)

Override any field with --config.a.b=value (ml_collections flags). The recipes themselves live
in the package (`sam2pp_jax.train.recipes`), which the demo reads too.
"""

from sam2pp_jax.train.recipes import get_train_config


def get_config(arg: str = "demo"):
  return get_train_config(arg)
