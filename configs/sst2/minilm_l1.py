r"""SST-2 fine-tuning with an L1 penalty on the encoder's block matrices.

coef · Σ|W| on the matrices the path rule selects (the six layers' attention
and MLP kernels; embeddings, LayerNorms, biases and the head are not
penalized), beside AdamW's decoupled weight decay 0.01 and dropout 0.1.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_l1.py --workdir=workdirs/sst2_minilm_l1

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.876 (full fine-tuning 0.877) (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm

BLOCK_KERNELS = minilm.BLOCK_KERNELS


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reg.rules = ((BLOCK_KERNELS, "l1({block_l1})"),)
  c.reg.block_l1 = 1e-6
  return c
