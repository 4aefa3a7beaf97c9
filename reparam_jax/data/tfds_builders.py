"""TFDS builders for the project's datasets, usable offline.

Each builder prepares an ArrayRecord dataset (random access, no TensorFlow)
from the publisher's raw files.  Where the raw files come from:

* `raw_dir` given (or `$REPARAM_DATA_DIR` set): read from that folder, laid
  out as the publishers distribute them (`tinyshakespeare/input.txt`,
  `sst2/train.tsv`, `sst2/dev.tsv`) — no network;
* otherwise: TFDS's download manager fetches the publisher's files.

A missing raw file is a `UserError` naming the expected path.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from reparam_jax.errors import UserError

DATA_DIR_ENV = "REPARAM_DATA_DIR"

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"


def raw_dir_from(raw_dir: str | None) -> str | None:
  return raw_dir or os.environ.get(DATA_DIR_ENV) or None


def _raw_file(raw_dir: str, *parts: str) -> epath.Path:
  path = epath.Path(raw_dir).joinpath(*parts)
  if not path.exists():
    raise UserError(f"dataset file not found: expected {path} (the layout of the publisher's "
                    f"download under {DATA_DIR_ENV}={raw_dir})")
  return path


class _OfflineCapable(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Takes `raw_dir` so `_split_generators` can skip the download manager."""

  def __init__(self, *, raw_dir: str | None = None, skip_malformed: bool = False,
               **kwargs: Any):
    self._raw_dir = raw_dir_from(raw_dir)
    self._skip_malformed = skip_malformed  # config `data.skip_malformed`
    super().__init__(**kwargs)


class TinyShakespeareLM(_OfflineCapable, skip_registration=True):
  """Tiny Shakespeare split 90% / 10% by character position (nanoGPT's split).

  TFDS's own `tiny_shakespeare` uses a different (90/5/5) split, hence a
  separate builder.  Each split is one example holding the whole text.
  """

  name = "tiny_shakespeare_lm"
  VERSION = tfds.core.Version("1.0.0")
  TRAIN_FRACTION = 0.9

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        homepage="https://github.com/karpathy/char-rnn")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self._raw_dir:
      path = _raw_file(self._raw_dir, "tinyshakespeare", "input.txt")
    else:
      path = dl_manager.download(SHAKESPEARE_URL)
    text = epath.Path(path).read_text(encoding="utf-8")
    cut = int(len(text) * self.TRAIN_FRACTION)
    return {"train": self._generate_examples(text[:cut]),
            "validation": self._generate_examples(text[cut:])}

  def _generate_examples(self, text: str) -> Iterator[tuple[int, dict[str, str]]]:
    yield 0, {"text": text}


class GlueSst2(_OfflineCapable, skip_registration=True):
  """GLUE SST-2 (`sentence\\tlabel` TSVs); `validation` is the public dev split."""

  name = "glue_sst2"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["negative", "positive"]),
            "idx": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://gluebenchmark.com/")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self._raw_dir:
      train = _raw_file(self._raw_dir, "sst2", "train.tsv")
      dev = _raw_file(self._raw_dir, "sst2", "dev.tsv")
    else:
      root = epath.Path(dl_manager.download_and_extract(SST2_URL)) / "SST-2"
      train, dev = root / "train.tsv", root / "dev.tsv"
    return {"train": self._generate_examples(train), "validation": self._generate_examples(dev)}

  def _generate_examples(self, path: epath.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    skipped: list[str] = []
    rows = read_labelled_tsv(path, num_classes=2, skip_malformed=self._skip_malformed,
                             skipped=skipped)
    for idx, (sentence, label) in enumerate(rows):
      yield idx, {"sentence": sentence, "label": label, "idx": idx}
    if skipped:  # counted once, when the dataset is prepared
      print(f"warning: skipped {len(skipped)} malformed rows of {path} (data.skip_malformed); "
            f"first: {skipped[0]}", flush=True)


def read_labelled_tsv(path: epath.Path | str, num_classes: int, skip_malformed: bool = False,
                      skipped: list[str] | None = None) -> Iterator[tuple[str, int]]:
  """Rows of a GLUE-style `sentence\\tlabel` file with a header line.

  A malformed row (missing label, label outside the classes, empty text,
  invalid UTF-8) is a `UserError` naming file and line, or skipped when
  `skip_malformed` is set; then `skipped` (if given) collects `file:line: why`.
  """
  path = epath.Path(path)
  with path.open("rb") as f:
    for lineno, raw in enumerate(f, start=1):
      if lineno == 1:
        continue  # header
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
        fields = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
        if len(fields) != 2:
          raise ValueError(f"expected 2 tab-separated fields, got {len(fields)}")
        sentence, label_text = fields[0].strip(), fields[1].strip()
        if not sentence:
          raise ValueError("empty text")
        label = int(label_text)
        if not 0 <= label < num_classes:
          raise ValueError(f"label {label} outside 0..{num_classes - 1}")
      except (UnicodeDecodeError, ValueError) as e:
        if skip_malformed:
          if skipped is not None:
            skipped.append(f"{path}:{lineno}: {e}")
          continue
        raise UserError(f"{path}:{lineno}: malformed row ({e})") from None
      yield sentence, label


BUILDERS = {"tiny_shakespeare": TinyShakespeareLM, "sst2": GlueSst2}


def load_builder(name: str, *, raw_dir: str | None = None, tfds_dir: str | None = None,
                 prepare: bool = True, skip_malformed: bool = False) -> tfds.core.DatasetBuilder:
  """A prepared builder; `as_data_source()` on it gives random-access splits."""
  if name not in BUILDERS:
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(BUILDERS))}")
  data_dir = tfds_dir or os.environ.get("TFDS_DATA_DIR") or None
  builder = BUILDERS[name](raw_dir=raw_dir, data_dir=data_dir, file_format="array_record",
                           skip_malformed=skip_malformed)
  if prepare and not builder.is_prepared():
    builder.download_and_prepare()
  return builder
