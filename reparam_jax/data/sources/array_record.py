"""`arrayrecord:GLOB[?feature=NAME]`: ArrayRecord files of text records.

Each record is a document's UTF-8 bytes, or, with `feature=NAME`, a
`tf.train.Example` whose bytes feature NAME holds it (the layout of a TFDS
dataset prepared as ArrayRecord).  ArrayRecord is the format grain reads with
random access; these files are read sequentially, a block of records at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

from reparam_jax.data.sources.base import FileSource
from reparam_jax.errors import UserError

_BLOCK = 1024


def example_bytes_feature(record: bytes, name: str) -> bytes | None:
  """The first value of bytes feature `name` of a serialized tf.train.Example, else None."""
  from tensorflow_datasets.proto import tf_example_pb2  # protobuf only; no TensorFlow
  feature = tf_example_pb2.Example.FromString(record).features.feature
  if name not in feature or feature[name].WhichOneof("kind") != "bytes_list":
    return None
  values = feature[name].bytes_list.value
  return values[0] if values else None


class ArrayRecordFiles(FileSource):
  scheme = "arrayrecord"
  option_defaults = {"feature": ""}
  summary = "ArrayRecord files of UTF-8 records (or tf.train.Example with ?feature=)"

  def documents(self, piece: str) -> Iterator[str]:
    from array_record.python import array_record_module
    try:
      reader = array_record_module.ArrayRecordReader(piece)
    except Exception as e:  # a RuntimeError from the C++ reader
      raise UserError(f"data source {self.spec.text!r}: {piece} is not an ArrayRecord file "
                      f"({str(e).splitlines()[0][:200]})") from None
    feature = self.options["feature"]
    try:
      n = reader.num_records()
      for start in range(0, n, _BLOCK):
        for i, record in enumerate(reader.read(start, min(n, start + _BLOCK)), start=start):
          where = f"{piece} record {i}"
          if feature:
            try:
              value = example_bytes_feature(record, feature)
            except Exception:  # protobuf's DecodeError
              self.malformed(where, "not a tf.train.Example (drop ?feature= for text records)")
              continue
            if value is None:
              self.malformed(where, f"has no bytes feature {feature!r}")
              continue
            record = value
          text = self.decode(record, where)
          if text is not None:
            yield text
    finally:
      reader.close()
