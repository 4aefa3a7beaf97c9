r"""SST-2: prune the fine-tuned MiniLM's block matrices to 50% by magnitude, with fine-tuning.

Run after configs/sst2/minilm_finetune.py wrote workdirs/sst2_minilm_finetune.
Gradual magnitude pruning (Zhu & Gupta 2017's cubic schedule) of every
attention and MLP matrix of the six blocks, per layer, from 0 to 50% sparsity
over steps 0–200 (every 20 steps), fine-tuning throughout and 100 steps more
at the final sparsity.  Embeddings, LayerNorms, biases, pooler and head stay
dense.  `python -m reparam_jax.compress` turns the pruned run into a smaller
file (docs/compression.md).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_prune.py --workdir=workdirs/sst2_minilm_prune

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.866 from the fine-tuned 0.877, block matrices 50 % zeros (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm

FINETUNED = "workdirs/sst2_minilm_finetune"


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.init_from = FINETUNED
  c.reparam.rules = ((minilm.BLOCK_KERNELS,
                      "mask(sparsity={sparsity}, begin_step=0, end_step=200, every=20)"),)
  c.reparam.sparsity = 0.5
  c.num_steps = 300
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_steps = 18
  return c
