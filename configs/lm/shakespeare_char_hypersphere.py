r"""Quick-start LM with every block matrix reparameterized: `hypersphere`.

nGPT-style (Loshchilov et al. 2024): every block matrix is normalized along
its embedding dimension and projected back to the unit sphere after every
optimizer step, with a learned per-vector scale.  The q, k, v and fc_in
kernels ([embed, ·]) normalize each column over the embedding axis (axis 0);
the attention out and fc_out kernels ([·, embed]) each row (axis 1).  Same
data, model, optimizer and 2000 steps as configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_hypersphere.py --workdir=workdirs/shakespeare_char_hypersphere

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured (median train step 50 ms vs dense 51 ms,
experiments/results/reparam_comparison/table.md).
Expected: not measured at 2000 steps; at 1000 steps (experiments/reparam_comparison.py)
validation loss 2.232 vs dense 2.104 (experiments/results/reparam_comparison/table.md).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  # The embedding dimension is axis 0 of what reads the residual stream and
  # axis 1 of what writes back to it.
  c.reparam.rules = (
      (r"block_\d+/(attn/(query|key|value)|mlp/fc_in)/kernel",
       "hypersphere(axis=0, learn_scale=True)"),
      (r"block_\d+/(attn/out|mlp/fc_out)/kernel", "hypersphere(axis=1, learn_scale=True)"),
  )
  return c
