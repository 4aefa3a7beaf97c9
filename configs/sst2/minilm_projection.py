r"""SST-2 with the seeds' feature-projection head, encoder unfrozen.

The head of minilm_projection_frozen.py (mean pooling → Linear to 128 →
LayerNorm → Dropout → Linear) with every weight of the encoder trained too, at
the full fine-tuning learning rate.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_projection.py --workdir=workdirs/sst2_minilm_projection

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.886 (full fine-tuning with BERT's head: 0.877) (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.encoder.pooling = "mean"
  c.encoder.feature_proj_dim = 128
  c.encoder.classifier_norm = True
  return c
