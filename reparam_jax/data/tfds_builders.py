"""Prepared TFDS datasets of the project, usable offline (`load_builder`).

Each builder prepares an ArrayRecord dataset (random access, no TensorFlow)
from the publisher's raw files.  Where the raw files come from:

* `raw_dir` given (or `$REPARAM_DATA_DIR` set): read from that folder, laid
  out as the publishers distribute them (`tinyshakespeare/input.txt`,
  `sst2/train.tsv`, `sst2/dev.tsv`) — no network;
* otherwise: TFDS's download manager fetches the publisher's files.

A missing raw file is a `UserError` naming the expected path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reparam_jax.errors import UserError

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

# The datasets `load_builder` knows (their builders: data/tfds_datasets.py).
DATASETS = ("tiny_shakespeare", "sst2")


def load_builder(name: str, *, raw_dir: str | None = None, tfds_dir: str | None = None,
                 prepare: bool = True, skip_malformed: bool = False) -> tfds.core.DatasetBuilder:
  """A prepared builder; `as_data_source()` on it gives random-access splits."""
  if name not in DATASETS:
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
  from reparam_jax.data.tfds_datasets import BUILDERS  # imports TFDS: only when data is read
  data_dir = tfds_dir or os.environ.get("TFDS_DATA_DIR") or None

  def make():
    return BUILDERS[name](raw_dir=raw_dir, data_dir=data_dir, file_format="array_record",
                          skip_malformed=skip_malformed)

  builder = make()
  if prepare and not builder.is_prepared():
    with exclusive(builder.data_dir):
      builder = make()  # prepared meanwhile by the process that held the lock?
      if not builder.is_prepared():
        builder.download_and_prepare()
  return builder


def read_all(split: Any, fields: Sequence[str]) -> dict[str, list]:
  """Every record of one split of `load_builder(...).as_data_source()`, one list per field.

  TFDS decodes a record at a time through its feature specs, about 80 µs each:
  5 s of every SST-2 run's start for 67k sentences.  The project's builders
  store flat `tf.train.Example` protos of int64 and bytes scalars, which
  protobuf parses directly in a fifteenth of that.  Values come as stored
  (ints, bytes), in record order.
  """
  from tensorflow_datasets.proto import tf_example_pb2
  records = split.data_source.__getitems__(list(range(len(split))))
  out: dict[str, list] = {name: [] for name in fields}
  for record in records:
    features = tf_example_pb2.Example.FromString(record).features.feature
    for name in fields:
      value = features[name]
      out[name].append(getattr(value, value.WhichOneof("kind")).value[0])
  return out


@contextlib.contextmanager
def exclusive(dataset_dir: str):
  """Holds a lock beside a local dataset folder while it is prepared.

  Processes that share a machine and a data folder (the workers of a sweep or
  a test run, the processes of a one-machine jax.distributed run) would
  otherwise prepare one folder at once and corrupt it; the ones that wait
  find it prepared.  Remote folders (gs://...) are not locked.
  """
  if "://" in dataset_dir:
    yield
    return
  parent = os.path.dirname(os.path.normpath(dataset_dir))
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, ".prepare.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
