"""A sentence VAE: Transformer encoder → q(z|x) = N(μ, σ²) → z-conditioned Transformer decoder.

  encoder   non-causal `Transformer` over the sentence (padding masked),
            masked mean of its last layer → `posterior/mean`, `posterior/logvar`
  z         μ + σ·ε (ε from the `latent` rng stream if given, else the
            trainer's per-step `dropout` stream; z = μ when neither is there)
  decoder   causal Transformer whose every input embedding gets `latent_in(z)`
            added (Li et al. 2020's "embedding" injection in Optimus): each
            position sees z directly, which makes the decoder lean on it more
            than conditioning only the first step would (Bowman et al. 2016).

Parameter tree: `encoder/…` (a plain `Transformer`), `posterior/{mean,logvar}`,
`decoder/{embed, latent_in, block_i, ln_final}`; decoder logits use the tied
token table.  Reparameterization rules therefore address e.g.
`decoder/block_\\d+/mlp/fc_in/kernel`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from reparam_jax.models.block import Block
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.layers import Dense, LayerNorm
from reparam_jax.models.transformer import Embeddings, Transformer
from reparam_jax.objectives.vae import reparameterize

Array = jax.Array


class LatentDecoder(nn.Module):
  """Causal Transformer LM conditioned on z by adding a projection of z to each input."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, ids_BxL: Array, z_BxZ: Array, train: bool = False) -> Array:
    cfg = self.cfg
    B, L = ids_BxL.shape
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    embed = Embeddings(cfg, name="embed")
    x = embed(ids_BxL, positions, None, train)
    z_in = Dense(cfg.embed_dim, (None, "embed"), True, name="latent_in")(z_BxZ)
    x = x + z_in[:, None, :].astype(x.dtype)
    mask = jnp.tril(jnp.ones((L, L), bool))[None, None]
    for i in range(cfg.num_layers):
      x = Block(cfg, name=f"block_{i}")(x, mask, positions, train)
    x = LayerNorm(cfg.layer_norm_eps, name="ln_final")(x)
    return embed.attend(x)


class TextVAE(nn.Module):
  """`__call__` returns mean, logvar, z [B, Z] and the decoder's logits [B, L, V]."""

  encoder_cfg: TransformerConfig
  decoder_cfg: TransformerConfig
  latent_dim: int

  def setup(self):
    self.encoder = Transformer(self.encoder_cfg)
    self.posterior_mean = Dense(self.latent_dim, ("embed", None), True)
    self.posterior_logvar = Dense(self.latent_dim, ("embed", None), True)
    self.decoder = LatentDecoder(self.decoder_cfg)

  def encode(self, ids_BxL: Array, mask_BxL: Array, train: bool = False) -> tuple[Array, Array]:
    hidden = self.encoder(ids_BxL, padding_mask_BxL=mask_BxL, train=train)["hidden"]
    m = mask_BxL.astype(jnp.float32)[..., None]
    pooled = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return (self.posterior_mean(pooled).astype(jnp.float32),
            self.posterior_logvar(pooled).astype(jnp.float32))

  def decode(self, ids_BxL: Array, z_BxZ: Array, train: bool = False) -> Array:
    return self.decoder(ids_BxL, z_BxZ, train)

  def __call__(self, enc_ids_BxL: Array, enc_mask_BxL: Array, dec_ids_BxL: Array,
               eps_BxZ: Array | None = None, *, train: bool = False) -> dict[str, Array]:
    mean, logvar = self.encode(enc_ids_BxL, enc_mask_BxL, train)
    if eps_BxZ is None:
      stream = "latent" if self.has_rng("latent") else ("dropout" if train else None)
      eps_BxZ = (jax.random.normal(self.make_rng(stream), mean.shape) if stream
                 else jnp.zeros_like(mean))
    z = reparameterize(mean, logvar, eps_BxZ)
    return {"mean": mean, "logvar": logvar, "z": z,
            "logits": self.decode(dec_ids_BxL, z, train)}
