r"""GLUE MNLI: entailment, neutral or contradiction of a premise–hypothesis pair (392,702 train; the matched dev set, 9,815), fine-tuned from MiniLM.

configs/glue/common.py's recipe (3 epochs, batch 32, AdamW lr 1e-4).  Reads
TFDS's `glue/mnli`; with `:FOLDER`, GLUE's own download of the task
(`glue_data/MNLI`: train.tsv and dev_matched.tsv).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/glue/mnli.py --workdir=workdirs/glue_mnli

Hardware: one GPU or TPU host (TFDS prepares glue/mnli on first use, which
needs the network).
Runtime: not measured (not run: this project's machines have no network for
TFDS's GLUE download).
Expected: not measured.
"""

from configs.glue import common


def get_config(arg=None):
  return common.glue_config("mnli", arg)
