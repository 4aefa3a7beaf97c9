"""The trainer end to end on a tiny model: artifacts, sharding, resume.

Several processes through jax.distributed: tests/test_multihost.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.config import load as config_load
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.training import optim, sharding, steps
from tests.helpers import REPO, run_train_subprocess, tensorboard_scalars, tiny_args, xla_flags


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in rundir.read_metrics(workdir)
          if "train/loss" in r}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, raw_data_dir, tfds_dir):
  """An uninterrupted 12-step run on 8 devices (data parallel), in process."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  args = tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=12)
  final = train.main(args)
  return workdir, final


def test_run_writes_metrics_tensorboard_checkpoints_and_done(reference_run):
  workdir, final = reference_run
  records = rundir.read_metrics(workdir)
  train_records = [r for r in records if "train/loss" in r]
  eval_records = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in train_records] == list(range(1, 13))
  assert {"train/tokens_per_sec", "train/lr", "train/grad_norm"} <= set(train_records[0])
  assert [r["step"] for r in eval_records] == [5, 10, 12]
  assert eval_records[-1]["eval/perplexity"] == pytest.approx(
      np.exp(eval_records[-1]["eval/loss"]), rel=1e-6)
  assert train_records[-1]["train/loss"] < train_records[0]["train/loss"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))[0].startswith("events.out.tfevents")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "12", "5"]
  with open(os.path.join(workdir, "done.json")) as f:
    assert json.load(f)["eval/loss"] == pytest.approx(final["eval/loss"])


def test_checkpoint_round_trip(reference_run, tmp_path):
  workdir, _ = reference_run
  params = checkpoint.load_params(workdir)
  checkpoint.save_params(str(tmp_path / "params"), params)
  again = checkpoint.load_params(str(tmp_path))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_generates_from_checkpoint(reference_run):
  from reparam_jax import sample
  workdir, _ = reference_run
  (text,) = sample.main([f"--workdir={workdir}", "--prompt=ROMEO:", "--num_tokens=20"])
  assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


def test_interrupted_then_resumed_equals_uninterrupted(reference_run, tmp_path, raw_data_dir,
                                                       tfds_dir):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "run")
  args = tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=12)
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.Popen([sys.executable, "-m", "reparam_jax.train", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and max(_losses(workdir), default=0) < 3:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "preempted: checkpoint saved at step" in out
  stopped = int(out.split("checkpoint saved at step ")[1].split(";")[0])
  assert stopped < 12, "the run finished before it could be interrupted"
  result = run_train_subprocess(args, devices=8)
  assert result.returncode == 0, result.stderr
  assert f"resumed from step {stopped}" in result.stdout
  assert _losses(workdir) == _losses(ref_dir)  # exactly, step by step
  # point.json says what ran: both starts, how each ended, at which commit.
  point = json.loads(open(os.path.join(workdir, "point.json")).read())
  assert point["starts"] == 2 and point["status"] == "done" and point["end"]
  assert [h["status"] for h in point["history"]] == ["preempted", "done"]
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
  if head.returncode == 0:  # a checkout (an sdist has no commit to record)
    assert point["provenance"]["commit"] == head.stdout.strip()
  assert point["provenance"]["config_hash"] and point["provenance"]["packages"]["jax"]


def test_tensorboard_after_resume_shows_each_step_once(tmp_path, raw_data_dir, tfds_dir):
  """A run killed after logging past its last checkpoint redoes those steps on resume."""
  import shutil
  workdir = str(tmp_path)
  args = tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=6, checkpoint_every=4,
                   eval_every=100)
  assert run_train_subprocess(args).returncode == 0
  # As if killed after logging steps 5 and 6 but before the step-6 checkpoint.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  os.remove(os.path.join(workdir, "done.json"))
  result = run_train_subprocess(args)
  assert result.returncode == 0, result.stderr
  assert "resumed from step 4" in result.stdout
  shown, raw = tensorboard_scalars(os.path.join(workdir, "tensorboard"))
  assert [step for step, _ in shown["train/loss"]] == [1, 2, 3, 4, 5, 6]
  assert dict(shown["train/loss"]) == pytest.approx(_losses(workdir), rel=1e-6)
  # The killed run's steps 5 and 6 are still in its event file; only the purge hides them.
  assert raw["train/loss"] == 8


def _tiny_state(mesh, rules):
  cfg = TransformerConfig(vocab_size=65, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
                          max_len=16)
  model = Transformer(cfg)
  opt_cfg = config_load.load_config_file("configs/lm/shakespeare_char.py").optimizer
  return model, steps.create_train_state(
      steps.init_variables_fn(model, (np.zeros((1, 16), np.int32),)),
      lambda p: optim.make_optimizer(opt_cfg, 100), mesh, rules, jax.random.key(0))


def test_same_loss_on_one_and_eight_devices():
  rules = sharding.DEFAULT_AXIS_RULES
  tokens = jax.random.randint(jax.random.key(7), (8, 17), 0, 65)

  def losses_on(mesh):
    import flax.linen as nn
    model, (state, shardings, _) = _tiny_state(mesh, rules)
    def loss(params, batch):
      logits = model.apply({"params": params}, batch[:, :-1])["logits"]
      return optax_ce(logits, batch[:, 1:])
    batch = jax.device_put(tokens, sharding.batch_sharding(mesh, rules))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      value, grads = jax.jit(jax.value_and_grad(loss))(state.params, batch)
    return float(value), float(optax_global_norm(grads)), state.params

  one = losses_on(sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
  eight_mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  eight = losses_on(eight_mesh)
  assert abs(one[0] - eight[0]) < 1e-5 and abs(one[1] - eight[1]) < 1e-5
  kernel = eight[2]["block_0"]["mlp"]["fc_in"]["kernel"]  # (embed→fsdp, mlp→tensor)
  assert kernel.sharding.shard_shape(kernel.shape) == (16, 32)


def optax_ce(logits, targets):
  import optax
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_trainer_on_an_eight_device_mesh(tmp_path, raw_data_dir, tfds_dir):
  args = tiny_args(str(tmp_path), raw_data_dir, tfds_dir, num_steps=3, mesh__data=2,
                   mesh__fsdp=2, mesh__tensor=2, eval_every=3)
  result = run_train_subprocess(args, devices=8)
  assert result.returncode == 0, result.stderr
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in result.stdout
