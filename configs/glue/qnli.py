r"""GLUE QNLI: whether a sentence answers a question (104,743 train, 5,463 dev), fine-tuned from MiniLM.

configs/glue/common.py's recipe (3 epochs, batch 32, AdamW lr 1e-4).  Reads
TFDS's `glue/qnli`; with `:FOLDER`, GLUE's own download of the task
(`glue_data/QNLI`: train.tsv and dev.tsv).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/glue/qnli.py --workdir=workdirs/glue_qnli

Hardware: one GPU or TPU host (TFDS prepares glue/qnli on first use, which
needs the network).
Runtime: not measured (not run: this project's machines have no network for
TFDS's GLUE download).
Expected: not measured.
"""

from configs.glue import common


def get_config(arg=None):
  return common.glue_config("qnli", arg)
