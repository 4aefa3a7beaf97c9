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
import sys
import time
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import tqdm

from reparam_jax import regularizers
from reparam_jax.config import load as config_load
from reparam_jax.config import validate as config_validate
from reparam_jax.data.pipeline import to_global
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.perf.accounting import MfuMeter
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir.metrics import MetricWriter, read_jsonl
from reparam_jax.tasks import make_task
from reparam_jax.training import early_stopping, freezing, optim, reliability, sharding, steps


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


def local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
  """The GPUs this process drives, from `REPARAM_LOCAL_DEVICE_IDS=0,1,...` (or None).

  Set by launch/slurm.sbatch for one process per node: without it JAX's SLURM
  detection gives each process only the GPU numbered SLURM_LOCALID.
  """
  text = environ.get("REPARAM_LOCAL_DEVICE_IDS", "").strip()
  if not text:
    return None
  try:
    ids = [int(x) for x in text.split(",")]
  except ValueError:
    ids = []
  if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
    raise UserError(f"REPARAM_LOCAL_DEVICE_IDS={text!r} must list distinct device numbers "
                    "like 0,1,2,3 (or be unset for one device per process)")
  return ids


def configure_cpu_devices(count: int) -> None:
  """Starts the CPU backend as `count` devices (config.perf.cpu_devices; 0 = leave it).

  A small model's kernels are too small for one device to spread well over
  the intra-op threads; one device per core, data parallel, keeps each core
  on its own half of the batch (0.85x the quick-start step on 2 cores, but
  1.45x slower at width 1024: docs/performance.md).  An explicit
  --xla_force_host_platform_device_count wins (tests set it).
  """
  if count <= 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX already started in this process (e.g. a second in-process run)
    started = len(jax.local_devices(backend="cpu"))
    if started != count:
      print(f"warning: config.perf.cpu_devices={count} ignored: JAX's CPU backend already "
            f"started with {started} devices", file=sys.stderr)


