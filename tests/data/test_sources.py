"""Text sources by spec string: every kind read from real files the test writes."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from reparam_jax.data import sources
from reparam_jax.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DOCS = ["First document.\nIt has two lines.", "Second: ünïcödé ✓", "third"]


def docs_of(spec: str, **kwargs) -> list[str]:
  return list(sources.open_source(spec, **kwargs))


def test_spec_parsing() -> None:
  spec = sources.parse("jsonl:/data/a*.jsonl.gz?field=body")
  assert (spec.scheme, spec.target, dict(spec.options)) == ("jsonl", "/data/a*.jsonl.gz",
                                                            {"field": "body"})
  # A glob's own '?' wildcard is not an option list.
  assert sources.parse("text:/data/part-?.txt").target == "/data/part-?.txt"
  tfds = sources.parse("c4/en:3.1.0?split=validation")
  assert (tfds.scheme, tfds.target, tfds.options["split"]) == ("tfds", "c4/en:3.1.0",
                                                               "validation")
  assert sources.parse("tiny_shakespeare").scheme == "builtin"
  assert sources.parse("tfds:tiny_shakespeare").scheme == "tfds"
  with pytest.raises(UserError, match="unknown option 'fiels' \\(jsonl takes: field\\)"):
    sources.open_source("jsonl:/x.jsonl?fiels=text")


def test_text_files_by_file_line_and_paragraph(tmp_path: Path) -> None:
  (tmp_path / "b.txt").write_text("line one\n\nline two\nline three\n\n\n")
  (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"zipped\n"))
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "c.txt").write_text("deep\n")
  spec = f"text:{tmp_path}/*.txt*"
  assert docs_of(spec) == ["zipped\n", "line one\n\nline two\nline three\n\n\n"]
  assert docs_of(spec + "?doc=line") == ["zipped", "line one", "line two", "line three"]
  assert docs_of(spec + "?doc=paragraph") == ["zipped", "line one", "line two\nline three"]
  assert docs_of(f"text:{tmp_path}/**/*.txt") == ["line one\n\nline two\nline three\n\n\n",
                                                  "deep\n"]
  src = sources.open_source(spec)
  assert src.pieces() == [str(tmp_path / "a.txt.gz"), str(tmp_path / "b.txt")]
  with pytest.raises(UserError, match="doc='sentence'; use one of file, line, paragraph"):
    sources.open_source(spec + "?doc=sentence")


def test_jsonl_field_nested_field_and_errors(tmp_path: Path) -> None:
  rows = [{"text": d, "meta": {"body": d.upper()}} for d in DOCS]
  (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
  assert docs_of(f"jsonl:{tmp_path}/*.jsonl") == DOCS
  assert docs_of(f"jsonl:{tmp_path}/*.jsonl?field=meta.body") == [d.upper() for d in DOCS]
  with pytest.raises(UserError) as err:
    docs_of(f"jsonl:{tmp_path}/*.jsonl?field=content")
  assert str(err.value) == (
      f"data source 'jsonl:{tmp_path}/*.jsonl?field=content': {tmp_path}/c.jsonl:1: no field "
      "'content' (fields: text, meta); name the text field with ?field=; fix the data or set "
      "--config.data.skip_malformed=True to skip such documents")
  (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\nnot json\n{"text": "caf\xe9"}\n'
                                     b'{"text": 3}\n{"text": "end"}\n')
  with pytest.raises(UserError, match=r"c.jsonl:2: not JSON"):
    docs_of(f"jsonl:{tmp_path}/c.jsonl")
  src = sources.open_source(f"jsonl:{tmp_path}/c.jsonl", skip_malformed=True)
  assert list(src) == ["ok", "end"] and src.skipped == 3


def test_parquet_column(tmp_path: Path) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"id": [1, 2, 3], "content": DOCS}), tmp_path / "p0.parquet")
  pq.write_table(pa.table({"id": [4], "content": ["more"]}), tmp_path / "p1.parquet")
  assert docs_of(f"parquet:{tmp_path}/*.parquet?column=content") == DOCS + ["more"]
  with pytest.raises(UserError, match=r"has no column 'text' \(columns: id, content\); name it "
                     "with \\?column="):
    docs_of(f"parquet:{tmp_path}/*.parquet")


def test_array_record_text_and_examples(tmp_path: Path) -> None:
  from array_record.python import array_record_module
  from tensorflow_datasets.proto import tf_example_pb2
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / "t.array_record"), "group_size:1")
  for d in DOCS:
    writer.write(d.encode())
  writer.close()
  assert docs_of(f"arrayrecord:{tmp_path}/t.array_record") == DOCS
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / "e.array_record"), "group_size:1")
  for d in DOCS:
    ex = tf_example_pb2.Example()
    ex.features.feature["body"].bytes_list.value.append(d.encode())
    writer.write(ex.SerializeToString())
  writer.close()
  assert docs_of(f"arrayrecord:{tmp_path}/e.array_record?feature=body") == DOCS
  with pytest.raises(UserError, match="record 0: has no bytes feature 'text'"):
    docs_of(f"arrayrecord:{tmp_path}/e.array_record?feature=text")


def test_tfds_dataset_prepared_as_array_record(tmp_path: Path) -> None:
  import tensorflow_datasets as tfds

  class TinyCorpus(tfds.core.GeneratorBasedBuilder):
    """Three documents, prepared offline."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, d in enumerate(DOCS):
        yield i, {"text": d}

  data_dir = str(tmp_path / "tfds")
  assert docs_of("tfds:tiny_corpus", tfds_dir=data_dir) == DOCS
  assert os.path.isdir(os.path.join(data_dir, "tiny_corpus", "1.0.0"))
  assert docs_of("tiny_corpus:1.0.0?split=train", tfds_dir=data_dir) == DOCS
  with pytest.raises(UserError, match=r"no split 'test' \(splits: train\)"):
    docs_of("tfds:tiny_corpus?split=test", tfds_dir=data_dir)
  with pytest.raises(UserError, match="TFDS has no dataset 'no_such_corpus'"):
    docs_of("tfds:no_such_corpus", tfds_dir=data_dir)


