r"""SST-2 fine-tuning regularized toward the pretrained weights (L2-SP).

L2-SP (Li et al. 2018): α/2 · ‖W − W₀‖² on the encoder's block matrices, W₀ the
pretrained weights.  Each selected matrix is reparameterized as W = W₀ + Δ
(`delta`: W₀ frozen, Δ = 0 at start) and the penalty is plain L2 on the
trainable θ, i.e. on Δ = W − W₀.  AdamW's decay acts on Δ too, so it also pulls
toward W₀, not toward 0.  The head keeps ordinary decay.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_l2sp.py --workdir=workdirs/sst2_minilm_l2sp

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.876 (full fine-tuning 0.877) (one seed, commit e6bae1d;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm

BLOCK_KERNELS = minilm.BLOCK_KERNELS


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reparam.rules = ((BLOCK_KERNELS, "delta"),)
  c.reg.rules = ((BLOCK_KERNELS, "l2({l2sp}, on=theta)"),)
  c.reg.l2sp = 0.01
  return c
