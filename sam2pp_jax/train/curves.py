"""Learning curves of a run: `python -m sam2pp_jax.train.curves RUN/metrics.jsonl --out curve.png`.

One panel per task: the tracked frames' quality (`track_iou` for mask and box, `track_px` for
point; train/monitor.py) beside the copy-first-frame value of the same batches, as moving
averages over `--window` logged steps, plus the core loss. matplotlib is an optional
dependency (`pip install -e '.[plot]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np

from sam2pp_jax.io.atomic import atomic_write_bytes
from sam2pp_jax.model.presets import TASKS

QUALITY = {
  "mask": ("track_iou", "copy_iou"),
  "box": ("track_iou", "copy_iou"),
  "point": ("track_px", "copy_px"),
}


def read_metrics(path: str) -> Dict[str, Dict[str, np.ndarray]]:
  """metrics.jsonl -> {task: {metric: [n] array, "step": [n]}} (lines without a metric: NaN)."""
  rows: Dict[str, List[dict]] = {}
  with open(path) as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(
          f"{path}:{i + 1}: not a JSON line ({e}); is this a metrics.jsonl?"
        ) from None
      if "task" not in rec or "step" not in rec:
        raise ValueError(f"{path}:{i + 1}: a metrics line needs 'step' and 'task'")
      rows.setdefault(rec["task"], []).append(rec)
  out = {}
  for task, recs in rows.items():
    keys = sorted({k for r in recs for k, v in r.items() if isinstance(v, (int, float))})
    out[task] = {k: np.array([float(r.get(k, np.nan)) for r in recs]) for k in keys}
  return out


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over the last `window` finite values (fewer at the start)."""
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x)
  c = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
  n = np.concatenate([[0], np.cumsum(ok)])
  i = np.arange(1, len(x) + 1)
  lo = np.maximum(i - window, 0)
  cnt = n[i] - n[lo]
  return np.where(cnt > 0, (c[i] - c[lo]) / np.maximum(cnt, 1), np.nan)


def summary(metrics, window: int = 50) -> Dict[str, Dict[str, float]]:
  """The last moving-average value of each task's quality and copy baseline."""
  out = {}
  for task, m in metrics.items():
    q, c = QUALITY.get(task, (None, None))
    if q in m and c in m:
      out[task] = {
        q: float(moving_average(m[q], window)[-1]),
        c: float(moving_average(m[c], window)[-1]),
        "steps": int(m["step"][-1]),
      }
  return out


def plot(metrics, out_png: str, window: int = 50, title: str = "") -> str:
  """Write the learning-curve PNG atomically; returns its path."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise RuntimeError(
      "plotting needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
    ) from None
  tasks = [t for t in TASKS if t in metrics]
  if not tasks:
    raise ValueError("no task has logged metrics")
  fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.2 * (len(tasks) + 1), 3.4))
  for ax, task in zip(axes, tasks):
    m = metrics[task]
    q, c = QUALITY[task]
    if q in m:
      ax.plot(m["step"], moving_average(m[q], window), label=f"model ({q})")
    if c in m:
      ax.plot(m["step"], moving_average(m[c], window), "--", label=f"copy first frame ({c})")
    ax.set_title(f"{task}: tracked frames")
    ax.set_xlabel("step")
    ax.set_ylabel("IoU" if q.endswith("iou") else "error (model px)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  ax = axes[-1]
  for task in tasks:
    if "core_loss" in metrics[task]:
      ax.plot(metrics[task]["step"], moving_average(metrics[task]["core_loss"], window), label=task)
  ax.set_title("core loss")
  ax.set_xlabel("step")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  import io

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  atomic_write_bytes(out_png, buf.getvalue())
  return os.path.abspath(out_png)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m sam2pp_jax.train.curves", description=__doc__.split("\n")[0]
  )
  ap.add_argument("metrics", help="a run's metrics.jsonl")
  ap.add_argument("--out", required=True, help="PNG to write")
  ap.add_argument("--window", type=int, default=50, help="moving-average window (logged steps)")
  ap.add_argument("--title", default="")
  args = ap.parse_args(argv)
  if args.window < 1:
    ap.error("--window must be >= 1")
  try:
    m = read_metrics(args.metrics)
    path = plot(m, args.out, args.window, args.title)
  except (OSError, ValueError, RuntimeError) as e:
    print(f"curves: error: {e}", file=sys.stderr)
    return 2
  for task, s in summary(m, args.window).items():
    print(
      f"{task}: "
      + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items())
    )
  print(f"curves: wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