def test_builtin_sst2_sentences(raw_data_dir: str, tfds_dir: str) -> None:
  sentences = docs_of("sst2?split=validation", raw_dir=raw_data_dir, tfds_dir=tfds_dir)
  assert len(sentences) == 872 and all(isinstance(s, str) and s for s in sentences)


@pytest.mark.parametrize("spec,message", [
    ("text:{tmp}/none/*.txt", "the glob matches no file ({tmp}/none/*.txt); check the path"),
    ("jsonl:{tmp}/missing.jsonl", "no such file ({tmp}/missing.jsonl); check the path"),
    ("text:{tmp}", "{tmp} is a folder; give a glob of its files, e.g. {tmp}/*"),
    ("tiny_shakespear?split=train", "TFDS has no dataset 'tiny_shakespear'"),
])
def test_bad_specs_are_one_line_errors(tmp_path: Path, spec: str, message: str) -> None:
  spec, message = spec.format(tmp=tmp_path), message.format(tmp=tmp_path)
  with pytest.raises(UserError) as err:
    docs_of(spec, tfds_dir=str(tmp_path / "tfds"))
  assert message in str(err.value) and "\n" not in str(err.value)


def test_undecodable_text_names_file_and_byte(tmp_path: Path) -> None:
  (tmp_path / "x.txt").write_bytes(b"fine\nbad \xff byte\nfine again\n")
  with pytest.raises(UserError, match=r"x.txt:2: not UTF-8 \(byte 4\)"):
    docs_of(f"text:{tmp_path}/x.txt?doc=line")
  src = sources.open_source(f"text:{tmp_path}/x.txt?doc=line", skip_malformed=True)
  assert list(src) == ["fine", "fine again"] and src.skipped == 1


@pytest.mark.parametrize("name", ["c4/en:3.1.0", "wiki40b/en", "glue/sst2"])
def test_tfds_builders_that_tfds_imports_lazily_are_found(name: str) -> None:
  """c4, wiki40b, glue, ... live in TFDS's pre-`datasets/` collections, which `import
  tensorflow_datasets` registers only when first touched (TFDS's mock data: no download)."""
  import tensorflow_datasets as tfds
  feature = "sentence" if name.startswith("glue") else "text"
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = docs_of(f"tfds:{name}?split=validation&feature={feature}")
  assert len(docs) == 3 and all(isinstance(d, str) for d in docs)
