"""`jsonl:GLOB?text=sentence&pair=&label=label`: JSON Lines, an example per line.

A dotted field (`meta.label`) reaches into nested objects; `.gz`/`.bz2`/`.xz`
files are read as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from reparam_jax.data.labelled.base import LabelledSource
from reparam_jax.data.sources.base import expand_glob
from reparam_jax.data.sources.files import open_binary


class JsonLinesExamples(LabelledSource):
  scheme = "jsonl"
  summary = "JSON Lines; text, pair and label are named fields of each line"

  def records(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for path in expand_glob(self.spec):
      with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
          where = f"{path}:{lineno}"
          try:
            line = raw.decode("utf-8")
          except UnicodeDecodeError as e:
            self.malformed(where, f"not UTF-8 (byte {e.start})")
            continue
          if not line.strip():
            continue
          try:
            record = json.loads(line)
          except json.JSONDecodeError as e:
            self.malformed(where, f"not JSON ({e.msg})")
            continue
          if not isinstance(record, dict):
            self.malformed(where, f"a JSON {type(record).__name__}, not an object")
            continue
          yield where, record
