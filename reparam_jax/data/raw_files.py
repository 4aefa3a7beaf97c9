"""The publishers' raw files: where they are, and the labelled-TSV reader.

Shared by the TFDS builders (data/tfds_datasets.py) and the readers that
prepare them (data/tfds_builders.py); no TFDS here.
"""

from __future__ import annotations

import csv
import os
from typing import Iterator

from etils import epath

from reparam_jax.errors import UserError

DATA_DIR_ENV = "REPARAM_DATA_DIR"

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"


def raw_dir_from(raw_dir: str | None) -> str | None:
  return raw_dir or os.environ.get(DATA_DIR_ENV) or None


def raw_file(raw_dir: str, *parts: str) -> epath.Path:
  path = epath.Path(raw_dir).joinpath(*parts)
  if not path.exists():
    raise UserError(f"dataset file not found: expected {path} (the layout of the publisher's "
                    f"download under {DATA_DIR_ENV}={raw_dir})")
  return path


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
