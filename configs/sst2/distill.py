r"""SST-2 step 3: distil the fine-tuned encoder into a student with half the layers and width.

  loss = α·CE(labels) + β·T²·KL(teacher ‖ student at T) [+ γ·InfoNCE + δ·hidden MSE]

Run after configs/sst2/finetune.py wrote workdirs/sst2_finetune (the teacher).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/distill.py --workdir=workdirs/sst2_distill \
      --config.distill.teacher=workdirs/sst2_finetune

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: not measured on a quiet machine; 8 min (139 s CPU time) on the same
machine shared with other jobs (experiments/results/sst2/README.md).
Expected: the student within ~1-2% of its teacher's accuracy, often level:
dev accuracy 79.7% taught by workdirs/sst2_finetune (79.6%), 566,594 stored
parameters (experiments/results/sst2/README.md; docs/tasks.md).
"""

from configs.sst2 import encoder


def get_config(arg=None):
  del arg
  c = encoder.get_config()  # the teacher's data, schedule and regularization
  c.task = "distill"
  c.distill.teacher = "workdirs/sst2_finetune"
  c.distill.alpha = 0.5
  c.distill.beta = 0.5
  c.distill.temperature = 2.0
  c.distill.gamma = 0.0  # SimCSE term: --config.distill.gamma=0.1 turns it on
  c.distill.hidden_weight = 0.0  # TinyBERT hidden-state MSE via a learned projection
  # Half the teacher's layers and width (teacher: 2 layers, width 128, MLP 512, 4 heads).
  c.model.num_layers = 1
  c.model.num_heads = 2
  c.model.embed_dim = 64
  c.model.mlp_dim = 256
  return c
