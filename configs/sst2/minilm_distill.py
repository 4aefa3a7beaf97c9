r"""SST-2: distil the fine-tuned MiniLM into a 3-layer student (DistilBERT's recipe).

Run after configs/sst2/minilm_finetune.py wrote workdirs/sst2_minilm_finetune.
The student has the teacher's width and every other one of its layers (blocks
0, 2, 4, `init_layers`), initialised from them, as DistilBERT (Sanh et al. 2019)
initialises from BERT; embeddings, pooler and head start from the teacher too.
Loss: 0.5·cross-entropy on the labels + 0.5·T²·KL of the soft targets at
T = 2 (Hinton et al. 2015) + 1.0·MSE between the last hidden states (no
projection: the widths are equal).  The teacher, its tokenizer and the
student's architecture come from the teacher's workdir.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_distill.py --workdir=workdirs/sst2_minilm_distill

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.861 from a teacher at 0.877; 69.6M of the teacher's 90.9M param bytes (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md); its dev-set forward 1.87× faster than the
teacher's (bench/student_forward.py, docs/performance.md).
"""

from configs.sst2 import minilm

TEACHER = "workdirs/sst2_minilm_finetune"


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.task = "distill"
  c.init_from = TEACHER
  c.init_layers = (0, 2, 4)
  c.distill.teacher = TEACHER
  c.distill.alpha = 0.5
  c.distill.beta = 0.5
  c.distill.temperature = 2.0
  c.distill.hidden_weight = 1.0
  return c
