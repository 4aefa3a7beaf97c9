r"""What configs/glue/*.py share: a GLUE task fine-tuned from the pretrained MiniLM.

Each config names its task in `TASKS`; the data is a labelled source
(reparam_jax/data/labelled), so a task is a table row, not code:

- by default the TFDS dataset `glue/<task>` (needs TFDS's download once, or a
  `TFDS_DATA_DIR` where it was prepared: `tfds build glue/<task>
  --file_format=array_record`);
- with a folder argument, GLUE's own download of the task
  (`--config=configs/glue/rte.py:/data/glue_data/RTE`): its `train.tsv` and dev
  file, in the column layout GLUE distributes (`TSV_FIELDS`).

The classes are numbered as TFDS's ClassLabel numbers them, whichever source
is read.  Recipe: configs/sst2/minilm.py's (AdamW lr 1e-4, 6 % warm-up,
linear decay, batch 32), for 3 epochs — BERT's GLUE budget — and sequences of
64 tokens (128 for sentence pairs).  The metric logged is accuracy and macro
F1; CoLA's Matthews correlation and STS-B (a regression task, which the
classify task does not do) are not provided.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.parse

from configs.sst2 import minilm


@dataclasses.dataclass(frozen=True)
class GlueTask:
  text: str  # TFDS's feature names
  pair: str
  labels: tuple[str, ...]  # TFDS's ClassLabel names, in class-number order
  train_examples: int
  eval_split: str = "validation"
  # GLUE's download: the dev file and {text, pair, label, header} as that file lays them out.
  dev_file: str = "dev.tsv"
  tsv_fields: tuple[tuple[str, str], ...] = ()


TASKS = {
    "cola": GlueTask("sentence", "", ("unacceptable", "acceptable"), 8_551,
                     tsv_fields=(("header", "false"), ("text", "3"), ("label", "1"))),
    "sst2": GlueTask("sentence", "", ("negative", "positive"), 67_349),
    "mrpc": GlueTask("sentence1", "sentence2", ("not_equivalent", "equivalent"), 3_668,
                     tsv_fields=(("text", "#1 String"), ("pair", "#2 String"),
                                 ("label", "Quality"))),
    "qqp": GlueTask("question1", "question2", ("not_duplicate", "duplicate"), 363_846,
                    tsv_fields=(("text", "question1"), ("pair", "question2"),
                                ("label", "is_duplicate"))),
    "mnli": GlueTask("premise", "hypothesis", ("entailment", "neutral", "contradiction"),
                     392_702, eval_split="validation_matched", dev_file="dev_matched.tsv",
                     tsv_fields=(("text", "sentence1"), ("pair", "sentence2"),
                                 ("label", "gold_label"))),
    "qnli": GlueTask("question", "sentence", ("entailment", "not_entailment"), 104_743,
                     tsv_fields=(("text", "question"), ("pair", "sentence"))),
    "rte": GlueTask("sentence1", "sentence2", ("entailment", "not_entailment"), 2_490,
                    tsv_fields=(("text", "sentence1"), ("pair", "sentence2"))),
    "wnli": GlueTask("sentence1", "sentence2", ("not_entailment", "entailment"), 635,
                     tsv_fields=(("text", "sentence1"), ("pair", "sentence2"))),
}
EPOCHS = 3


def sources(name: str, tsv_dir: str | None) -> tuple[str, str]:
  """(data.source, data.eval_source) of GLUE task `name`: TFDS's, or the TSVs in `tsv_dir`."""
  task = TASKS[name]
  if tsv_dir:
    query = urllib.parse.urlencode(dict(task.tsv_fields))
    suffix = f"?{query}" if query else ""
    return (f"tsv:{tsv_dir.rstrip('/')}/train.tsv{suffix}",
            f"tsv:{tsv_dir.rstrip('/')}/{task.dev_file}{suffix}")
  fields = {"text": task.text, **({"pair": task.pair} if task.pair else {})}
  return tuple(f"tfds:glue/{name}?" + urllib.parse.urlencode({"split": split, **fields})
               for split in ("train", task.eval_split))


def glue_config(name: str, tsv_dir: str | None = None):
  task = TASKS[name]
  c = minilm.get_config()
  c.data.source, c.data.eval_source = sources(name, tsv_dir)
  c.data.label_names = task.labels
  c.encoder.num_classes = len(task.labels)
  if task.pair:
    c.seq_len = 128
    c.encoder.length_buckets = (32, 64, 96)
  c.num_steps = EPOCHS * math.ceil(task.train_examples / c.batch_size)
  c.optimizer.warmup_steps = round(0.06 * c.num_steps)
  c.eval_every = c.checkpoint_every = max(200, c.num_steps // 6)
  return c


def get_config(arg=None):
  """Any task by name, `--config=configs/glue/common.py:rte` (`:rte,/glue_data/RTE` for GLUE's
  TSVs); the per-task files are the documented entry points."""
  name, _, folder = (arg or "sst2").partition(",")
  if name not in TASKS:
    from reparam_jax.errors import UserError  # noqa: PLC0415
    raise UserError(f"unknown GLUE task {name!r}; known: {', '.join(TASKS)}")
  return glue_config(name, folder or None)
