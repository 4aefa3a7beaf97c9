r"""SST-2 step 3: distil the fine-tuned encoder into a student with half the layers and width.

  loss = α·CE(labels) + β·T²·KL(teacher ‖ student at T) [+ γ·InfoNCE + δ·hidden MSE]

Command (after configs/sst2/finetune.py wrote workdirs/sst2_finetune):
  REPARAM_DATA_DIR=/work/shared/data TFDS_DATA_DIR=/tmp/tfds python -m reparam_jax.train \
      --config=configs/sst2/distill.py --workdir=workdirs/sst2_distill \
      --config.distill.teacher=workdirs/sst2_finetune

Hardware: 1 CPU host, 2 cores, shared with other jobs (load average 9-20).
Measured (seed 0) with the from-scratch teacher workdirs/sst2_encoder (80.5%):
student 566,594 stored parameters (40% of the teacher's 1,429,762; the teacher's
weights sit in the state's `extra`, not counted), dev accuracy 81.4% = 101% of
the teacher's, 144 s CPU time (user+sys), 8 min wall on the loaded machine.
With the documented teacher workdirs/sst2_finetune (the lr 3e-4 run, 79.6%):
student 79.7% = 100% of the teacher's, 139 s CPU, 8 min wall.
Expected: the student within ~1-2% of its teacher's accuracy, often level.
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
