r"""SST-2 with (IA)³ on MiniLM: learned rescaling of keys, values and the FFN activation.

Liu et al. (2022): l_k ⊙ k, l_v ⊙ v (the key and value kernels' output
columns) and l_ff ⊙ h (the input rows of the second FFN matrix), ones at
init: 6 × (384 + 384 + 1536) = 13,824 parameters.  (IA)³ trains with a
larger learning rate than LoRA (the paper: 3e-3); we use 3e-3.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_ia3.py --workdir=workdirs/sst2_minilm_ia3

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime and expected dev accuracy: experiments/adapters.py's table
(experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reparam.rules = (
      (r"block_\d+/attn/(key|value)/kernel", "ia3"),
      (r"block_\d+/mlp/fc_out/kernel", "ia3(side=input)"),
  )
  c.optimizer.lr = 3e-3
  c.finetune.freeze = "lora"
  return c
