r"""SST-2: compress the fine-tuned MiniLM's MLPs to rank 64 by SVD, then fine-tune.

Run after configs/sst2/minilm_finetune.py wrote workdirs/sst2_minilm_finetune.
Each block's fc_in [384, 1536] and fc_out [1536, 384] starts as the rank-64
truncated SVD of the fine-tuned weight (`lowrank`, converted from the dense
checkpoint when the run starts): 122,880 instead of 589,824 entries per
matrix (21%); attention, embeddings and head stay dense.  Then 300 steps of
fine-tuning (lr 5e-5, linear decay) recover what the truncation lost.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_lowrank.py --workdir=workdirs/sst2_minilm_lowrank

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.841 from the fine-tuned 0.877, at 68.4M of 90.9M param bytes (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm

FINETUNED = "workdirs/sst2_minilm_finetune"


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.init_from = FINETUNED
  c.reparam.rules = ((r"block_\d+/mlp/fc_(in|out)/kernel", "lowrank(rank={rank})"),)
  c.reparam.rank = 64
  c.num_steps = 300
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_steps = 18
  return c
