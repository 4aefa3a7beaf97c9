"""`jsonl:GLOB?field=text`: JSON Lines, one document per line in a named string field.

The layout of most published web corpora (C4's and The Pile's JSON dumps,
RedPajama, Dolma); `.gz`/`.bz2`/`.xz` files are read as they are.  A dotted
field (`meta.body`) reaches into nested objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from reparam_jax.data.sources.base import FileSource
from reparam_jax.data.sources.files import open_binary


class JsonLines(FileSource):
  scheme = "jsonl"
  option_defaults = {"field": "text"}
  summary = "JSON Lines; the document is a named string field of each line"

  def __init__(self, spec, **kwargs):
    super().__init__(spec, **kwargs)
    self._path = self.options["field"].split(".")

  def records(self, piece: str) -> Iterator[tuple[str, Any]]:
    """(`FILE:LINE`, the parsed JSON value) of each non-blank line of one piece: for readers
    that take several fields of a record (data/instructions.py)."""
    with open_binary(piece) as f:
      for lineno, raw in enumerate(f, start=1):
        where = f"{piece}:{lineno}"
        line = self.decode(raw, where)
        if line is None or not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          self.malformed(where, f"not JSON ({e.msg})")
          continue
        yield where, record

  def documents(self, piece: str) -> Iterator[str]:
    field = self.options["field"]
    for where, record in self.records(piece):
      value = record
      for key in self._path:
        value = value.get(key) if isinstance(value, dict) else None
      if not isinstance(value, str):
        fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        got = "no" if value is None else f"a {type(value).__name__}, not a string, in"
        self.malformed(where, f"{got} field {field!r} (fields: {fields}); name the text "
                       "field with ?field=")
        continue
      yield value
