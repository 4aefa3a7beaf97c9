"""Through the real trainer: penalties in metrics.jsonl, early stopping (+ resume), dropout."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.config import load as config_load
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.tasks import make_task
from reparam_jax.training import optim, sharding, steps
from reparam_jax.training.early_stopping import EarlyStopping
from tests.helpers import QUICKSTART, tiny_args

PENALTIES = ("l1", "l2", "nuclear", "orthogonal")
# lr 0.3 after a 2-step warm-up: the eval loss is best early and then gets worse.
ES_RUN = dict(num_steps=40, eval_every=2, checkpoint_every=3, optimizer__lr=0.3,
              early_stopping__metric="eval/loss", early_stopping__patience=3,
              reg__l1=1e-4, reg__l2=1e-4,
              reg__rules="((r'block_0/mlp/fc_in/kernel', 'nuclear(1e-3)|orthogonal(1e-3)'),)")


def _evals(workdir):
  return [(r["step"], r["eval/loss"]) for r in rundir.read_metrics(workdir)
          if "eval/loss" in r]


@pytest.fixture(scope="module")
def es_run(tmp_path_factory, raw_data_dir, tfds_dir):
  workdir = str(tmp_path_factory.mktemp("es"))
  final = train.main(tiny_args(workdir, raw_data_dir, tfds_dir, **ES_RUN))
  return workdir, final


def test_each_penalty_is_logged_and_added_to_the_loss(es_run):
  workdir, _ = es_run
  records = [r for r in rundir.read_metrics(workdir) if "train/loss" in r]
  assert records
  for r in records:  # log_every=1: one step per record, so the sum is exact up to rounding
    terms = [r[f"train/penalty/{k}"] for k in PENALTIES]
    assert all(t > 0 for t in terms), r
    assert r["train/total_loss"] == pytest.approx(r["train/loss"] + sum(terms), rel=1e-5)


def test_early_stopping_stops_after_patience_and_restores_the_best(es_run):
  workdir, final = es_run
  evals = _evals(workdir)
  # Recompute the rule from the log: best so far, and the first eval that is the
  # `patience`-th in a row not improving on it.
  best, best_step, bad, stop = None, None, 0, None
  for step, loss in evals:
    if best is None or loss < best:
      best, best_step, bad = loss, step, 0
    else:
      bad += 1
      if bad == 3:
        stop = step
        break
  assert stop is not None, evals
  assert final["stop_reason"] == "early_stopping" and final["step"] == stop < 40
  assert evals[-1][0] == stop  # nothing trained or evaluated after the stop
  assert final["best_step"] == best_step and final["best_value"] == best
  # done.json's eval is a fresh evaluation of the restored params: the best one.
  assert final["eval/loss"] == pytest.approx(best, rel=1e-6)
  with open(os.path.join(workdir, "done.json")) as f:
    assert json.load(f)["stop_reason"] == "early_stopping"
  # The latest train checkpoint (the stop step) holds exactly the best params.
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == stop
  latest, best_params = checkpoint.load_params(workdir), checkpoint.load_params(
      final["best_params"])
  for a, b in zip(jax.tree.leaves(latest), jax.tree.leaves(best_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rerun_of_an_early_stopped_run_trains_no_further(es_run, raw_data_dir, tfds_dir, capsys):
  workdir, final = es_run
  before = _evals(workdir)
  again = train.main(tiny_args(workdir, raw_data_dir, tfds_dir, **ES_RUN))
  assert "already finished" in capsys.readouterr().out
  assert again == json.loads(json.dumps(final)) and _evals(workdir) == before


def test_counters_replayed_from_metrics_match_the_live_ones(es_run):
  workdir, final = es_run
  cfg = config_load.load_config_file(QUICKSTART).early_stopping
  cfg.metric, cfg.patience = "eval/loss", 3
  live = EarlyStopping.from_config(cfg, workdir)
  for step, loss in _evals(workdir):
    live.update(step, {"eval/loss": loss})
    replayed = EarlyStopping.from_config(cfg, workdir)
    replayed.resume(step)
    assert (replayed.best, replayed.best_step, replayed.bad_evals, replayed.stop_step,
            replayed.improvements) == (live.best, live.best_step, live.bad_evals,
                                       live.stop_step, live.improvements)
  assert live.stop_step == final["step"]


@pytest.mark.slow
def test_resumed_early_stopping_run_ends_like_the_uninterrupted_one(es_run, tmp_path,
                                                                    raw_data_dir, tfds_dir):
  """A crash after the last checkpoint before the stop: the rerun replays the counters
  from metrics.jsonl, retrains, and stops at the same step with the same best."""
  src, final = es_run
  workdir = str(tmp_path / "run")
  shutil.copytree(src, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  resume_at = steps[-2]
  shutil.rmtree(os.path.join(ckpt_dir, str(steps[-1])))
  os.remove(os.path.join(workdir, "done.json"))
  again = train.main(tiny_args(workdir, raw_data_dir, tfds_dir, **ES_RUN))
  for key in ("step", "stop_reason", "best_step", "best_value"):
    assert again[key] == final[key], key
  assert again["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-6)
  assert _evals(workdir) == _evals(src) and resume_at < final["step"]


DROPOUTS = ("embed_dropout", "attention_dropout", "residual_dropout")


@pytest.mark.parametrize("which", [DROPOUTS] + [
    pytest.param((k,), marks=pytest.mark.slow) for k in DROPOUTS])
def test_dropout_is_active_in_training_only(which, tmp_path, raw_data_dir, tfds_dir):
  """The train step's loss depends on its (step-derived) dropout rng; evaluation does not
  drop out: it equals the same params' evaluation in a model without dropout."""
  args = tiny_args(str(tmp_path), raw_data_dir, tfds_dir, **{f"model__{k}": 0.5 for k in which})
  config, _ = config_load.load(args)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_tuple(config.axis_rules)
  task = make_task(config, str(tmp_path))
  hooks = Reparam.from_config(config.reparam)
  model = task.model()
  state, _, tx = steps.create_train_state(
      steps.init_variables_fn(model, task.init_args()),
      lambda p: optim.make_optimizer(config.optimizer, 10), mesh, rules, jax.random.key(0))
  batch = next(task.train_iterator())
  step = jax.jit(steps.make_train_step(model, task, tx, hooks,
                                         optim.learning_rate_schedule(config.optimizer, 10), 1,
                                         jax.random.key(1)))
  with jax.set_mesh(mesh):
    losses = [float(step(state.replace(step=state.step + i), batch)[1]["loss"])
              for i in range(2)]
    again = float(step(state, batch)[1]["loss"])
  assert losses[0] != losses[1]  # a different dropout mask per step
  assert again == losses[0]  # …derived from the step: reproducible on resume

  config.unlock()
  for k in which:
    config.model[k] = 0.0
  plain = make_task(config, str(tmp_path)).model()
  eval_batch = next(iter(task.eval_batches()))
  with jax.set_mesh(mesh):
    got = steps.make_eval_step(model, task)(state, eval_batch)
    want = steps.make_eval_step(plain, task)(state, eval_batch)
  np.testing.assert_allclose(float(got["loss_sum"]), float(want["loss_sum"]), rtol=1e-6)
