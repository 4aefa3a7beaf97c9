"""A labelled source: classification examples (text, optional pair, label) by spec string.

`data.source` (training) and `data.eval_source` (evaluation) of the classify
task name one each, in the spec format of data/sources (`SCHEME:TARGET?k=v`)::

    tsv:$REPARAM_DATA_DIR/sst2/train.tsv              # GLUE's layout: a header row
    tsv:/data/rte/train.tsv?text=sentence1&pair=sentence2
    tsv:/data/cola/train.tsv?header=false&text=3&label=1   # columns by number
    jsonl:/data/reviews/*.jsonl?text=review&label=stars
    tfds:glue/mrpc?split=validation&text=sentence1&pair=sentence2

`text`, `pair` (empty: single sentences) and `label` name the fields.  A label
is a class number or a class name; the class names come from
`data.label_names` if set, else from the dataset (a TFDS `ClassLabel`), else
from the training split (class numbers 0..K-1, or its sorted label strings).
A row without one of the fields, with an empty text or a label outside the
classes is a one-line `UserError` naming source and row, or, with
`data.skip_malformed`, skipped and counted.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from reparam_jax.data.sources.base import Spec
from reparam_jax.errors import UserError

Label = int | str


@dataclasses.dataclass(frozen=True)
class Example:
  text: str
  pair: str | None
  label: Label  # as the source wrote it: a class number or a class name
  where: str  # file:line or split[index], for error messages


class LabelledSource(abc.ABC):
  """The examples of one spec, in the source's order."""

  scheme: ClassVar[str]
  # Field names; each scheme adds its own options.
  option_defaults: ClassVar[Mapping[str, str]] = {"text": "sentence", "pair": "", "label": "label"}
  summary: ClassVar[str] = ""

  def __init__(self, spec: Spec, *, skip_malformed: bool = False, tfds_dir: str | None = None):
    unknown = sorted(set(spec.options) - set(self.option_defaults))
    if unknown:
      raise UserError(f"data source {spec.text!r}: unknown option {unknown[0]!r} "
                      f"({self.scheme} takes: {', '.join(self.option_defaults)})")
    self.spec = spec
    self.options = {**self.option_defaults, **spec.options}
    self.skip_malformed = skip_malformed
    self.tfds_dir = tfds_dir
    self.skipped = 0

  @abc.abstractmethod
  def records(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, record) pairs: each row as a field → value mapping."""

  def label_names(self) -> tuple[str, ...] | None:
    """Class names the dataset declares (a TFDS ClassLabel), else None."""
    return None

  def malformed(self, where: str, why: str) -> None:
    """Raises the one-line error, or counts a skip under `skip_malformed`."""
    if not self.skip_malformed:
      raise UserError(f"data source {self.spec.text!r}: {where}: {why}; fix the data or set "
                      "--config.data.skip_malformed=True to skip such rows")
    self.skipped += 1

  def examples(self) -> list[Example]:
    text_f, pair_f, label_f = (self.options[k] for k in ("text", "pair", "label"))
    out = []
    for where, record in self.records():
      text = _field(record, text_f)
      pair = _field(record, pair_f) if pair_f else ""
      label = _field(record, label_f)
      missing = [f for f, v in ((text_f, text), (pair_f, pair), (label_f, label)) if v is None]
      if missing:
        self.malformed(where, f"no field {missing[0]!r} (fields: {', '.join(map(str, record))}); "
                       "name the fields with ?text=, ?pair= and ?label=")
        continue
      text, pair = _as_text(text), _as_text(pair)
      if text is None or pair is None:
        self.malformed(where, "text that is not UTF-8")
        continue
      if not text.strip():
        self.malformed(where, f"empty text in field {text_f!r}")
        continue
      out.append(Example(text.strip(), pair.strip() if pair_f else None, _as_label(label), where))
    return out


def _field(record: Mapping[str, Any], name: str) -> Any:
  value: Any = record
  for key in name.split("."):  # a dotted name reaches into nested JSON objects
    value = value.get(key) if isinstance(value, Mapping) else None
  return value


def _as_text(value: Any) -> str | None:
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return None
  return str(value)


def _as_label(value: Any) -> Label:
  """A class number (ints, and digit strings as TSVs write them) or a class name."""
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  if isinstance(value, str):
    value = value.strip()
    return int(value) if value.lstrip("-").isdigit() else value
  if isinstance(value, bool):
    return int(value)
  try:
    return int(value)  # numpy integers, TFDS ClassLabel values
  except (TypeError, ValueError):
    return str(value)


def class_names(train: Sequence[Example], declared: Sequence[str] | None) -> tuple[str, ...]:
  """The classes: `declared` if given; else 0..max of numeric labels, or sorted label strings."""
  if declared:
    return tuple(declared)
  labels = [e.label for e in train]
  if labels and all(isinstance(x, int) for x in labels):
    return tuple(str(i) for i in range(max(labels) + 1))
  return tuple(sorted({str(x) for x in labels}))


def class_ids(source: LabelledSource, examples: Sequence[Example], names: Sequence[str]
              ) -> tuple[list[Example], list[int]]:
  """Each example's class number under `names`; an unknown label is malformed (skipped/raised)."""
  index = {n: i for i, n in enumerate(names)}
  kept, ids = [], []
  for e in examples:
    if isinstance(e.label, int):
      ok = 0 <= e.label < len(names)
      cls = e.label
    else:
      ok = e.label in index
      cls = index.get(e.label, -1)
    if not ok:
      shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
      source.malformed(e.where, f"label {e.label!r} is not one of the {len(names)} classes "
                       f"({shown}); set --config.data.label_names to the class names")
      continue
    kept.append(e)
    ids.append(cls)
  return kept, ids
