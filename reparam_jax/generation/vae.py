"""Sentences from a trained text VAE: decoding latents, encoding sentences to their means."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.data import lines
from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.models.text_vae import TextVAE
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir.workdir import read_config
from reparam_jax.tasks.text_vae import vae_model


def decode_batch(model: TextVAE, params, z_NxZ: np.ndarray, seq_len: int, temperature: float,
                 rng: jax.Array) -> np.ndarray:
  """Autoregressive decoding of every z at once: [N, seq_len] generated ids (after BOS)."""
  @jax.jit
  def next_ids(buffer_NxL, t, key):
    logits = model.apply({"params": params}, buffer_NxL, z_NxZ, method=TextVAE.decode)
    logits = logits[:, t].astype(jnp.float32)
    if temperature <= 0:
      return jnp.argmax(logits, -1)
    return jax.random.categorical(key, logits / temperature, axis=-1)

  n = z_NxZ.shape[0]
  buffer = np.full((n, seq_len), lines.PAD, np.int32)
  buffer[:, 0] = lines.BOS
  out = np.full((n, seq_len), lines.PAD, np.int32)
  done = np.zeros(n, bool)
  for t in range(seq_len):
    ids = np.asarray(next_ids(buffer, t, jax.random.fold_in(rng, t)))
    out[:, t] = np.where(done, lines.PAD, ids)
    done |= ids == lines.EOS
    if t + 1 < seq_len:
      buffer[:, t + 1] = out[:, t]
    if done.all():
      break
  return out


def encode_mean(model: TextVAE, params, tokenizer, sentences: Sequence[str],
                seq_len: int) -> np.ndarray:
  records = lines.encode_lines(tokenizer, sentences, seq_len)
  enc = records[:, 1:]
  mean, _ = model.apply({"params": params}, enc, enc != lines.PAD, method=TextVAE.encode)
  return np.asarray(mean)


def sample_vae_run(workdir: str, prior: int, interpolate: Sequence[str], steps: int,
                   temperature: float, seed: int) -> tuple[list[str], np.ndarray | None]:
  """Sentences decoded from `prior` draws z ~ N(0, I), or along the line between the two
  `interpolate` sentences' posterior means; with the interpolation weights α (else None)."""
  config = read_config(workdir)
  if config.get("task") != "text_vae":
    raise UserError(f"{workdir} is a {config.get('task')!r} run, not a text_vae run")
  tokenizer = load_tokenizer(workdir)
  model = Reparam.from_config(config.reparam).wrap(vae_model(config, tokenizer.vocab_size))
  params = checkpoint.load_params(workdir)
  rng = jax.random.key(seed)
  alpha = None
  if prior:
    z = np.asarray(jax.random.normal(jax.random.fold_in(rng, 1),
                                     (prior, int(config.vae.latent_dim))))
  else:
    mean = encode_mean(model, params, tokenizer, interpolate, config.seq_len)
    alpha = np.linspace(0.0, 1.0, steps)[:, None]
    z = (1 - alpha) * mean[0] + alpha * mean[1]
  ids = decode_batch(model, params, z.astype(np.float32), config.seq_len, temperature, rng)
  return [lines.decode_ids(tokenizer, row) for row in ids], alpha
