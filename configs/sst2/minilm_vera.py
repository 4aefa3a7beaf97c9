r"""SST-2 with VeRA on MiniLM's query and value (r = 256).

Kopiczko et al. (2024): frozen random A, B shared by all layers, trained
scaling vectors d (r) and b (d_out) only: 2 × 6 × (256 + 384) = 7,680 adapter
parameters.  The paper trains the vectors with a larger learning rate than
LoRA's (1e-2 for its GLUE runs); we use 1e-2.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_vera.py --workdir=workdirs/sst2_minilm_vera

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime and expected dev accuracy: experiments/adapters.py's table
(experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reparam.rules = ((r"block_\d+/attn/(query|value)/kernel", "vera(rank=256)"),)
  c.optimizer.lr = 1e-2
  c.finetune.freeze = "lora"
  return c
