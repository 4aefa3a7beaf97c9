"""Malformed TSV rows: a clear error with file and line, or skipped and counted."""

from __future__ import annotations

import pytest

from reparam_jax.data import raw_files, tfds_builders
from reparam_jax.errors import UserError

GOOD = [b"a fine film\t1", b"dull\t0"]
BAD_ROWS = {
    "no label": (b"just some words", "expected 2 tab-separated fields, got 1"),
    "label outside classes": (b"great movie\t7", "label 7 outside 0..1"),
    "empty text": (b"   \t1", "empty text"),
    "invalid utf-8": (b"caf\xe9 au lait\t1", "can't decode byte 0xe9"),
    "non-numeric label": (b"fine\tpositive", "invalid literal for int()"),
}


def _write_tsv(path, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\n".join([b"sentence\tlabel", *rows]) + b"\n")


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_malformed_row_is_an_error_naming_file_and_line(tmp_path, kind):
  row, reason = BAD_ROWS[kind]
  path = tmp_path / "train.tsv"
  _write_tsv(path, [GOOD[0], row, GOOD[1]])
  with pytest.raises(UserError) as info:
    list(raw_files.read_labelled_tsv(path, num_classes=2))
  assert str(info.value).startswith(f"{path}:3: malformed row (")  # line 1 is the header
  assert reason in str(info.value)

  skipped: list[str] = []
  rows = list(raw_files.read_labelled_tsv(path, num_classes=2, skip_malformed=True,
                                              skipped=skipped))
  assert [label for _, label in rows] == [1, 0]
  assert len(skipped) == 1 and skipped[0].startswith(f"{path}:3: ")


def test_builder_skips_and_counts_when_the_config_asks(tmp_path, capfd):
  """The `data.skip_malformed` plumbing: load_builder → TFDS builder → reader."""
  raw = tmp_path / "raw"
  _write_tsv(raw / "sst2" / "train.tsv", [GOOD[0], BAD_ROWS["no label"][0], GOOD[1],
                                           BAD_ROWS["invalid utf-8"][0]])
  _write_tsv(raw / "sst2" / "dev.tsv", GOOD)
  with pytest.raises(UserError, match=r"train.tsv:3: malformed row"):
    tfds_builders.load_builder("sst2", raw_dir=str(raw), tfds_dir=str(tmp_path / "strict"))
  builder = tfds_builders.load_builder("sst2", raw_dir=str(raw), tfds_dir=str(tmp_path / "lax"),
                                       skip_malformed=True)
  assert len(builder.as_data_source()["train"]) == 2
  assert "skipped 2 malformed rows of" in capfd.readouterr().out
