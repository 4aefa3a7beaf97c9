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

import os
from typing import TYPE_CHECKING

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
  builder = BUILDERS[name](raw_dir=raw_dir, data_dir=data_dir, file_format="array_record",
                           skip_malformed=skip_malformed)
  if prepare and not builder.is_prepared():
    builder.download_and_prepare()
  return builder
