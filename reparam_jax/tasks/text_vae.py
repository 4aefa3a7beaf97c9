"""Sentence VAE on line-level text (task `text_vae`): ELBO with KL annealing and free bits.

Config: `config.model` shapes the decoder (and the encoder, except its depth
`vae.encoder_layers`); `config.vae` (defaults in `vae_section()`) holds the
latent size and the ELBO's knobs.  Units: nats per sentence.

Train metrics: `loss` (the objective rec + β·KL_fb), `rec` (reconstruction
NLL), `kl` (true KL), `nelbo` (= rec + kl), `beta`, `rec_per_token`.
Eval metrics: `loss` (= −ELBO, one z sample per sentence with fixed noise),
`rec`, `kl`, `nll_bound_per_token`, and `active_units` (Burda et al. 2016:
dimensions with Cov_x(E_q[z_j]) > `vae.active_threshold` over the eval set).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reparam_jax.data import lines
from reparam_jax.data.lm_text import make_tokenizer
from reparam_jax.data.pipeline import prepare_once
from reparam_jax.errors import UserError
from reparam_jax.models import transformer_config
from reparam_jax.models.text_vae import TextVAE
from reparam_jax.objectives import vae as vae_obj
from reparam_jax.tasks.base import Task
from reparam_jax.tasks.lm import cross_entropy

Batch = dict[str, Any]
EVAL_NOISE_SEED = 1234  # eval draws the same ε every time: comparable across steps and runs


def vae_section() -> ml_collections.ConfigDict:
  """`config.vae` with its defaults; VAE configs start from this."""
  return ml_collections.ConfigDict(dict(
      latent_dim=32,
      encoder_layers=2,
      kl_schedule="cyclical",  # "none" | "linear" | "cyclical"
      kl_warmup_steps=1000,  # linear: steps from β = 0 to β_max
      kl_cycles=4,  # cyclical: number of cycles over num_steps
      kl_cycle_ratio=0.5,  # cyclical: fraction of each cycle spent ramping up
      beta_max=1.0,
      free_bits=0.0,  # λ nats per latent dimension (Kingma et al. 2016); 0 = off
      active_threshold=0.01,
  ))


def vae_model(config: ml_collections.ConfigDict, vocab_size: int) -> TextVAE:
  """The TextVAE of a config; `vocab_size` is the tokenizer's (specials are added here)."""
  model_cfg = {k: v for k, v in dict(config.model).items() if k != "preset"}
  model_cfg["vocab_size"] = (model_cfg.get("vocab_size") or vocab_size) + lines.OFFSET
  model_cfg["max_len"] = model_cfg.get("max_len") or config.seq_len
  decoder = transformer_config(dict(model_cfg, causal=True))
  encoder = transformer_config(dict(model_cfg, causal=False,
                                    num_layers=int(config.vae.encoder_layers)))
  return TextVAE(encoder, decoder, int(config.vae.latent_dim))


