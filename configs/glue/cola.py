r"""GLUE CoLA: grammatical acceptability (8,551 train, 1,043 dev); GLUE scores it by Matthews correlation, logged here as accuracy and macro F1, fine-tuned from MiniLM.

configs/glue/common.py's recipe (3 epochs, batch 32, AdamW lr 1e-4).  Reads
TFDS's `glue/cola`; with `:FOLDER`, GLUE's own download of the task
(`glue_data/CoLA`: train.tsv and dev.tsv).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/glue/cola.py --workdir=workdirs/glue_cola

Hardware: one GPU or TPU host (TFDS prepares glue/cola on first use, which
needs the network).
Runtime: not measured (not run: this project's machines have no network for
TFDS's GLUE download).
Expected: not measured.
"""

from configs.glue import common


def get_config(arg=None):
  return common.glue_config("cola", arg)
