r"""A sentence VAE on Tiny Shakespeare lines (character level).

Encoder: 2-layer non-causal Transformer, masked mean → μ, log σ² (16 latent
dims); decoder: 2-layer causal Transformer with z added to every input
embedding.  ELBO with cyclical KL annealing (4 cycles, ramp over half of
each; Fu et al. 2019) and 0.25 nats of free bits per dimension (Kingma et
al. 2016).  Width 64, 4 heads, lines padded to 64 characters, batch 32,
1000 steps.  The two sample_vae commands sample from the prior and interpolate.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/vae/text_vae_shakespeare.py --workdir=workdirs/text_vae_shakespeare
  python -m reparam_jax.sample_vae --workdir=workdirs/text_vae_shakespeare --prior=5
  python -m reparam_jax.sample_vae --workdir=workdirs/text_vae_shakespeare \
      --interpolate="To be, or not to be|My lord, I will" --steps=5

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: not measured on a quiet machine; about 30 min (0.4-0.6 s/step) on the
same machine shared with other jobs (experiments/results/quickstart/README.md).
Expected: −ELBO ≈ 72 nats/sentence, KL ≈ 3.6 nats, 16/16 active units at step
1000 on the validation lines (experiments/results/quickstart/README.md;
docs/tasks.md, "Text VAE").
"""

from reparam_jax.config.base import base_config
from reparam_jax.tasks.text_vae import vae_section

MEASURED = {"step": 1000, "eval/loss": 72.08, "eval/rec": 68.44, "eval/kl": 3.63,
            "eval/active_units": 16}


def get_config(arg=None):
  del arg
  c = base_config()
  c.task = "text_vae"
  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "char"
  c.seq_len = 64  # the longest line is 63 characters: every line fits with its EOS
  c.batch_size = 32
  c.num_steps = 1000
  c.model.num_layers = 2  # decoder depth
  c.model.num_heads = 4
  c.model.embed_dim = 64
  c.model.mlp_dim = 256
  c.vae = vae_section()
  c.vae.latent_dim = 16
  c.vae.encoder_layers = 2
  c.vae.kl_schedule = "cyclical"
  c.vae.kl_cycles = 4
  c.vae.kl_cycle_ratio = 0.5
  c.vae.free_bits = 0.25
  c.optimizer.lr = 1e-3
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every = 50
  c.eval_every = 250
  c.eval_batch_size = 512
  c.checkpoint_every = 250
  return c
