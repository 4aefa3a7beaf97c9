r"""Quick-start LM trained with int8 quantization-aware training (W8A8 fake quantization).

Every attention and MLP kernel is `quant(bits={bits}, act_bits={act_bits})`
(docs/compression.md): symmetric per-output-channel weight fake quantization
with a straight-through estimator, and per-token fake quantization of each
layer's input inside the project Dense (`left_matmul`).  `--config.reparam.bits=4`
trains for int4 weights; `--config.reparam.act_bits=0` quantizes weights only.
Same data, model, optimizer and 2000 steps as configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_qat.py --workdir=workdirs/shakespeare_char_qat

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured on a quiet machine at 2000 steps (median train step 39 ms vs
dense 51 ms at 1000 steps, experiments/results/reparam_comparison/table.md); 28 min on the same
machine shared with other jobs (experiments/results/reparam_comparison/README.md).
Expected: validation loss 1.905 at step 2000 with W8A8 fake quantization in the
eval too (dense 1.898; experiments/results/reparam_comparison/README.md); 2.104
at 1000 steps vs dense 2.104 (experiments/results/reparam_comparison/table.md).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "quant(bits={bits}, act_bits={act_bits})"),)
  c.reparam.bits = 8
  c.reparam.act_bits = 8
  return c


def get_sweep(hyper):
  return hyper.sweep("reparam.bits", [8, 4])
