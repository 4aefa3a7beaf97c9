r"""SST-2: int8 post-training quantization of the fine-tuned MiniLM (no training).

Run after configs/sst2/minilm_finetune.py wrote workdirs/sst2_minilm_finetune.
Every matrix (the blocks', the word and position embeddings, the pooler) is
stored as int8 with one float32 scale per output column (symmetric max
scaling); biases, LayerNorms and the 2-class head stay float32.  `train` runs
the `compress` pipeline for a config with `compress.recipe`
(reparam_jax/compression/from_config.py): the workdir gets the int8
checkpoint, report.md and a done.json with the dev accuracy and the bytes.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_int8.py --workdir=workdirs/sst2_minilm_int8

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 40 s on a quiet machine (two evaluations of the dev set; 80 s
beside other work at commit 50fb52d).
Expected: dev accuracy 0.874 from the fine-tuned 0.877, 20.2 MB on disk against the
float model's 84.2 MB (24.0 %; the stored arrays: 25.2 % of the float bytes)
(one seed, commit 50fb52d; experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm

FINETUNED = "workdirs/sst2_minilm_finetune"


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.init_from = FINETUNED
  c.compress.recipe = "quantize(int8)"
  c.compress.kernels = minilm.ALL_MATRICES
  return c
