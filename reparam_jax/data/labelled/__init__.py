"""Labelled classification data by spec string (`data.source`, `data.eval_source`): the registry.

Each scheme lives in its own module; this list is the only place that names
them.  See base.py for the spec format and how class names are found.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from reparam_jax.data.labelled.base import Example, LabelledSource, class_ids, class_names
from reparam_jax.data.labelled.jsonl import JsonLinesExamples
from reparam_jax.data.labelled.tfds import TfdsExamples
from reparam_jax.data.labelled.tsv import TsvFiles
from reparam_jax.data.sources.base import parse_spec
from reparam_jax.errors import UserError

LABELLED_SOURCES: tuple[type[LabelledSource], ...] = (TsvFiles, JsonLinesExamples, TfdsExamples)
_BY_SCHEME = {cls.scheme: cls for cls in LABELLED_SOURCES}


def open_labelled(text: str, *, skip_malformed: bool = False,
                  tfds_dir: str | None = None) -> LabelledSource:
  """The labelled source a spec names; `$VARS` in a file path are expanded when it is read."""
  spec = parse_spec(text, tuple(_BY_SCHEME), default_scheme="tfds")
  return _BY_SCHEME[spec.scheme](spec, skip_malformed=skip_malformed, tfds_dir=tfds_dir)


def load_labelled(data: ml_collections.ConfigDict
                  ) -> tuple[tuple[str, ...], dict[str, tuple[list[str], np.ndarray, list[str] | None]]]:
  """(class names, `{split: (texts, labels, pairs or None)}`) of `data.source` (train) and
  `data.eval_source` (validation)."""
  if not data.get("eval_source"):
    raise UserError("config.data.source is set but config.data.eval_source is empty: name the "
                    "labelled examples to evaluate on (e.g. the dev split)")
  kwargs = dict(skip_malformed=data.get("skip_malformed", False),
                tfds_dir=data.get("tfds_dir") or None)
  sources = {"train": open_labelled(data.source, **kwargs),
             "validation": open_labelled(data.eval_source, **kwargs)}
  examples = {split: src.examples() for split, src in sources.items()}
  if not examples["train"]:
    raise UserError(f"data source {data.source!r} has no examples; check the path and fields")
  names = class_names(examples["train"], tuple(data.get("label_names") or ())
                      or sources["train"].label_names())
  if len(names) < 2:
    raise UserError(f"data source {data.source!r}: its labels make {len(names)} class; "
                    "a classifier needs two or more (check ?label=)")
  out = {}
  for split, src in sources.items():
    kept, ids = class_ids(src, examples[split], names)
    pairs = [e.pair for e in kept] if src.options["pair"] else None
    out[split] = ([e.text for e in kept], np.asarray(ids, np.int32), pairs)
  return names, out


def describe() -> str:
  """One line per scheme, for help texts and errors."""
  return "\n".join(f"  {cls.scheme}: {cls.summary}" for cls in LABELLED_SOURCES)


__all__ = ["Example", "LABELLED_SOURCES", "LabelledSource", "describe", "load_labelled",
           "open_labelled"]
