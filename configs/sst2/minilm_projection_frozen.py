r"""SST-2 with the seeds' feature-projection head on a frozen MiniLM.

Document 003's fine-tuning head: the encoder's mean-pooled sentence features
(all-MiniLM-L6-v2 was trained for mean pooling) → Linear projection to 128 →
LayerNorm → Dropout → Linear; only the head trains (`finetune.freeze=
'all_but_head'`), so this is a learned projection probe of the pretrained
features.  A probe takes a larger learning rate (3e-3).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_projection_frozen.py --workdir=workdirs/sst2_minilm_projection_frozen

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.799 with 49.8K trainable parameters (the head) (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.encoder.pooling = "mean"
  c.encoder.feature_proj_dim = 128
  c.encoder.classifier_norm = True
  c.finetune.freeze = "all_but_head"
  c.optimizer.lr = 3e-3
  return c
