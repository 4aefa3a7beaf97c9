r"""Quick-start LM trained with int8 quantization-aware training (W8A8 fake quantization).

Every attention and MLP kernel is `quant(bits={bits}, act_bits={act_bits})`
(docs/compression.md): symmetric per-output-channel weight fake quantization
with a straight-through estimator, and per-token fake quantization of each
layer's input inside the project Dense (`left_matmul`).  `--config.reparam.bits=4`
trains for int4 weights; `--config.reparam.act_bits=0` quantizes weights only.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_qat.py --workdir=workdirs/shakespeare_char_qat

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured (2026-11-22, seed 0, 2-core CPU shared with other jobs, ~0.5 s/step under
that load, 28 min wall): eval/loss 1.9047 (perplexity 6.72) at step 2000 with W8A8
fake quantization in the eval too; dense quick start 1.8982.
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
