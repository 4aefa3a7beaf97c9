r"""GLUE SST-2: sentence sentiment (67,349 train, 872 dev), fine-tuned from MiniLM.

configs/glue/common.py's recipe (3 epochs = 6,315 steps, batch 32, AdamW lr
1e-4).  Reads TFDS's `glue/sst2`; with `:FOLDER`, GLUE's own download of the
task (train.tsv and dev.tsv with a `sentence\tlabel` header), which is how it
runs offline from the raw downloads folder.

Command (offline, from the raw downloads):
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/glue/sst2.py:/path/to/raw_data/sst2 --workdir=workdirs/glue_sst2

Hardware: 1 CPU host (2 cores, 24 GiB) for the short run below; a GPU for 3 epochs.
Runtime: 3 epochs not run here.  600 steps (configs/sst2/minilm_finetune.py's budget):
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/glue/sst2.py:/path/to/raw_data/sst2 --workdir=workdirs/glue_sst2_600 \
      --config.num_steps=600 --config.optimizer.warmup_steps=36 --config.eval_every=200 \
      --config.checkpoint_every=200
  9 min 3 s (commit a607e16, 2026-12-07, 2-core AMD EPYC box, light work beside it).
Expected: dev accuracy 0.8268 / 0.8796 / 0.8773 at steps 200 / 400 / 600 (one seed), the
same to the last digit as configs/sst2/minilm_finetune.py reading SST-2 through TFDS:
the GLUE TSV files and the built-in dataset give the same examples in the same order.
"""

from configs.glue import common


def get_config(arg=None):
  return common.glue_config("sst2", arg)
