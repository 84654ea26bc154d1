"""Atomic writes: everything is written to a temporary sibling, then renamed over the target.

A reader (or a resumed run that checks for existence) therefore sees either the old content or
the complete new one, never a partial file or folder. Temporaries live in the target's folder
(a rename across file systems would not be atomic) and get the usual umask-based permissions
before they are published (tempfile creates them 0600 / 0700).

``atomic_path(path)``: a temp file path to write with any library (OpenCV, torch.save, ...).
``atomic_write_bytes(path, data)`` / ``atomic_write_text(path, text)``: the common case.
``atomic_dir(path)``: a temp folder that replaces ``path`` (an existing folder is moved aside
and removed only after the new one is in place).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def default_permissions(path, directory: bool = False) -> None:
  """Give a temp file/dir (created 0600/0700 by tempfile) the usual umask-based mode."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[str]:
  """Yield a temp file path beside `path`; on a normal exit it replaces `path`, on an error it
  is removed. `suffix` keeps an extension a writer needs (OpenCV picks the container by it)."""
  path = os.path.abspath(os.fspath(path))
  d, base = os.path.split(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=suffix, dir=d)
  os.close(fd)
  try:
    yield tmp
    default_permissions(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_bytes(path, data: bytes) -> None:
  """Write `data` to `path` via a temp file in the same folder + os.replace (never partial)."""
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def atomic_write_text(path, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp, final) -> None:
  """Rename folder `tmp` to `final`; an existing `final` is moved aside first and removed after."""
  tmp, final = os.fspath(tmp), os.fspath(final)
  if not os.path.exists(final):
    os.rename(tmp, final)
    return
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=os.path.dirname(final))
  os.rmdir(old)  # only reserves a free name beside `final`
  os.rename(final, old)
  os.rename(tmp, final)
  shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path) -> Iterator[str]:
  """Yield a temp folder beside `path` (parents created); on a normal exit it replaces `path`
  (see `replace_dir`), on an error it is removed with its content."""
  final = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
  try:
    default_permissions(tmp, directory=True)
    yield tmp
    replace_dir(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
