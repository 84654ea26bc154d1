"""Benchmark dataset readers (VOS, SOT, point tracking, TAG) behind one `open_dataset` call.

Importing the package registers every reader; see base.py for the Sequence/Dataset API and the
conventions shared by all of them.
"""

from sam2pp_jax.data.formats import pt, sot, tag, vos  # noqa: F401  (registers the readers)
from sam2pp_jax.data.formats.base import (
  TASKS,
  Dataset,
  DatasetError,
  Sequence,
  known_datasets,
  open_dataset,
)

__all__ = ["TASKS", "Dataset", "DatasetError", "Sequence", "known_datasets", "open_dataset"]
