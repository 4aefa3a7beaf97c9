"""`tsv:GLOB?text=sentence&pair=&label=label&header=true`: tab-separated files (GLUE's layout).

With a header row (GLUE's SST-2, MNLI, QNLI, RTE, ...) the fields are its
column names; `header=false` (CoLA) numbers the columns from 0.  Fields are
taken as written: no quoting, as GLUE's files have none.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from typing import Any

from reparam_jax.data.labelled.base import LabelledSource
from reparam_jax.data.sources.base import expand_glob
from reparam_jax.data.sources.files import open_binary
from reparam_jax.errors import UserError


class TsvFiles(LabelledSource):
  scheme = "tsv"
  option_defaults = {**LabelledSource.option_defaults, "header": "true"}
  summary = "tab-separated files; fields by header name, or by column number with header=false"

  def records(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
    header = self.options["header"].lower()
    if header not in ("true", "false"):
      raise UserError(f"data source {self.spec.text!r}: header={header!r}; use true or false")
    for path in expand_glob(self.spec):
      names = None
      with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
          where = f"{path}:{lineno}"
          try:
            line = raw.decode("utf-8").rstrip("\r\n")
          except UnicodeDecodeError as e:
            self.malformed(where, f"not UTF-8 (byte {e.start})")
            continue
          fields = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE), [])
          if header == "true" and names is None:
            names = fields
            continue
          if not line.strip():
            continue
          if names is None:
            yield where, {str(i): v for i, v in enumerate(fields)}
          elif len(fields) != len(names):
            self.malformed(where, f"{len(fields)} tab-separated fields, the header has "
                           f"{len(names)}")
          else:
            yield where, dict(zip(names, fields))
