"""Weight decay acts on weight-like θ entries only (never angles, ρ, radii, step sizes)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reparam_jax.config.base import base_config
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.training import optim

CFG = TransformerConfig(vocab_size=16, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=16,
                        max_len=4)
PATH = r"block_0/mlp/fc_in/kernel"

# Per Loshchilov & Hutter's decoupled decay: it shrinks weights.  A spherical angle
# pulled to 0 turns every column towards one axis; ρ pulled to 0 makes σ = softplus(ρ)
# grow to 0.69 on weights of scale 0.02.
EXPECTED = {
    "spherical": {"radius": False, "angles": False},
    "weightnorm": {"g": False, "v": True},
    "hypersphere(learn_scale=True)": {"direction": True, "scale": False},
    "variational": {"mu": True, "rho": False},
    "latent(dim=2)": {"z_mu": True, "z_rho": False, "dec_in": True, "dec_out": True},
    "lowrank(rank=2)": {"u": True, "v": True},
    "lora(rank=2)": {"lora_a": True, "lora_b": True},
    "quant(bits=4, scale=learned)": {"w": True, "scale": False},
    "lowrank(rank=2)|variational": {"u": {"mu": True, "rho": False},
                                    "v": {"mu": True, "rho": False}},
}


def _one_decay_step(spec: str):
  rp = Reparam.from_config(ml_collections.ConfigDict(dict(rules=((PATH, spec),))))
  params = nn.meta.unbox(rp.wrap(Transformer(CFG)).init(jax.random.key(0),
                                                        jnp.zeros((1, 4), jnp.int32))["params"])
  # Non-zero everywhere (LoRA's B starts at 0), so every decayed leaf visibly moves.
  leaves, tree = jax.tree.flatten(params)
  params = jax.tree.unflatten(tree, [jax.random.normal(jax.random.key(i), x.shape, x.dtype)
                                     for i, x in enumerate(leaves)])
  opt = base_config().optimizer
  opt.lr, opt.end_lr, opt.warmup_steps, opt.weight_decay, opt.clip_norm = 0.5, 0.5, 0, 0.5, 0.0
  tx = optim.make_optimizer(opt, 10, rp.trainable_mask(params), default_decay=rp.decay_mask)
  zeros = jax.tree.map(jnp.zeros_like, params)  # no gradient: only decay moves a leaf
  updates, _ = tx.update(zeros, tx.init(params), params)
  return params, updates


@pytest.mark.parametrize("spec", list(EXPECTED))
def test_the_optimizer_decays_exactly_the_weight_like_entries(spec):
  params, updates = _one_decay_step(spec)
  theta = updates["block_0"]["mlp"]["fc_in"]["kernel"]
  if "base" in theta:  # LoRA's frozen W₀ gets no update at all
    assert not np.any(np.asarray(theta.pop("base")))
  moved = jax.tree.map(lambda u: bool(np.any(np.asarray(u) != 0)), theta)
  assert moved == EXPECTED[spec]
  # Plain parameters keep the ndim ≥ 2 rule: matrices decay, biases and norms do not.
  assert bool(np.any(np.asarray(updates["block_0"]["mlp"]["fc_out"]["kernel"])))
  assert not np.any(np.asarray(updates["block_0"]["mlp"]["fc_out"]["bias"]))


def test_decay_rules_still_override_the_transform_default():
  rp = Reparam.from_config(ml_collections.ConfigDict(dict(rules=((PATH, "variational"),))))
  params = nn.meta.unbox(rp.wrap(Transformer(CFG)).init(jax.random.key(0),
                                                        jnp.zeros((1, 4), jnp.int32))["params"])
  from reparam_jax.regularizers.decay import decay_mask_fn
  mask = decay_mask_fn(((r".*fc_in/kernel", False),), rp.decay_mask)(params)
  assert mask["block_0"]["mlp"]["fc_in"]["kernel"] == {"mu": False, "rho": False}
  assert mask["block_0"]["mlp"]["fc_out"]["kernel"] is True
