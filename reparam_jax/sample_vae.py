r"""Sentences from a trained text VAE: from the prior, or along a line between two sentences.

  python -m reparam_jax.sample_vae --workdir=DIR --prior=5 [--temperature=0] [--seed=0]
  python -m reparam_jax.sample_vae --workdir=DIR --interpolate="first sentence|second one" \
      [--steps=5]

`--prior=N` decodes N draws z ~ N(0, I).  `--interpolate` encodes both
sentences to their posterior means and decodes `steps` evenly spaced points
z = (1 − α) μ_a + α μ_b, α = 0 … 1.  Decoding is greedy at temperature 0
(the default; the clearest view of what z encodes), else sampled.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.data import lines
from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.models.text_vae import TextVAE
from reparam_jax.rundir import checkpoint
from reparam_jax.tasks.text_vae import vae_model
from reparam_jax.training import steps
from reparam_jax.training.evaluate import load_config as load_run_config


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


@exit_on_user_error
def main(argv: Sequence[str]) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prior", type=int, default=0, help="number of sentences from the prior")
  parser.add_argument("--interpolate", default="", help='two sentences, "first|second"')
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if bool(args.prior) == bool(args.interpolate):
    raise UserError("give exactly one of --prior=N or --interpolate=\"first|second\"")
  if args.prior < 0 or (args.interpolate and args.steps < 2):
    raise UserError("--prior must be positive and --steps at least 2")

  config = load_run_config(args.workdir)
  if config.get("task") != "text_vae":
    raise UserError(f"{args.workdir} is a {config.get('task')!r} run, not a text_vae run")
  tokenizer = load_tokenizer(args.workdir)
  model = steps.ReparamHooks(config.reparam).wrap(vae_model(config, tokenizer.vocab_size))
  params = checkpoint.load_params(args.workdir)
  rng = jax.random.key(args.seed)

  if args.prior:
    z = np.asarray(jax.random.normal(jax.random.fold_in(rng, 1),
                                     (args.prior, int(config.vae.latent_dim))))
  else:
    parts = args.interpolate.split("|")
    if len(parts) != 2 or not all(p.strip() for p in parts):
      raise UserError('--interpolate needs two non-empty sentences: "first|second"')
    mean = encode_mean(model, params, tokenizer, parts, config.seq_len)
    alpha = np.linspace(0.0, 1.0, args.steps)[:, None]
    z = (1 - alpha) * mean[0] + alpha * mean[1]
  ids = decode_batch(model, params, z.astype(np.float32), config.seq_len, args.temperature, rng)
  texts = [lines.decode_ids(tokenizer, row) for row in ids]
  for i, text in enumerate(texts):
    label = f"{i}" if args.prior else f"α={float(alpha[i, 0]):.2f}"
    print(f"{label}\t{text}")
  return texts


if __name__ == "__main__":
  main(sys.argv[1:])