def _inputs(tokens_BxL1: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(encoder ids, encoder mask, decoder ids, decoder targets) of records."""
  enc, dec, targets = tokens_BxL1[:, 1:], tokens_BxL1[:, :-1], tokens_BxL1[:, 1:]
  return enc, enc != lines.PAD, dec, targets


class TextVAETask(Task):
  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    if "vae" not in config:
      raise UserError("config has no 'vae' section; VAE configs set "
                      "c.vae = reparam_jax.tasks.text_vae.vae_section()")
    self.config, self.cfg = config, config.vae
    if self.cfg.kl_schedule not in ("none", "linear", "cyclical"):
      raise UserError(f"vae.kl_schedule must be 'none', 'linear' or 'cyclical', got "
                      f"{self.cfg.kl_schedule!r}")
    if self.cfg.latent_dim <= 0 or self.cfg.free_bits < 0:
      raise UserError("vae.latent_dim must be positive and vae.free_bits non-negative")
    self.lines = lines.load_lines(config.data)
    texts = {k: "\n".join(v) for k, v in self.lines.items()}
    self.tokenizer = prepare_once(make_tokenizer, config.data, texts, workdir)
    self.records = {k: lines.encode_lines(self.tokenizer, v, config.seq_len)
                    for k, v in self.lines.items()}

  def model(self) -> nn.Module:
    return vae_model(self.config, self.tokenizer.vocab_size)

  @classmethod
  def inherited_tokenizer(cls, config: ml_collections.ConfigDict) -> str:
    """Always fits its own tokenizer on the corpus lines."""
    return ""

  @classmethod
  def model_from_config(cls, config: ml_collections.ConfigDict, vocab_size: int
                        ) -> tuple[nn.Module, tuple[np.ndarray, ...]]:
    """(`model()`, `init_args()`) without reading data (see `LanguageModelTask`)."""
    L = config.seq_len
    return vae_model(config, vocab_size), (np.zeros((1, L), np.int32), np.ones((1, L), bool),
                                           np.zeros((1, L), np.int32))

  def init_args(self) -> tuple[np.ndarray, ...]:
    L = self.config.seq_len
    return (np.zeros((1, L), np.int32), np.ones((1, L), bool), np.zeros((1, L), np.int32))

  def train_iterator(self) -> Iterator[Batch]:
    return lines.train_loader_with_step(lines.LineSource(self.records["train"]),
                                        self.config.batch_size, self.config.seed)

  def eval_batches(self) -> Iterable[Batch]:
    return lines.eval_batches(self.records["validation"], self.config.eval_batch_size)

  def beta(self, step: jax.Array) -> jax.Array:
    c = self.cfg
    return vae_obj.kl_weight(step, c.kl_schedule, c.kl_warmup_steps, self.config.num_steps,
                             c.kl_cycles, c.kl_cycle_ratio, c.beta_max)

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    enc, enc_mask, dec, targets = _inputs(batch["tokens"])
    out = apply_fn(enc, enc_mask, dec, train=train)
    weights = (targets != lines.PAD).astype(jnp.float32)
    B = targets.shape[0]
    rec_sum, tokens = cross_entropy(out["logits"], targets, weights)
    rec = rec_sum / B
    kl_BxZ = vae_obj.gaussian_kl(out["mean"], out["logvar"])
    kl = kl_BxZ.sum(1).mean()
    beta = self.beta(batch["step"][0, 0]) if "step" in batch else jnp.float32(self.cfg.beta_max)
    objective = rec + beta * vae_obj.free_bits_kl(kl_BxZ, self.cfg.free_bits)
    return objective, {"loss": objective, "rec": rec, "kl": kl, "nelbo": rec + kl,
                       "beta": beta, "rec_per_token": rec_sum / jnp.maximum(tokens, 1.0)}

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    enc, enc_mask, dec, targets = _inputs(batch["tokens"])
    rows = batch["row_weights"][:, 0].astype(jnp.float32)
    eps = jax.random.normal(jax.random.key(EVAL_NOISE_SEED),
                            (targets.shape[0], int(self.cfg.latent_dim)))
    out = apply_fn(enc, enc_mask, dec, eps, train=False)
    weights = (targets != lines.PAD).astype(jnp.float32) * rows[:, None]
    rec_sum, tokens = cross_entropy(out["logits"], targets, weights)
    kl_B = vae_obj.gaussian_kl(out["mean"], out["logvar"]).sum(1)
    mean_w = out["mean"] * rows[:, None]
    # The trainer sums scalars over batches, so the per-dimension sums that the
    # active-unit statistic needs travel as one scalar per dimension.
    sums = {"rec_sum": rec_sum, "kl_sum": (kl_B * rows).sum(), "tokens": tokens,
            "sentences": rows.sum()}
    for j in range(int(self.cfg.latent_dim)):
      sums[f"mean_sum/{j}"] = mean_w[:, j].sum()
      sums[f"mean_sq_sum/{j}"] = (mean_w[:, j] * out["mean"][:, j]).sum()
    return sums

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["sentences"], 1.0)
    rec, kl = sums["rec_sum"] / n, sums["kl_sum"] / n
    Z = int(self.cfg.latent_dim)
    au, _ = vae_obj.active_units([sums[f"mean_sum/{j}"] for j in range(Z)],
                                 [sums[f"mean_sq_sum/{j}"] for j in range(Z)], n,
                                 self.cfg.active_threshold)
    return {"loss": rec + kl, "rec": rec, "kl": kl, "active_units": float(au),
            "nll_bound_per_token": (sums["rec_sum"] + sums["kl_sum"]) / max(sums["tokens"], 1.0)}
