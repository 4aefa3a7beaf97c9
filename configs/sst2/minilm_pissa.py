r"""SST-2 with PiSSA-initialized LoRA on MiniLM's query and value (r = 8, α = 16).

Meng et al. (2024): A, B start at the principal singular directions of the
pretrained weight and the frozen base holds the residual, so training moves
the principal part.  Same targets, rank, α and freezing as minilm_lora.py, a lower
learning rate: PiSSA's adapter starts as the principal part of W, so steps of
LoRA's size (1e-3) move the model's dominant directions directly.  The paper
trains LLaMA-size models at 2e-5; 2e-4 here is a guess between the two, not
tuned.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_pissa.py --workdir=workdirs/sst2_minilm_pissa

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime and expected dev accuracy: experiments/adapters.py's table
(experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm_lora


def get_config(arg=None):
  c = minilm_lora.get_config(arg)  # q, v of every block; finetune.freeze = "lora"
  c.reparam.rules = ((minilm_lora.QV, "lora(rank=8, alpha=16, init=pissa)"),)
  c.optimizer.lr = 2e-4
  return c
