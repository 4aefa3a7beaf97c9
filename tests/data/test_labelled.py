"""Labelled classification sources (data/labelled): TSV, JSON Lines and TFDS, read from real
files and a real TFDS builder the tests write, and the GLUE configs' specs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from reparam_jax.config import load as config_load
from reparam_jax.data import labelled
from reparam_jax.data.classification import load_classification
from reparam_jax.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _data(source: str, eval_source: str, **extra) -> ml_collections.ConfigDict:
  fields = dict(name="", source=source, eval_source=eval_source, label_names=(),
                skip_malformed=False, tfds_dir="")
  return ml_collections.ConfigDict({**fields, **extra})


def test_tsv_with_a_header_and_by_column_number(tmp_path: Path) -> None:
  (tmp_path / "train.tsv").write_text("sentence\tlabel\na fine film\t1\nawful\t0\n\n"
                                      "dull , flat\t0\n")
  (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngreat\t1\n")
  names, splits = load_classification(_data(f"tsv:{tmp_path}/train.tsv",
                                            f"tsv:{tmp_path}/dev.tsv"))
  assert names == ("0", "1")  # class numbers 0..max, no names given
  texts, labels, pairs = splits["train"]
  assert (texts, labels.tolist(), pairs) == (["a fine film", "awful", "dull , flat"], [1, 0, 0],
                                             None)
  # CoLA's layout: no header, the sentence in column 3 and the label in column 1.
  (tmp_path / "cola.tsv").write_text("gj04\t1\t\tThe sailors rode the breeze .\n"
                                     "gj04\t0\t*\tThe more we study verbs .\n")
  spec = f"tsv:{tmp_path}/cola.tsv?header=false&text=3&label=1"
  names, splits = load_classification(_data(spec, spec, label_names=("unacceptable",
                                                                       "acceptable")))
  assert names == ("unacceptable", "acceptable")
  assert splits["validation"][0] == ["The sailors rode the breeze .", "The more we study verbs ."]
  assert splits["validation"][1].tolist() == [1, 0]


def test_sentence_pairs_and_class_names_as_labels(tmp_path: Path) -> None:
  (tmp_path / "train.tsv").write_text(
      "index\tsentence1\tsentence2\tlabel\n0\tA dog runs.\tAn animal moves.\tentailment\n"
      "1\tIt rains.\tThe sun is out.\tnot_entailment\n")
  spec = f"tsv:{tmp_path}/train.tsv?text=sentence1&pair=sentence2"
  names, splits = load_classification(_data(spec, spec))
  assert names == ("entailment", "not_entailment")  # sorted label strings
  texts, labels, pairs = splits["train"]
  assert pairs == ["An animal moves.", "The sun is out."] and labels.tolist() == [0, 1]
  # Declared names fix the numbering whatever order the strings sort in.
  names, splits = load_classification(_data(spec, spec, label_names=("not_entailment",
                                                                       "entailment")))
  assert splits["train"][1].tolist() == [1, 0]


def test_jsonl_nested_fields_and_an_unknown_eval_label(tmp_path: Path) -> None:
  rows = [{"review": {"body": "good"}, "stars": "pos"}, {"review": {"body": "bad"}, "stars": "neg"}]
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "dev.jsonl").write_text(json.dumps({"review": {"body": "meh"}, "stars": "mid"})
                                      + "\n")
  spec = "jsonl:{}?text=review.body&label=stars"
  data = _data(spec.format(f"{tmp_path}/train.jsonl"), spec.format(f"{tmp_path}/dev.jsonl"))
  with pytest.raises(UserError) as err:
    load_classification(data)
  assert "dev.jsonl:1: label 'mid' is not one of the 2 classes (neg, pos)" in str(err.value)
  assert "\n" not in str(err.value)
  data.skip_malformed = True
  names, splits = load_classification(data)
  assert names == ("neg", "pos") and splits["train"][0] == ["good", "bad"]
  assert splits["validation"][0] == []


@pytest.mark.parametrize("content,message", [
    ("sentence\tlabel\nonly text\n", "train.tsv:2: 1 tab-separated fields, the header has 2"),
    ("text\tlabel\nhi\t1\n", "train.tsv:2: no field 'sentence' (fields: text, label)"),
    ("sentence\tlabel\n \t1\n", "train.tsv:2: empty text in field 'sentence'"),
    (b"sentence\tlabel\n\xff\t1\n", "train.tsv:2: not UTF-8 (byte 0)"),
])
def test_malformed_rows_are_one_line_errors_or_skipped(tmp_path: Path, content, message) -> None:
  path = tmp_path / "train.tsv"
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok\t0\nfine\t1\n")
  data = _data(f"tsv:{path}", f"tsv:{tmp_path}/dev.tsv")
  with pytest.raises(UserError) as err:
    load_classification(data)
  assert message in str(err.value) and "\n" not in str(err.value)
  assert "--config.data.skip_malformed=True" in str(err.value)
  src = labelled.open_labelled(f"tsv:{path}", skip_malformed=True)
  assert src.examples() == [] and src.skipped == 1


def test_bad_specs_and_missing_settings(tmp_path: Path) -> None:
  with pytest.raises(UserError, match="unknown option 'txt' \\(tsv takes: text, pair, label, header"):
    labelled.open_labelled(f"tsv:{tmp_path}/x.tsv?txt=a")
  with pytest.raises(UserError, match="the glob matches no file"):
    labelled.open_labelled(f"tsv:{tmp_path}/*.tsv").examples()
  os.environ.pop("REPARAM_NO_SUCH_VAR", None)
  with pytest.raises(UserError, match="names an unset environment variable"):
    labelled.open_labelled("tsv:$REPARAM_NO_SUCH_VAR/train.tsv").examples()
  with pytest.raises(UserError, match="config.data.eval_source is empty"):
    load_classification(_data(f"tsv:{tmp_path}/x.tsv", ""))
  (tmp_path / "one.tsv").write_text("sentence\tlabel\na\t0\nb\t0\n")
  with pytest.raises(UserError, match="its labels make 1 class"):
    load_classification(_data(f"tsv:{tmp_path}/one.tsv", f"tsv:{tmp_path}/one.tsv"))


def test_a_tfds_dataset_with_a_class_label_and_a_pair(tmp_path: Path) -> None:
  import tensorflow_datasets as tfds

  class TinyPairs(tfds.core.GeneratorBasedBuilder):
    """Four labelled sentence pairs, prepared offline."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "premise": tfds.features.Text(), "hypothesis": tfds.features.Text(),
          "label": tfds.features.ClassLabel(names=["yes", "no", "maybe"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(4), "validation": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"premise": f"p{i} ✓", "hypothesis": f"h{i}", "label": i % 3}

  data = _data("tfds:tiny_pairs?text=premise&pair=hypothesis",
               "tiny_pairs:1.0.0?split=validation&text=premise&pair=hypothesis",
               tfds_dir=str(tmp_path / "tfds"))
  names, splits = load_classification(data)
  assert names == ("yes", "no", "maybe")  # the ClassLabel's, not 0..max
  texts, labels, pairs = splits["train"]
  # In the order TFDS stored them (it shuffles by key when preparing).
  assert sorted(zip(texts, pairs, labels.tolist())) == [
      ("p0 ✓", "h0", 0), ("p1 ✓", "h1", 1), ("p2 ✓", "h2", 2), ("p3 ✓", "h3", 0)]
  assert sorted(splits["validation"][0]) == ["p0 ✓", "p1 ✓"]


def test_glue_configs_name_tfds_glue_and_read_glues_own_tsv_layouts(tmp_path: Path) -> None:
  import tensorflow_datasets as tfds
  config, _ = config_load.load([f"--config={REPO}/configs/glue/mnli.py"])
  assert config.data.source == "tfds:glue/mnli?split=train&text=premise&pair=hypothesis"
  assert config.data.eval_source.startswith("tfds:glue/mnli?split=validation_matched")
  assert config.encoder.num_classes == 3 and config.seq_len == 128
  # TFDS's glue/mrpc builder itself (its mock data: no download).
  config, _ = config_load.load([f"--config={REPO}/configs/glue/mrpc.py"])
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    names, splits = load_classification(config.data)
  assert names == ("not_equivalent", "equivalent")
  assert len(splits["train"][0]) == len(splits["train"][2]) == 6
  # GLUE's download of MRPC: the columns as its train.tsv / dev.tsv name them.
  glue = tmp_path / "MRPC"
  glue.mkdir()
  for f in ("train.tsv", "dev.tsv"):
    (glue / f).write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                          "1\t702876\t702977\tHe said so .\tHe told us .\n"
                          "0\t2108705\t2108831\tYes .\tNo .\n")
  config, _ = config_load.load([f"--config={REPO}/configs/glue/mrpc.py:{glue}"])
  names, splits = load_classification(config.data)
  assert splits["validation"] == (["He said so .", "Yes ."], splits["validation"][1],
                                  ["He told us .", "No ."])
  assert splits["validation"][1].tolist() == [1, 0]


def test_the_sst2_tsvs_read_as_a_labelled_source_equal_the_builtin_dataset(
    raw_data_dir: str, tfds_dir: str) -> None:
  builtin = load_classification(ml_collections.ConfigDict(dict(
      name="sst2", raw_dir=raw_data_dir, tfds_dir=tfds_dir, skip_malformed=False)))
  config, _ = config_load.load([f"--config={REPO}/configs/glue/sst2.py:{raw_data_dir}/sst2"])
  names, splits = load_classification(config.data)
  assert names == builtin[0] == ("negative", "positive")
  for split in ("train", "validation"):
    assert splits[split][0] == builtin[1][split][0]
    np.testing.assert_array_equal(splits[split][1], builtin[1][split][1])
  assert len(splits["validation"][0]) == 872
