"""The TFDS dataset builders themselves (imported by `tfds_builders.load_builder`).

Kept apart so that importing the library (a train step on synthetic tokens,
a benchmark, the model code) needs neither TFDS nor its import time; only
preparing or reading a dataset does.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from reparam_jax.data.raw_files import (
  SHAKESPEARE_URL,
  SST2_URL,
  raw_dir_from,
  raw_file,
  read_labelled_tsv,
)


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
      path = raw_file(self._raw_dir, "tinyshakespeare", "input.txt")
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
      train = raw_file(self._raw_dir, "sst2", "train.tsv")
      dev = raw_file(self._raw_dir, "sst2", "dev.tsv")
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


BUILDERS = {"tiny_shakespeare": TinyShakespeareLM, "sst2": GlueSst2}
