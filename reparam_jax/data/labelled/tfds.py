"""`tfds:NAME[:VERSION]?split=train&text=sentence&pair=&label=label`: a labelled TFDS dataset.

`glue/sst2`, `glue/mrpc` (text=sentence1, pair=sentence2), `imdb_reviews`
(text=text), ...: read through ArrayRecord random access, prepared as
data/sources/tfds_source.py says.  A `ClassLabel` feature gives the class names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from reparam_jax.data.labelled.base import LabelledSource
from reparam_jax.data.sources.tfds_source import load_split, read_blocks


class TfdsExamples(LabelledSource):
  scheme = "tfds"
  option_defaults = {**LabelledSource.option_defaults, "split": "train"}
  summary = "a labelled TFDS dataset by name[:version]; a ClassLabel feature names the classes"

  def __init__(self, spec, **kwargs):
    super().__init__(spec, **kwargs)
    self._split = None

  def _data_source(self) -> Any:
    if self._split is None:
      self._split = load_split(self.spec.text, self.spec.target, self.options["split"],
                               self.tfds_dir)
    return self._split

  def label_names(self) -> tuple[str, ...] | None:
    info = getattr(self._data_source(), "dataset_info", None)
    label = self.options["label"]
    feature = info.features[label] if info is not None and label in info.features.keys() else None
    names = getattr(feature, "names", None)
    return tuple(names) if names else None

  def records(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
    split = self._data_source()
    for i, record in read_blocks(split, 0, len(split)):  # decoded records
      yield f"{self.options['split']}[{i}]", record
