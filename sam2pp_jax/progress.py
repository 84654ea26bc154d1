"""Progress bars of the CLIs (track.py, eval.py, train.py): tqdm, driven by absolute counts."""

from __future__ import annotations

from tqdm import tqdm


class Progress:
  """A tqdm bar on stderr moved to absolute counts, the form the frame/step callbacks report:
  `update(done)` is monotone and capped at `total`, and the bar closes itself at `total`."""

  def __init__(self, total: int, label: str, stream=None, unit: str = "frames", initial: int = 0):
    self.bar = tqdm(
      total=max(int(total), 1),
      desc=label,
      unit=unit,
      file=stream,
      initial=int(initial),
      dynamic_ncols=True,
    )

  def update(self, done: int, postfix: str | None = None) -> None:
    done = min(int(done), self.bar.total)
    if postfix is not None:
      self.bar.set_postfix_str(postfix, refresh=False)
    if done > self.bar.n:
      self.bar.update(done - self.bar.n)
    if done >= self.bar.total:
      self.bar.close()
