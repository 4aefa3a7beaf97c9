r"""SST-2 with DoRA on MiniLM's query and value (r = 8, α = 16).

Liu et al. (2024): W = m · (W₀ + s·A B)/‖W₀ + s·A B‖_c with a trained
magnitude m per output column, written as the composition
`lora(...)|magnitude` (reparam_jax/reparam/transforms/magnitude.py).  Same
targets, rank, α, freezing and learning rate as minilm_lora.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_dora.py --workdir=workdirs/sst2_minilm_dora

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime and expected dev accuracy: experiments/adapters.py's table
(experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm_lora


def get_config(arg=None):
  c = minilm_lora.get_config(arg)  # q, v of every block; finetune.freeze = "lora"
  c.reparam.rules = ((minilm_lora.QV, "lora(rank=8, alpha=16)|magnitude"),)
  return c
