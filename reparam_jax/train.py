r"""Trains a (reparameterized) Transformer.

  python -m reparam_jax.train --config=configs/lm/shakespeare_char.py --workdir=/tmp/run \
      [--config.optimizer.lr=3e-4 ...] [--distributed]

Read top to bottom: config → devices and mesh → task (data, model) →
sharded train state → resume → loop (step, log, eval, checkpoint) → final
eval.  A restarted run in the same workdir resumes from its last checkpoint
and reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
import tqdm

from reparam_jax import checkpoint, config_lib, freezing, optim, sharding, trainer
from reparam_jax.data.pipeline import to_global
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.metrics import MetricWriter, read_jsonl
from reparam_jax.tasks import make_task


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  flags, rest = {}, []
  for arg in argv:
    if arg.startswith("--") and "=" in arg:
      k, v = arg[2:].split("=", 1)
      flags[k] = v
    elif arg.startswith("--"):
      flags[arg[2:]] = "true"
    else:
      rest.append(arg)
  return flags, rest


def init_distributed(flags: dict[str, str]) -> None:
  """`jax.distributed.initialize` from flags, or from the cluster's environment.

  On SLURM, TPU pods and similar, `--distributed` alone suffices: JAX reads
  the coordinator, process count and id from the environment.
  """
  if "coordinator_address" in flags:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=flags["coordinator_address"],
                               num_processes=int(flags["num_processes"]),
                               process_id=int(flags["process_id"]))
  elif flags.get("distributed") == "true":
    jax.distributed.initialize()


def validate(config, mesh: jax.sharding.Mesh) -> None:
  """Checks that need the mesh; all before any compute."""
  dp = sharding.data_parallel_size(mesh, config.axis_rules)
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if value <= 0 or value % dp or value % jax.process_count():
      raise UserError(f"{name}={value} must be a positive multiple of the data-parallel size "
                      f"{dp} and of the {jax.process_count()} processes")
  if config.batch_size % config.optimizer.grad_accum_steps or (
      (config.batch_size // config.optimizer.grad_accum_steps) % dp):
    raise UserError(f"batch_size={config.batch_size} must split into "
                    f"grad_accum_steps={config.optimizer.grad_accum_steps} micro-batches, "
                    f"each a multiple of the data-parallel size {dp}")
  for name in ("num_steps", "seq_len", "log_every", "eval_every", "checkpoint_every"):
    if config[name] <= 0:
      raise UserError(f"{name} must be positive, got {config[name]}")


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir!r} is not writable ({e.strerror}); pass a writable "
                    "--workdir") from None


def evaluate(eval_step, state, task, batch_sharding) -> dict[str, float]:
  sums = None
  for batch in task.eval_batches():
    out = eval_step(state, to_global(batch, batch_sharding))
    sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
  sums = {k: float(v) for k, v in jax.device_get(sums).items()}
  return {f"eval/{k}": v for k, v in task.eval_metrics(sums).items()}


@exit_on_user_error
def main(argv: Sequence[str]) -> dict[str, float]:
  config, rest = config_lib.load(argv)
  flags, _ = parse_flags(rest)
  if "workdir" not in flags:
    raise UserError("missing --workdir=DIR (where checkpoints and metrics go)")
  workdir = os.path.abspath(flags["workdir"])
  init_distributed(flags)
  prepare_workdir(workdir)
  is_main = jax.process_index() == 0

  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  rules = sharding.rules_tuple(config.axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  task = make_task(config, workdir)
  hooks = trainer.ReparamHooks(config.reparam)
  model = hooks.wrap(task.model())
  schedule = optim.learning_rate_schedule(config.optimizer, config.num_steps)
  rng = jax.random.key(config.seed)
  state, state_shardings, tx = trainer.create_train_state(
      trainer.init_variables_fn(model, task.init_args()),
      lambda p: optim.make_optimizer(config.optimizer, config.num_steps, freezing.combine(
          hooks.trainable_mask(p), freezing.trainable_mask(p, config.get("finetune")))),
      mesh, rules, rng)
  if config.init_from:
    params = checkpoint.load_params(config.init_from, trainer.abstract_like(
        state.params, state_shardings.params))
    state = state.replace(params=params)
  n_params = trainer.count_params(state.params)
  if is_main:
    print(f"model: {n_params:,} stored parameters; mesh {dict(mesh.shape)}; "
          f"{jax.device_count()} devices, {jax.process_count()} processes", flush=True)
    if hooks.active and hasattr(hooks.lib, "log_report"):
      hooks.lib.log_report(model, state.params, config)

  train_iter = task.train_iterator()
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every=config.checkpoint_every, keep=config.keep_checkpoints,
                                 async_save=config.async_checkpointing)
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = ckpt.restore(start_step, trainer.abstract_like(state, state_shardings), train_iter)
    if is_main:
      print(f"resumed from step {start_step}", flush=True)
      _truncate_metrics(workdir, start_step)
  writer = MetricWriter(workdir)

  train_step = jax.jit(
      trainer.make_train_step(model, task, tx, hooks, schedule,
                              config.optimizer.grad_accum_steps, jax.random.fold_in(rng, 1)),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
      donate_argnums=(0,))
  eval_step = jax.jit(trainer.make_eval_step(model, task),
                      in_shardings=(state_shardings, batch_sharding))

  preemption = PreemptionFlag()
  tokens_per_step = config.batch_size * config.seq_len
  pending, last_eval = [], {}
  bar = tqdm.tqdm(total=config.num_steps, initial=start_step, disable=not is_main,
                  dynamic_ncols=True, file=sys.stdout, mininterval=2.0)
  t0 = time.perf_counter()
  with mesh, nn.logical_axis_rules(rules):
    for step in range(start_step + 1, config.num_steps + 1):
      batch = to_global(next(train_iter), batch_sharding)
      state, metrics = train_step(state, batch)
      pending.append(metrics)  # device arrays: no host sync until we log

      if step % config.log_every == 0 or step == config.num_steps:
        fetched = jax.device_get(pending)
        dt = time.perf_counter() - t0
        summary = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        summary["train/step_time_ms"] = 1000 * dt / len(fetched)
        summary["train/tokens_per_sec"] = tokens_per_step * len(fetched) / dt
        summary["train/tokens_per_sec_per_device"] = (summary["train/tokens_per_sec"]
                                                      / jax.device_count())
        writer.write(step, summary)
        _check_finite(summary["train/loss"], step)
        bar.set_postfix(loss=f"{summary['train/loss']:.4f}", refresh=False)
        bar.update(len(fetched))
        pending = []

      if step % config.eval_every == 0 or step == config.num_steps:
        last_eval = evaluate(eval_step, state, task, batch_sharding)
        writer.write(step, last_eval)
        if is_main:
          bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
      if step % config.checkpoint_every == 0 or step == config.num_steps:
        ckpt.save(step, state, _Snapshot(train_iter), force=True)
      t0 = time.perf_counter() if step % config.log_every == 0 else t0
      if preemption.requested():
        ckpt.save(step, state, _Snapshot(train_iter), force=True)
        ckpt.close()
        bar.close()
        writer.close()
        print(f"preempted: checkpoint saved at step {step}; rerun the same command to resume",
              flush=True)
        return {"step": step, "preempted": True}
  bar.close()
  ckpt.close()

  final = {"step": config.num_steps, **last_eval, "params/stored": n_params}
  if is_main:
    with open(os.path.join(workdir, "done.json"), "w") as f:
      json.dump(final, f, indent=2)
  writer.close()
  return final


class PreemptionFlag:
  """Turns SIGTERM/SIGINT into a request to checkpoint after the current step."""

  def __init__(self):
    self._flag = False
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._flag = True

  def requested(self) -> bool:
    return self._flag


class _Snapshot:
  """The iterator's position now: an async save must not see later batches."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state()).encode()

  def get_state(self) -> bytes:
    return self._state


def _check_finite(loss: float, step: int) -> None:
  if not np.isfinite(loss):
    raise UserError(f"training diverged: non-finite loss at step {step}; the last good "
                    "checkpoint is kept (lower the learning rate or enable clipping)")


def _truncate_metrics(workdir: str, step: int) -> None:
  """Drops records past the restored step: the resumed run will redo them."""
  path = os.path.join(workdir, "metrics.jsonl")
  records = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
  main(sys.argv[1:])
