"""`tiny_shakespeare`, `sst2` (`?split=`): the project's own offline datasets as documents.

They are built from the publishers' raw downloads under `REPARAM_DATA_DIR`
(data/tfds_builders.py).  Tiny Shakespeare's split is one document (its
whole text); an SST-2 split gives one document per sentence.
"""

from __future__ import annotations

from collections.abc import Iterator

from reparam_jax.data import raw_files, tfds_builders
from reparam_jax.data.sources.base import Source
from reparam_jax.errors import UserError

# name -> the text feature of its records
TEXT_FEATURE = {"tiny_shakespeare": "text", "sst2": "sentence"}


class BuiltinDataset(Source):
  scheme = "builtin"
  option_defaults = {"split": "train"}
  summary = "the built-in offline datasets: " + ", ".join(TEXT_FEATURE)

  def __init__(self, spec, **kwargs):
    super().__init__(spec, **kwargs)
    if spec.target not in TEXT_FEATURE:
      raise UserError(f"data source {spec.text!r}: no built-in dataset {spec.target!r} "
                      f"(built in: {', '.join(TEXT_FEATURE)}); for TFDS write tfds:NAME")

  def pieces(self) -> list[str]:
    return [self.options["split"]]

  def documents(self, piece: str) -> Iterator[str]:
    builder = tfds_builders.load_builder(self.spec.target,
                                         raw_dir=raw_files.raw_dir_from(self.raw_dir),
                                         tfds_dir=self.tfds_dir)
    splits = builder.as_data_source()
    if piece not in splits:
      raise UserError(f"data source {self.spec.text!r}: no split {piece!r} (splits: "
                      f"{', '.join(splits)}); choose one with ?split=")
    feature = TEXT_FEATURE[self.spec.target]
    for value in tfds_builders.read_all(splits[piece], [feature])[feature]:
      text = self.decode(value, piece) if isinstance(value, bytes) else value
      if text is not None:
        yield text
