r"""SST-2: the `compress` pipeline on the fine-tuned MiniLM: prune 50 %, int8, fine-tune.

Run after configs/sst2/minilm_finetune.py wrote workdirs/sst2_minilm_finetune.
The seeds' compression pipeline (documents 001 and 004) as one recipe over
every matrix of the model (blocks, word and position embeddings, pooler):
one-shot magnitude pruning of each matrix to 50 %, int8 storage with
per-column scales, then 300 steps of fine-tuning of the float weights with the
pruned entries held at zero and the int8 rounding simulated (fake
quantization), re-quantized at the end.  The zeros are stored densely; on
disk the checkpoint's compression makes them cheaper.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_compress.py --workdir=workdirs/sst2_minilm_compress

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5.5 min on a quiet machine (12.5 min beside other work at
commit 50fb52d).
Expected: dev accuracy 0.865 from the fine-tuned 0.877, 13.5 MB on disk against the
float model's 84.2 MB (16.1 %) (one seed, commit 50fb52d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm

FINETUNED = "workdirs/sst2_minilm_finetune"


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.init_from = FINETUNED
  c.compress.recipe = "prune(magnitude, 0.5), quantize(int8)"
  c.compress.kernels = minilm.ALL_MATRICES
  c.compress.finetune_steps = 300
  c.compress.finetune_lr = 5e-5
  return c
