"""Shared pieces of the metric implementations: the refusal error and the report layout eval.py
prints."""

from __future__ import annotations

import math
from typing import Any, Dict


class MetricInputError(ValueError):
  """An input the official toolkit refuses; the message names the file and the problem, and what
  to do."""


def make_report(
  task: str,
  protocol: str,
  overall: Dict[str, Any],
  per_sequence: Dict[str, Any],
  per_object: Dict[str, Any] | None = None,
  **extra,
) -> dict:
  """The JSON layout of `eval.py score`; metric names and units follow the matching reference
  block."""
  report = {
    "task": task,
    "protocol": protocol,
    "overall": overall,
    "per_sequence": per_sequence,
    "per_object": per_object if per_object is not None else {},
  }
  report.update(extra)
  return report


def json_safe(x):
  """NaN/Inf become the strings "nan"/"inf"/"-inf" (the convention of ../shared/metrics
  expected.json)."""
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
    x = x.item()
  if hasattr(x, "tolist"):
    return json_safe(x.tolist())
  if isinstance(x, float):
    if math.isnan(x):
      return "nan"
    if math.isinf(x):
      return "inf" if x > 0 else "-inf"
  return x
