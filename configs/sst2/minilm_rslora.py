r"""SST-2 with rank-stabilized LoRA (rsLoRA) on MiniLM's query and value (r = 8, α = 16).

Kalajdzievski (2023): scaling the update by α/√r instead of α/r keeps its
size independent of the rank.  Same targets, rank, α and learning rate as
minilm_lora.py, so the only change is the scale (16/√8 ≈ 5.66 instead of 2).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_rslora.py --workdir=workdirs/sst2_minilm_rslora

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime and expected dev accuracy: experiments/adapters.py's table
(experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm_lora


def get_config(arg=None):
  c = minilm_lora.get_config(arg)  # q, v of every block; finetune.freeze = "lora"
  c.reparam.rules = ((minilm_lora.QV, "lora(rank=8, alpha=16, rslora=True)"),)
  return c
