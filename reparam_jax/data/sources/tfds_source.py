"""`tfds:NAME[:VERSION][?split=train&feature=text]`: any TFDS dataset, read as ArrayRecord.

`c4/en:3.1.0`, `lm1b`, `wiki40b/en`, `wikipedia/20230601.en`, ...: TFDS's
name, config and version.  The dataset must be prepared in the ArrayRecord
file format (random access, no TensorFlow); where it is not, it is prepared
here (`download_and_prepare`, needing the network and, for the large web
corpora, TFDS's Beam pipeline) under a lock so that the processes of one
machine prepare it once.  On a machine without network, prepare it elsewhere
(`tfds build NAME --file_format=array_record`) and point `TFDS_DATA_DIR` at it.

Pieces are ranges of 10,000 records, so the processes of a `prepare_data`
run split a single-file dataset too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from reparam_jax.data.sources.array_record import example_bytes_feature
from reparam_jax.data.sources.base import Source
from reparam_jax.errors import UserError

PIECE_RECORDS = 10_000


class TfdsDataset(Source):
  scheme = "tfds"
  option_defaults = {"split": "train", "feature": "text"}
  summary = "a TFDS dataset by name[:version], prepared as ArrayRecord"

  def __init__(self, spec, **kwargs):
    super().__init__(spec, **kwargs)
    self._split = None

  def _data_source(self) -> Any:
    if self._split is None:
      self._split = load_split(self.spec.text, self.spec.target, self.options["split"],
                               self.tfds_dir)
    return self._split

  def pieces(self) -> list[str]:
    n = len(self._data_source())
    return [f"{a}:{min(n, a + PIECE_RECORDS)}" for a in range(0, n, PIECE_RECORDS)]

  def documents(self, piece: str) -> Iterator[str]:
    split = self._data_source()
    start, stop = map(int, piece.split(":"))
    feature = self.options["feature"]
    raw = getattr(split, "data_source", None)  # serialized records, parsed without TFDS's decoders
    for i, record in read_blocks(raw if raw is not None else split, start, stop,
                                 fallback=split):
      where = f"{self.options['split']}[{i}]"
      value = (example_bytes_feature(record, feature) if isinstance(record, bytes)
               else record.get(feature))
      if value is None:
        self.malformed(where, f"has no text feature {feature!r}; name it with ?feature=")
        continue
      text = self.decode(value, where) if isinstance(value, bytes) else value
      if text is not None:
        yield text


def read_blocks(records: Any, start: int, stop: int, fallback: Any = None,
                block: int = 1024) -> Iterator[tuple[int, Any]]:
  """(index, record) of `records[start:stop]`, read a block at a time (`__getitems__`).

  `fallback` is read one record at a time where `records` has no batched read
  (TFDS's mock data source, tfds.testing.mock_data)."""
  for first in range(start, stop, block):
    indices = list(range(first, min(stop, first + block)))
    try:
      got = records.__getitems__(indices)
    except (TypeError, AttributeError):
      source = records if fallback is None else fallback
      got = [source[i] for i in indices]
    yield from zip(indices, got)


# TFDS's collections of builders written before its `datasets/` layout (c4, wiki40b,
# wikipedia, glue, ...): `import tensorflow_datasets` imports them lazily, so the
# registry does not know their names until their module is imported.
_LEGACY_COLLECTIONS = ("text", "summarization", "question_answering", "translate",
                       "text_simplification", "structured")


def _builder(name: str, data_dir: str | None) -> Any:
  import importlib

  import tensorflow_datasets as tfds
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    for collection in _LEGACY_COLLECTIONS:
      try:
        importlib.import_module(f"tensorflow_datasets.{collection}")
      except Exception:  # noqa: BLE001 -- a collection needing an absent extra; others may do
        pass
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def load_split(spec_text: str, name: str, split: str, tfds_dir: str | None) -> Any:
  """`builder.as_data_source()[split]` of a TFDS dataset, prepared as ArrayRecord if needed."""
  import tensorflow_datasets as tfds

  from reparam_jax.data.tfds_builders import exclusive
  data_dir = tfds_dir or os.environ.get("TFDS_DATA_DIR") or None
  try:
    builder = _builder(name, data_dir)
  except Exception as e:  # DatasetNotFoundError, DatasetVariantBlockedError, ...
    raise UserError(f"data source {spec_text!r}: TFDS has no dataset {name!r} "
                    f"({str(e).splitlines()[0][:160]}); check the name and version") from None
  if not builder.is_prepared():
    with exclusive(builder.data_dir):
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        try:
          builder.download_and_prepare()  # in the builder's file format: ArrayRecord
        except Exception as e:
          raise UserError(
              f"data source {spec_text!r}: could not prepare TFDS dataset {name!r} in "
              f"{builder.data_dir} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
              f"prepare it where there is network (tfds build {name} "
              "--file_format=array_record) and set TFDS_DATA_DIR to that folder") from None
  # (TFDS's mock data, tfds.testing.mock_data, has a builder without split metadata.)
  if builder.info.splits and split not in builder.info.splits:
    raise UserError(f"data source {spec_text!r}: no split {split!r} (splits: "
                    f"{', '.join(builder.info.splits)}); choose one with ?split=")
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError:
    raise UserError(f"data source {spec_text!r}: {builder.data_dir} is prepared as "
                    f"{builder.info.file_format}, not ArrayRecord; re-prepare it with "
                    f"tfds build {name} --file_format=array_record") from None
