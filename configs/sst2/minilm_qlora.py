r"""SST-2 with QLoRA on MiniLM: every block matrix stored as packed 4-bit NF4, LoRA r = 8 on top.

minilm_lora_all.py's adapters (r = 8, α = 16 on q, k, v, the attention output and
both MLP matrices of all six layers, head trained, the rest frozen) over a base
that is not a float weight: each block matrix is stored as `q4(format=nf4,
block_size=64)` (Dettmers et al. 2023; reparam_jax/reparam/transforms/q4.py,
docs/qlora.md), 4.5 bits per weight (0.28x the bf16 bytes).  The pretrained
checkpoint is quantized when the run starts (`Reparam.adopt_dense`), so the run
starts at the quantized model (LoRA's B = 0).  Embeddings, LayerNorms and the
pooler stay as they are, as in QLoRA (which quantizes the linear layers only).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_qlora.py --workdir=workdirs/sst2_minilm_qlora

Hardware: 1 CPU host (2 cores, shared).
Runtime: about 8.5 min on the 2-core CPU box (600 steps, commit 259f96c).
Expected: dev accuracy 0.867 ± 0.004 over seeds 0–2 (commit 259f96c,
experiments/results/adapters/README.md); minilm_lora_all.py, the same adapters on
the float base: 0.865 ± 0.001.
"""

from configs.sst2 import minilm, minilm_lora_all


def get_config(arg=None):
  c = minilm_lora_all.get_config(arg)
  c.reparam.rules = ((minilm.BLOCK_KERNELS, "q4(format=nf4, block_size=64)|lora(rank=8, alpha=16)"),)
  return c
