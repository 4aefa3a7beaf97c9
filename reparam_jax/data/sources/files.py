"""Opening local corpus files, compressed or not (shared by the file-based sources)."""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import IO

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_binary(path: str) -> IO[bytes]:
  """`path` for reading bytes; `.gz`, `.bz2` and `.xz` are decompressed on the fly."""
  for suffix, opener in _OPENERS.items():
    if path.endswith(suffix):
      return opener(path, "rb")
  return open(path, "rb")
