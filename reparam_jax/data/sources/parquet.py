"""`parquet:GLOB?column=text`: Parquet files, one document per row of a string column.

Hugging Face Hub datasets are published as Parquet (`refs/convert/parquet`);
files are read a record batch at a time (pyarrow), never whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from reparam_jax.data.sources.base import FileSource
from reparam_jax.errors import UserError

_BATCH_ROWS = 4096


class ParquetFiles(FileSource):
  scheme = "parquet"
  option_defaults = {"column": "text"}
  summary = "Parquet files; the document is a named string column of each row"

  def documents(self, piece: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # only for Parquet sources
    column = self.options["column"]
    try:
      f = pq.ParquetFile(piece)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
      raise UserError(f"data source {self.spec.text!r}: {piece} is not a Parquet file "
                      f"({str(e).splitlines()[0]})") from None
    names = f.schema_arrow.names
    if column not in names:
      raise UserError(f"data source {self.spec.text!r}: {piece} has no column {column!r} "
                      f"(columns: {', '.join(names)}); name it with ?column=")
    row = 0
    for batch in f.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
      for value in batch.column(0).to_pylist():
        row += 1
        if isinstance(value, bytes):
          value = self.decode(value, f"{piece} row {row}")
          if value is None:
            continue
        if not isinstance(value, str):
          self.malformed(f"{piece} row {row}", f"column {column!r} holds "
                         f"{type(value).__name__}, not text")
          continue
        yield value
