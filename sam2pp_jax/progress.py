"""A minimal stderr progress bar shared by the CLIs (track.py, eval.py, train.py); no tqdm dependency."""

from __future__ import annotations

import sys
import time


class Progress:
  """Redraws one stderr line at most every 0.1 s; `update(done)` is monotone and ends the line at total."""

  def __init__(self, total: int, label: str, stream=None, width: int = 30, unit: str = "frames"):
    self.total, self.label, self.width, self.unit = max(int(total), 1), label, width, unit
    self.stream = sys.stderr if stream is None else stream
    self.done, self.t0, self._last = 0, time.time(), -1.0
    self.postfix = ""

  def update(self, done: int, postfix: str | None = None) -> None:
    self.done = min(max(int(done), self.done), self.total)
    if postfix is not None:
      self.postfix = postfix
    now = time.time()
    if self.done < self.total and now - self._last < 0.1:
      return
    self._last = now
    frac = self.done / self.total
    bar = "#" * int(round(frac * self.width))
    rate = self.done / max(now - self.t0, 1e-9)
    extra = f" {self.postfix}" if self.postfix else ""
    self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {self.done}/{self.total} {self.unit} "
                      f"({rate:.1f}/s){extra}")
    if self.done >= self.total:
      self.stream.write("\n")
    self.stream.flush()
