"""One entry point over every benchmark protocol: `score(task, protocol, gt, pred)` plus a table."""

from __future__ import annotations

import importlib
import json
import math
from typing import Dict, Optional, Sequence, Tuple

from sam2pp_jax.eval.common import MetricInputError, json_safe

# task -> protocol -> (module, function, reference block in ../shared/metrics/*/expected.json)
PROTOCOLS: Dict[str, Dict[str, Tuple[str, str, str]]] = {
  "mask": {
    "davis2017": ("vos_metrics", "score_davis2017", "davis2017"),
    "sav": ("vos_metrics", "score_sav", "sam2plus_sav_benchmark"),
  },
  "box": {
    "ope": ("sot_metrics", "score_ope", "sam2plus_sot_benchmark"),
    "ope-visibility": ("sot_metrics", "score_ope_visibility", "sam2plus_sot_benchmark_visibility"),
    "got10k": ("sot_metrics", "score_got10k", "got10k_toolkit"),
  },
  "point": {
    "tapvid": ("pt_metrics", "score_tapvid", "tapnet_tapvid"),
    "sam2plus": ("pt_metrics", "score_sam2plus_tapvid", "sam2plus_tapvid"),
    "pck": ("pt_metrics", "score_pck", "sam2plus_pck"),
  },
}
DEFAULT_PROTOCOL = {"mask": "davis2017", "box": "ope", "point": "tapvid"}


def _module(name: str):
  return importlib.import_module(f"sam2pp_jax.eval.{name}")


def protocol_fn(task: str, protocol: Optional[str]):
  if task not in PROTOCOLS:
    raise MetricInputError(f"unknown task {task!r}; choose one of {sorted(PROTOCOLS)}")
  protocol = protocol or DEFAULT_PROTOCOL[task]
  if protocol not in PROTOCOLS[task]:
    raise MetricInputError(
      f"protocol {protocol!r} does not score task {task!r}; choose one of {sorted(PROTOCOLS[task])}"
    )
  mod, fn, _ = PROTOCOLS[task][protocol]
  if mod == "sot_metrics" and fn == "score_ope_visibility":
    f = _module(mod).score_ope
    return protocol, (lambda gt, pred, **kw: f(gt, pred, visibility=True, **kw))
  return protocol, getattr(_module(mod), fn)


def score(
  task: str, protocol: Optional[str], gt: str, pred: str, sequences: Optional[Sequence[str]] = None
) -> dict:
  """Report dict {task, protocol, overall, per_sequence, per_object, ...} of one protocol."""
  protocol, fn = protocol_fn(task, protocol)
  report = fn(gt, pred, sequences=sequences)
  report["task"], report["protocol"] = task, protocol
  report.setdefault("reference_block", PROTOCOLS[task][protocol][2])
  return report


def refusal_notes() -> str:
  """The metric modules' docstrings: which inputs are refused and which give documented values."""
  parts = []
  for mod in ("vos_metrics", "sot_metrics", "pt_metrics"):
    try:
      doc = _module(mod).__doc__ or ""
    except ImportError:
      continue
    parts.append(doc.strip())
  return "\n\n".join(parts)


def _fmt(v) -> str:
  if isinstance(v, bool) or v is None:
    return str(v)
  if isinstance(v, (int, float)):
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"
  return str(v)


def _scalars(d: dict) -> Dict[str, object]:
  return {
    k: v for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
  }


def format_table(report: dict, max_rows: int = 50) -> str:
  """Overall numbers, then one row per sequence (scalar metrics only)."""
  overall = _scalars(report["overall"])
  units = report.get("units")
  lines = [f"{report['task']} / {report['protocol']}" + (f"  ({units})" if units else "")]
  keys = list(overall)
  wd = {k: max(10, len(k)) for k in keys}
  lines.append("  ".join(f"{k:>{wd[k]}}" for k in keys))
  lines.append("  ".join(f"{_fmt(overall[k]):>{wd[k]}}" for k in keys))
  seqs = report.get("per_sequence", {})
  if seqs:
    cols = []
    for v in seqs.values():
      for k in _scalars(v) if isinstance(v, dict) else ():
        if k not in cols:
          cols.append(k)
    width = max(8, min(28, max(len(s) for s in seqs)))
    lines.append("")
    wc = {k: max(10, len(k)) for k in cols}
    lines.append(f"{'sequence':<{width}}  " + "  ".join(f"{k:>{wc[k]}}" for k in cols))
    for i, (name, v) in enumerate(seqs.items()):
      if i == max_rows:
        lines.append(f"... {len(seqs) - max_rows} more sequences in the JSON")
        break
      vals = _scalars(v) if isinstance(v, dict) else {}
      lines.append(
        f"{name[:width]:<{width}}  " + "  ".join(f"{_fmt(vals.get(k, '')):>{wc[k]}}" for k in cols)
      )
  return "\n".join(lines)


def dumps(report: dict) -> str:
  return json.dumps(json_safe(report), indent=1)