def init_distributed(flags: dict[str, str]) -> None:
  """`jax.distributed.initialize` from flags, or from the cluster's environment.

  On SLURM, TPU pods and similar, `--distributed` alone suffices: JAX reads
  the coordinator, process count and id from the environment.
  """
  device_ids = local_device_ids(os.environ)
  if "coordinator_address" in flags:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=flags["coordinator_address"],
                               num_processes=int(flags["num_processes"]),
                               process_id=int(flags["process_id"]),
                               local_device_ids=device_ids)
  elif flags.get("distributed") == "true":
    jax.distributed.initialize(local_device_ids=device_ids)


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
  config, rest = config_load.load(argv)
  config_validate.validate_config(config)
  flags, _ = parse_flags(rest)
  if "workdir" not in flags:
    raise UserError("missing --workdir=DIR (where checkpoints and metrics go)")
  workdir = os.path.abspath(flags["workdir"])
  configure_cpu_devices(config.perf.cpu_devices)
  init_distributed(flags)
  prepare_workdir(workdir)
  is_main = jax.process_index() == 0

  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  rules = sharding.rules_tuple(config.axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  if is_main:
    reliability.atomic_write_text(os.path.join(workdir, "config.json"), config.to_json(indent=2))

  task = make_task(config, workdir)
  hooks = steps.ReparamHooks(config.reparam)
  regularizer = regularizers.Regularizer(config.get("reg"), config.reparam)
  early = early_stopping.EarlyStopping.from_config(config.get("early_stopping"), workdir)
  model = hooks.wrap(task.model())
  schedule = optim.learning_rate_schedule(config.optimizer, config.num_steps)
  rng = jax.random.key(config.seed)
  state, state_shardings, tx = steps.create_train_state(
      steps.init_variables_fn(model, task.init_args()),
      lambda p: optim.make_optimizer(config.optimizer, config.num_steps, freezing.combine(
          hooks.trainable_mask(p), freezing.trainable_mask(p, config.get("finetune")))),
      mesh, rules, rng)
  if config.init_from:
    # Parameters the checkpoint has are loaded; the rest (e.g. a new task head) stay fresh.
    params, init_summary = checkpoint.load_matching_params(
        config.init_from, steps.abstract_like(state.params, state_shardings.params),
        state.params)
    state = state.replace(params=params)
    if is_main:
      print(init_summary, flush=True)
  n_params = steps.count_params(state.params)
  if is_main:
    print(f"model: {n_params:,} stored parameters; mesh {dict(mesh.shape)}; "
          f"{jax.device_count()} devices, {jax.process_count()} processes", flush=True)
    if hooks.active:  # the same table `python -m reparam_jax.report` prints
      report = hooks.lib.format_report(
          hooks.lib.report_rows(state.params, config.reparam, tokens_per_seq=config.seq_len))
      print(report, flush=True)
      with open(os.path.join(workdir, "reparam_report.txt"), "w") as f:
        f.write(report + "\n")
  mfu_meter = MfuMeter.for_run(config, task.model(), state.params)
  if is_main and mfu_meter is not None:
    print(mfu_meter.describe(), flush=True)

  train_iter = task.train_iterator()
  rel = config.reliability
  ckpt_dir = os.path.join(workdir, "checkpoints")
  reliability.check_disk_space(ckpt_dir, reliability.tree_bytes(state), config.keep_checkpoints)
  ckpt = checkpoint.Checkpointer(ckpt_dir, every=config.checkpoint_every,
                                 keep=config.keep_checkpoints,
                                 async_save=config.async_checkpointing,
                                 save_retries=rel.save_retries,
                                 retry_wait_s=rel.save_retry_wait_s)
  start_step, restored = ckpt.restore_latest_good(
      steps.abstract_like(state, state_shardings), train_iter)
  if start_step:
    state = restored
    if is_main:
      print(f"resumed from step {start_step}", flush=True)
  if is_main:
    _truncate_metrics(workdir, start_step)  # a crash may have logged past the checkpoint
  early.resume(start_step)  # counters from metrics.jsonl up to the restored step
  done_path = os.path.join(workdir, "done.json")
  if (start_step >= config.num_steps or early.stopped) and os.path.exists(done_path):
    ckpt.close()
    with open(done_path) as f:
      if is_main:
        print(f"already finished: {done_path}", flush=True)
      return json.load(f)
  writer = MetricWriter(workdir, resume_step=start_step)

  train_step = jax.jit(
      steps.make_train_step(model, task, tx, hooks, schedule,
                              config.optimizer.grad_accum_steps, jax.random.fold_in(rng, 1),
                              nan_at_step=rel.nan_at_step,
                              penalties=regularizer.penalty if regularizer.active else None),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
      donate_argnums=(0,))
  eval_step = jax.jit(steps.make_eval_step(model, task),
                      in_shardings=(state_shardings, batch_sharding))

  preemption = reliability.PreemptionWatcher(rel.preemption_sync_every, rel.preemption_grace_s)
  divergence = reliability.DivergenceMonitor(rel.on_nonfinite, rel.max_skipped_steps)
  divergence.last_good_checkpoint = start_step or None
  # Token positions each step computes (padding included): seq_len unless the
  # task's batches vary in length (length-bucketed classification).
  tokens_in = getattr(task, "tokens_in", lambda _: config.batch_size * config.seq_len)
  pending, pending_tokens, unchecked, last_eval = [], 0, [], {}
  bar = tqdm.tqdm(total=config.num_steps, initial=start_step, disable=not is_main,
                  dynamic_ncols=True, file=sys.stdout, mininterval=2.0)
  t0 = time.perf_counter()
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for step in range(start_step + 1, (start_step if early.stopped else config.num_steps) + 1):
        host_batch = next(train_iter)
        pending_tokens += tokens_in(host_batch)
        batch = to_global(host_batch, batch_sharding)
        state, metrics = train_step(state, batch)
        pending.append(metrics)  # device arrays: no host sync until we log
        unchecked.append(metrics["nonfinite"])
        stop = preemption.should_stop(step)
        is_log = step % config.log_every == 0 or step == config.num_steps
        is_save = stop or step % config.checkpoint_every == 0 or step == config.num_steps

        if is_log or is_save:  # never log or checkpoint past an unseen non-finite step
          divergence.observe(step - len(unchecked) + 1, jax.device_get(unchecked))
          unchecked = []
        if is_log:
          fetched = jax.device_get(pending)
          dt = time.perf_counter() - t0
          bad = [m["nonfinite"] for m in fetched]
          summary = {f"train/{k}": reliability.finite_mean([m[k] for m in fetched], bad)
                     for k in fetched[0] if k != "nonfinite"}
          if divergence.policy == "skip":
            summary["train/skipped_steps"] = len(divergence.skipped)
          summary["train/step_time_ms"] = 1000 * dt / len(fetched)
          summary["train/tokens_per_sec"] = pending_tokens / dt
          summary["train/tokens_per_sec_per_device"] = (summary["train/tokens_per_sec"]
                                                        / jax.device_count())
          if mfu_meter is not None:
            summary.update(mfu_meter.fields(summary["train/tokens_per_sec_per_device"]))
          writer.write(step, summary)
          bar.set_postfix(loss=f"{summary['train/loss']:.4f}", refresh=False)
          bar.update(len(fetched))
          pending, pending_tokens = [], 0

        if step % config.eval_every == 0 or step == config.num_steps:
          last_eval = evaluate(eval_step, state, task, batch_sharding)
          writer.write(step, last_eval)
          if is_main:
            bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
          early.observe(step, last_eval, state.params)
        finished = early.finished(step, config.num_steps)  # then the best params are saved
        if is_save and not finished:
          ckpt.save(step, state, _Snapshot(train_iter), force=True)
          divergence.last_good_checkpoint = step
        t0 = time.perf_counter() if is_log else t0
        if finished:
          break
        if stop:
          ckpt.close()
          bar.close()
          writer.close()
          print(f"preempted: checkpoint saved at step {step}; rerun the same command to resume",
                flush=True)
          return {"step": step, "preempted": True}
      if early.active:  # the best params become the final checkpoint and done.json's
        state, last_eval = early.restore_best(
            state, steps.abstract_like(state.params, state_shardings.params),
            lambda s: evaluate(eval_step, s, task, batch_sharding))
        ckpt.save(early.final_step(config.num_steps), state, _Snapshot(train_iter), force=True)
      if not last_eval:  # resumed from the final checkpoint of a run killed before done.json
        last_eval = evaluate(eval_step, state, task, batch_sharding)
        if not any("eval/loss" in r and r["step"] == config.num_steps
                   for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))):
          writer.write(config.num_steps, last_eval)
  except BaseException:
    _close_quietly(ckpt)  # let an in-flight save of a good state finish
    raise
  finally:
    preemption.restore()
  bar.close()
  ckpt.close()

  final = {"step": config.num_steps, **last_eval, "params/stored": n_params,
           **early.done_fields(config.num_steps)}
  if is_main:
    print(f"stopped at step {final['step']}: {final['stop_reason']}", flush=True)
    reliability.atomic_write_text(os.path.join(workdir, "done.json"), json.dumps(final, indent=2))
  writer.close()
  return final


class _Snapshot:
  """The iterator's position now: an async save must not see later batches."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state()).encode()

  def get_state(self) -> bytes:
    return self._state


def _close_quietly(ckpt: checkpoint.Checkpointer) -> None:
  try:
    ckpt.close(retry_last=False)
  except Exception as e:  # noqa: BLE001 (the error being raised matters more)
    print(f"warning: while stopping: {e}", file=sys.stderr, flush=True)


def _truncate_metrics(workdir: str, step: int) -> None:
  """Drops records past the restored step: the resumed run will redo them."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  records = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
  reliability.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
  main(sys.argv[1:])
