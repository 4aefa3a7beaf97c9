"""Text VAE: KL closed form, free bits, annealing, active units, training, sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reparam_jax import sample_vae, train
from reparam_jax.data import lines
from reparam_jax.data.tokenizers import CharTokenizer
from reparam_jax.generation import vae as generation_vae
from reparam_jax.models import TransformerConfig
from reparam_jax.models.text_vae import TextVAE
from reparam_jax.objectives import vae
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.tasks import make_task
from reparam_jax.tasks import text_vae as text_vae_task
from tests.helpers import REPO


def test_kl_matches_closed_form_and_monte_carlo():
  mean = jnp.array([[0.3, -1.2, 0.0]])
  logvar = jnp.array([[0.5, -0.7, 0.0]])
  kl = vae.gaussian_kl(mean, logvar)
  var = np.exp(np.asarray(logvar))
  expect = 0.5 * (np.asarray(mean) ** 2 + var - 1 - np.asarray(logvar))
  np.testing.assert_allclose(kl, expect, rtol=1e-6)
  assert float(kl[0, 2]) == 0.0  # q = p
  # Monte Carlo: E_q[log q(z) − log p(z)] with 200k samples.
  eps = jax.random.normal(jax.random.key(0), (200_000, 3))
  z = vae.reparameterize(mean, logvar, eps)
  log_q = -0.5 * (eps ** 2 + logvar + jnp.log(2 * jnp.pi))
  log_p = -0.5 * (z ** 2 + jnp.log(2 * jnp.pi))
  np.testing.assert_allclose((log_q - log_p).mean(0), kl[0], atol=0.02)


def test_free_bits_clamps_small_dimensions_and_stops_their_gradient():
  mean = jnp.array([[0.1, 2.0], [0.1, 2.0]])
  logvar = jnp.zeros((2, 2))
  lam = 0.5

  def objective(m):
    return vae.free_bits_kl(vae.gaussian_kl(m, logvar), lam)

  kl = vae.gaussian_kl(mean, logvar).mean(0)  # [0.005, 2.0]
  assert float(objective(mean)) == pytest.approx(lam + float(kl[1]))
  grad = jax.grad(objective)(mean)
  assert np.all(grad[:, 0] == 0) and np.all(grad[:, 1] != 0)
  assert float(vae.free_bits_kl(vae.gaussian_kl(mean, logvar), 0.0)) == pytest.approx(
      float(kl.sum()))


def test_kl_schedules():
  assert float(vae.kl_weight(50, "linear", 100, 1000)) == pytest.approx(0.5)
  assert float(vae.kl_weight(500, "linear", 100, 1000)) == 1.0
  # 4 cycles of 250 steps, ramping over the first half of each.
  cyc = [float(vae.kl_weight(s, "cyclical", 0, 1000, 4, 0.5)) for s in (0, 62.5, 125, 200, 250)]
  assert cyc == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0])
  assert float(vae.kl_weight(3, "none", 0, 10, beta_max=0.3)) == pytest.approx(0.3)


def test_active_units_on_a_constructed_example():
  # Dimension 0 varies across inputs (var 1), dimension 1 barely (var 1e-4),
  # dimension 2 not at all but sits away from 0 (var 0): one active unit.
  means = np.stack([np.tile([-1.0, 1.0], 50), np.tile([-0.01, 0.01], 50), np.full(100, 3.0)], 1)
  au, activity = vae.active_units(means.sum(0), (means ** 2).sum(0), len(means))
  assert au == 1
  np.testing.assert_allclose(activity, [1.0, 1e-4, 0.0], atol=1e-9)


def test_line_records_round_trip():
  tok = CharTokenizer.fit(["abc d"])
  row = lines.encode_line(tok.encode("ab d"), seq_len=8)
  assert row.tolist() == [lines.BOS, *(tok.encode("ab d") + lines.OFFSET), lines.EOS, 0, 0, 0]
  assert lines.decode_ids(tok, row[1:]) == "ab d"
  cut = lines.encode_line(tok.encode("abcabcabc"), seq_len=4)
  assert len(cut) == 5 and lines.EOS not in cut  # too long: truncated, no EOS


def test_model_shapes_and_latent_conditioning():
  model = _tiny_vae()
  ids = jnp.array([[1, 4, 5, 2, 0, 0], [1, 6, 2, 0, 0, 0]])
  params = model.init({"params": jax.random.key(0)}, ids, ids != 0, ids)["params"]
  assert set(params) == {"encoder", "posterior_mean", "posterior_logvar", "decoder"}
  out = model.apply({"params": params}, ids, ids != 0, ids, rngs={"latent": jax.random.key(1)})
  assert out["z"].shape == (2, 3) and out["logits"].shape == (2, 6, 12)
  a = model.apply({"params": params}, ids, jnp.zeros((2, 3)), method=TextVAE.decode)
  b = model.apply({"params": params}, ids, jnp.ones((2, 3)), method=TextVAE.decode)
  assert not np.allclose(a, b)  # the decoder reads z


def _tiny_vae(vocab=12, latent=3, L=6):
  enc = TransformerConfig(vocab_size=vocab, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=L, causal=False)
  return TextVAE(enc, TransformerConfig(**dict(enc.__dict__, causal=True)), latent_dim=latent)


def test_a_few_steps_reduce_the_elbo_loss():
  # The task's objective on real records of a few lines, optimised directly
  # (the trainer-driven version is the slow test below).
  tok = CharTokenizer.fit(["to be or not to be", "that is the question"])
  records = lines.encode_lines(tok, ["to be or not", "that is the q", "not to be"], seq_len=16)
  model = _tiny_vae(vocab=tok.vocab_size + lines.OFFSET, latent=4, L=16)
  enc, dec, targets = records[:, 1:], records[:, :-1], records[:, 1:]
  params = model.init({"params": jax.random.key(0)}, enc, enc != 0, dec)["params"]
  w = (targets != lines.PAD).astype(np.float32)

  def loss_fn(p, key):
    out = model.apply({"params": p}, enc, enc != 0, dec, rngs={"latent": key})
    logp = jax.nn.log_softmax(out["logits"])
    rec = -(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * w).sum(1).mean()
    kl = vae.gaussian_kl(out["mean"], out["logvar"])
    return rec + vae.free_bits_kl(kl, 0.05), rec + kl.sum(1).mean()

  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, key):
    (_, nelbo), g = jax.value_and_grad(loss_fn, has_aux=True)(p, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, nelbo

  nelbos = []
  for i in range(25):
    params, opt, nelbo = step(params, opt, jax.random.key(i))
    nelbos.append(float(nelbo))
  assert np.mean(nelbos[-5:]) < 0.7 * np.mean(nelbos[:5]), nelbos


def test_decoding_from_z_gives_text():
  tok = CharTokenizer.fit(["abc de"])
  model = _tiny_vae(vocab=tok.vocab_size + lines.OFFSET, latent=3, L=8)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = model.init({"params": jax.random.key(0)}, ids, ids == 0, ids)["params"]
  z = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
  out = generation_vae.decode_batch(model, params, z, 8, temperature=1.0, rng=jax.random.key(0))
  assert out.shape == (2, 8)
  texts = [lines.decode_ids(tok, row) for row in out]
  assert all(set(t) <= set("abc de") for t in texts)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, raw_data_dir, tfds_dir):
  """A tiny VAE trained for 30 steps by the real trainer (in process)."""
  workdir = str(tmp_path_factory.mktemp("vae"))
  args = [f"--config={REPO}/configs/vae/text_vae_shakespeare.py", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in {
          "data.raw_dir": raw_data_dir, "data.tfds_dir": tfds_dir, "num_steps": 30,
          "model.num_layers": 1, "model.embed_dim": 32, "model.mlp_dim": 64,
          "model.num_heads": 2, "vae.encoder_layers": 1, "vae.latent_dim": 4,
          "vae.kl_schedule": "linear", "vae.kl_warmup_steps": 10, "vae.free_bits": 0.1,
          "batch_size": 16, "log_every": 5, "eval_every": 30, "checkpoint_every": 30,
          "eval_batch_size": 1024, "optimizer.warmup_steps": 5, "optimizer.lr": 3e-3}.items()]
  return workdir, train.main(args)


@pytest.mark.slow  # the real trainer and CLI: over 3 min on the shared 2-core CPU
def test_trainer_reduces_the_elbo_loss(vae_run):
  workdir, final = vae_run
  records = [r for r in rundir.read_metrics(workdir) if "train/nelbo" in r]
  first, last = records[0], records[-1]
  assert last["train/nelbo"] < first["train/nelbo"] - 10  # nats per sentence
  assert first["train/beta"] < last["train/beta"] == 1.0  # linear warm-up over 10 steps
  assert {"eval/kl", "eval/rec", "eval/active_units"} <= set(final)
  assert final["eval/loss"] == pytest.approx(final["eval/rec"] + final["eval/kl"])
  # Active units recomputed from the trained encoder itself: dimensions whose posterior
  # mean varies across the validation sentences by more than the threshold.
  config = rundir.read_config(workdir)
  task = make_task(config, workdir)
  model = Reparam.from_config(config.reparam).wrap(task.model())
  params = checkpoint.load_params(workdir)
  means, weights = [], []
  for batch in task.eval_batches():
    enc, enc_mask, _, _ = text_vae_task._inputs(jnp.asarray(batch["tokens"]))
    mean, _ = model.apply({"params": params}, enc, enc_mask, method=TextVAE.encode)
    means.append(np.asarray(mean))
    weights.append(np.asarray(batch["row_weights"][:, 0], np.float64))
  m, w = np.concatenate(means).astype(np.float64), np.concatenate(weights)
  mu = (m * w[:, None]).sum(0) / w.sum()
  var = ((m - mu) ** 2 * w[:, None]).sum(0) / w.sum()
  assert final["eval/active_units"] == int((var > config.vae.active_threshold).sum())


@pytest.mark.slow  # the real trainer and CLI: over 3 min on the shared 2-core CPU
def test_sampler_produces_text(vae_run, capsys):
  workdir, _ = vae_run
  prior = sample_vae.main([f"--workdir={workdir}", "--prior=3", "--temperature=0.8"])
  assert len(prior) == 3 and all(isinstance(t, str) for t in prior)
  assert sum(len(t) for t in prior) > 0
  path = sample_vae.main([f"--workdir={workdir}", "--interpolate=ROMEO:|First Citizen:",
                          "--steps=4"])
  assert len(path) == 4
  assert "α=1.00" in capsys.readouterr().out


@pytest.mark.slow  # the real trainer and CLI: over 3 min on the shared 2-core CPU
def test_sampler_rejects_bad_arguments(vae_run):
  workdir, _ = vae_run
  with pytest.raises(SystemExit) as e:
    sample_vae.main([f"--workdir={workdir}"])
  assert e.value.code == 2
