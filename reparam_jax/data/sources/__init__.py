"""Text sources by spec string (`data.source`): the registry.

Each source kind lives in its own module and declares its `scheme`; this list
is the only place that names them.  See base.py for the spec format.
"""

from __future__ import annotations

from reparam_jax.data.sources.array_record import ArrayRecordFiles
from reparam_jax.data.sources.base import Source, Spec, parse_spec
from reparam_jax.data.sources.builtin import TEXT_FEATURE, BuiltinDataset
from reparam_jax.data.sources.jsonl import JsonLines
from reparam_jax.data.sources.parquet import ParquetFiles
from reparam_jax.data.sources.text_files import TextFiles
from reparam_jax.data.sources.tfds_source import TfdsDataset

SOURCES: tuple[type[Source], ...] = (TextFiles, JsonLines, ParquetFiles, ArrayRecordFiles,
                                     TfdsDataset, BuiltinDataset)
_BY_SCHEME = {cls.scheme: cls for cls in SOURCES}


def parse(text: str) -> Spec:
  """A spec string; a bare name is a built-in dataset if there is one by that name, else TFDS."""
  spec = parse_spec(text, tuple(_BY_SCHEME), default_scheme="tfds")
  explicit = text.strip().startswith("tfds:")
  if spec.scheme == "tfds" and not explicit and spec.target in TEXT_FEATURE:
    spec = Spec("builtin", spec.target, spec.options, spec.text)
  return spec


def open_source(text: str, *, skip_malformed: bool = False, raw_dir: str | None = None,
                tfds_dir: str | None = None) -> Source:
  """The source a spec string names (see base.py)."""
  spec = parse(text)
  return _BY_SCHEME[spec.scheme](spec, skip_malformed=skip_malformed, raw_dir=raw_dir,
                                 tfds_dir=tfds_dir)


def describe() -> str:
  """One line per scheme, for help texts and errors."""
  return "\n".join(f"  {cls.scheme}: {cls.summary}" for cls in SOURCES)


__all__ = ["SOURCES", "Source", "Spec", "describe", "open_source", "parse"]
