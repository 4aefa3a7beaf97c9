"""Crash-safe file writes for everything a run folder holds."""

from __future__ import annotations

import os


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes `path` so that a crash (or kill -9) leaves either the old file or the new one."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w",
            **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
