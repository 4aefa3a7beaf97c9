r"""Quick-start LM with every block matrix reparameterized: `lora(rank={lora_rank}, alpha=16)`.

LoRA fine-tuning: frozen W₀ plus (α/r)·B A with B = 0 at init; everything
else is frozen too (the `.*` → frozen rule), so only the adapters train.
Start from a trained dense run: `--config.init_from=workdirs/shakespeare_char`.
Same data, model, optimizer and 2000 steps as configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_lora.py --workdir=workdirs/shakespeare_char_lora

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured.
Expected: not measured yet.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "lora(rank={lora_rank}, alpha=16)"),)
  c.reparam.rules += ((r".*", "frozen"),)
  c.reparam.lora_rank = 8
  return c
