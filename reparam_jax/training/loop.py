"""The training loop: `train_and_evaluate(config, workdir)`, read top to bottom.

config → mesh → task (data, model) → sharded train state → resume → loop
(step, log, evaluate, checkpoint) → final evaluation → `done.json`.  A
restarted run in the same workdir resumes from its last checkpoint and
reproduces the uninterrupted run's losses exactly.  Distributed set-up (one
process per host) is the caller's: `python -m reparam_jax.train` does it
from its flags before calling this.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import tqdm

from reparam_jax import regularizers
from reparam_jax.config import validate as config_validate
from reparam_jax.data.pipeline import to_global
from reparam_jax.hf import compressed_tensors, peft, pretrained
from reparam_jax.perf import reparam_report
from reparam_jax.perf import rng as rng_lowering
from reparam_jax.perf.accounting import MfuMeter
from reparam_jax.reparam import Reparam, format_report
from reparam_jax.rundir import checkpoint, provenance
from reparam_jax.rundir import workdir as rundir
from reparam_jax.rundir.metrics import MetricWriter
from reparam_jax.tasks import make_task
from reparam_jax.training import (
  devices,
  early_stopping,
  freezing,
  optim,
  reliability,
  sharding,
  steps,
)
from reparam_jax.training.evaluate import evaluate, per_example_outcomes


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final metrics.

  Every user error (a bad config, a mesh that does not fit the devices, an
  unwritable workdir) is a `UserError` raised before any compute.
  """
  # --- Config, devices, mesh, workdir ------------------------------------------------------
  config = pretrained.resolve(config)  # a pretrained init_from supplies the architecture
  config_validate.validate_config(config)
  devices.configure_cpu_devices(config.perf.cpu_devices)
  rng_lowering.use_configured_lowering(config)
  rundir.prepare(workdir, jax.process_index())
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  sharding.validate_for_mesh(config, mesh)
  rules = sharding.rules_tuple(config.axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  if is_main:
    rundir.write_config(workdir, config)
    # What ran (commit, dirty flag, config hash, versions, machine, start) in point.json.
    provenance.record_start(workdir, config, process_index=0)

  # --- Task, model, reparameterization, regularizers ---------------------------------------
  task = make_task(config, workdir)
  rp = Reparam.from_config(config.reparam)
  regularizer = regularizers.Regularizer(config.get("reg"), rp.plan)
  early = early_stopping.EarlyStopping.from_config(config.get("early_stopping"), workdir)
  model = rp.wrap(task.model())
  schedule = optim.learning_rate_schedule(config.optimizer, config.num_steps)
  rng = jax.random.key(config.seed)

  # --- Sharded train state (fresh, or started from a checkpoint's params) ------------------
  state, state_shardings, tx = steps.create_train_state(
      steps.init_variables_fn(model, task.init_args()),
      lambda p: optim.make_optimizer(config.optimizer, config.num_steps, freezing.combine(
          rp.trainable_mask(p), freezing.trainable_mask(p, config.get("finetune"))),
          default_decay=rp.decay_mask),
      mesh, rules, rng)
  if config.init_from:
    # Parameters the checkpoint has are loaded; the rest (e.g. a new task head) stay fresh.
    # Converting draws LoRA's A from the seed (rng inits the model, fold 1 drives the steps).
    adopt_key = jax.random.fold_in(rng, 2)
    # A compressed-tensors folder's quantized kernels stay packed, never dequantized, where
    # the rules store them packed (its bytes become θ); elsewhere they are dense weights.
    loaded = pretrained.load_params(config.init_from, keep_packed=True)
    if config.get("init_layers"):
      loaded = pretrained.select_layers(loaded, config.init_layers, config.init_from)
    loaded = compressed_tensors.adopt_packed(loaded, rp.plan, adopt_key, config.init_from)
    if config.get("init_adapter"):  # a PEFT adapter on top of the pretrained weights
      # The model's params name where a saved classifier goes: the base folder has none.
      loaded = peft.start_from_adapter(os.path.expandvars(config.init_adapter), loaded, rp,
                                       model_params=state.params)
    params, init_summary = checkpoint.load_matching_params(
        config.init_from, steps.abstract_like(state.params, state_shardings.params),
        state.params, rp.adopt_dense(loaded, state.params, adopt_key))
    state = state.replace(params=params)
    if is_main:
      print(init_summary, flush=True)
  n_params = steps.count_params(state.params)
  train_mask = freezing.combine(rp.trainable_mask(state.params),
                                freezing.trainable_mask(state.params, config.get("finetune")))
  n_trainable = freezing.count_trainable(state.params, train_mask)
  param_bytes = int(sum(x.nbytes for x in jax.tree.leaves(state.params)))
  # What the optimizer never updates (an adapter's base): the bytes QLoRA shrinks.
  frozen_bytes = param_bytes - freezing.count_trainable(state.params, train_mask, "nbytes")
  if is_main:
    _describe(config, workdir, mesh, rp, state.params, n_params, train_mask)
  mfu_meter = MfuMeter.for_run(config, task, state.params)
  if is_main and mfu_meter is not None:
    print(mfu_meter.describe(), flush=True)

  # --- Resume --------------------------------------------------------------------------------
  train_iter = task.train_iterator()
  rel = config.reliability
  ckpt_dir = rundir.path(workdir, rundir.CHECKPOINTS)
  reliability.check_disk_space(ckpt_dir, reliability.tree_bytes(state), config.keep_checkpoints)
  ckpt = checkpoint.Checkpointer(ckpt_dir, every=config.checkpoint_every,
                                 keep=config.keep_checkpoints,
                                 async_save=config.async_checkpointing,
                                 save_retries=rel.save_retries,
                                 retry_wait_s=rel.save_retry_wait_s)
  data = checkpoint.DataRestore(train_iter)
  start_step, restored = ckpt.restore_latest_good(
      steps.abstract_like(state, state_shardings), data)
  # The metrics of the steps between the last log and the checkpoint: the first log after
  # a resume averages over the same steps as an uninterrupted run's.
  window: list[dict[str, float]] = data.extra.get("log_window", []) if start_step else []
  if start_step:
    state = restored
    if is_main:
      print(f"resumed from step {start_step}", flush=True)
  if is_main:
    rundir.truncate_metrics(workdir, start_step)  # a crash may have logged past the checkpoint
  early.resume(start_step)  # counters from metrics.jsonl up to the restored step
  done = rundir.read_done(workdir)
  if (start_step >= config.num_steps or early.stopped) and done is not None:
    ckpt.close()
    if is_main:
      print(f"already finished: {rundir.path(workdir, rundir.DONE)}", flush=True)
      provenance.record_end(workdir, "done", process_index=0)
    return done
  writer = MetricWriter(workdir, resume_step=start_step)

  # --- Compiled steps ------------------------------------------------------------------------
  train_step = jax.jit(
      steps.make_train_step(model, task, tx, rp, schedule, config.optimizer.grad_accum_steps,
                            jax.random.fold_in(rng, 1), nan_at_step=rel.nan_at_step,
                            penalties=regularizer.penalty if regularizer.active else None),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
      donate_argnums=(0,))
  eval_step = jax.jit(steps.make_eval_step(model, task),
                      in_shardings=(state_shardings, batch_sharding))

  # --- The loop ------------------------------------------------------------------------------
  preemption = reliability.PreemptionWatcher(rel.preemption_sync_every, rel.preemption_grace_s)
  divergence = reliability.DivergenceMonitor(rel.on_nonfinite, rel.max_skipped_steps)
  divergence.last_good_checkpoint = start_step or None
  # Token positions each step computes (padding included): seq_len unless the
  # task's batches vary in length (length-bucketed classification).
  tokens_in = getattr(task, "tokens_in", lambda _: config.batch_size * config.seq_len)
  pending, pending_tokens, unchecked, last_eval = [], 0, [], {}
  if not start_step:
    _log_generations(task, state.params, 0, "before training")
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
          summary = _train_summary(window, jax.device_get(pending), pending_tokens,
                                   time.perf_counter() - t0, divergence, mfu_meter)
          writer.write(step, summary)
          bar.set_postfix(loss=f"{summary['train/loss']:.4f}", refresh=False)
          bar.update(len(pending))
          pending, pending_tokens, window = [], 0, []

        if step % config.eval_every == 0 or step == config.num_steps:
          last_eval = evaluate(eval_step, state, task, batch_sharding)
          writer.write(step, last_eval)
          if is_main:
            bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
          early.observe(step, last_eval, state.params)
        finished = early.finished(step, config.num_steps)  # then the best params are saved
        if is_save and not finished:
          ckpt.save(step, state, checkpoint.DataSnapshot(
              train_iter, {"log_window": window + _host_metrics(pending)}), force=True)
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
          if is_main:
            provenance.record_end(workdir, "preempted", process_index=0)
          return {"step": step, "preempted": True}

      # --- Final evaluation --------------------------------------------------------------------
      if early.active:  # the best params become the final checkpoint and done.json's
        state, last_eval = early.restore_best(
            state, steps.abstract_like(state.params, state_shardings.params),
            lambda s: evaluate(eval_step, s, task, batch_sharding))
        ckpt.save(early.final_step(config.num_steps), state, checkpoint.DataSnapshot(train_iter),
                  force=True)
      if not last_eval:  # resumed from the final checkpoint of a run killed before done.json
        last_eval = evaluate(eval_step, state, task, batch_sharding)
        if not any("eval/loss" in r and r["step"] == config.num_steps
                   for r in rundir.read_metrics(workdir)):
          writer.write(config.num_steps, last_eval)
  except BaseException:
    _close_quietly(ckpt)  # let an in-flight save of a good state finish
    if is_main:
      provenance.record_end(workdir, "failed", process_index=0)
    raise
  finally:
    preemption.restore()
  bar.close()
  ckpt.close()
  _log_generations(task, state.params, config.num_steps, "after training")
  # The final evaluation example by example: what paired tests between rows resample.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    examples = per_example_outcomes(model, task, state, mesh, batch_sharding)
  if examples is not None and is_main:
    rundir.write_eval_examples(workdir, examples)

  final = {"step": config.num_steps, **last_eval, "params/stored": n_params,
           "params/trainable": n_trainable, "params/bytes": param_bytes,
           "params/frozen_bytes": frozen_bytes,
           **early.done_fields(config.num_steps)}
  if is_main:
    print(f"stopped at step {final['step']}: {final['stop_reason']}", flush=True)
    rundir.write_done(workdir, final)
    provenance.record_end(workdir, "done", process_index=0)
  writer.close()
  return final


def _describe(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
              rp: Reparam, params: Any, n_params: int, train_mask: Any) -> None:
  """Prints the model's size and mesh, and the reparameterization's table (also to a file),
  with the trainable counts of `train_mask` when `finetune.freeze` freezes more."""
  print(f"model: {n_params:,} stored parameters; mesh {dict(mesh.shape)}; "
        f"{jax.device_count()} devices, {jax.process_count()} processes", flush=True)
  if rp.active:  # the same table `python -m reparam_jax.report` prints
    rows = rp.report_rows(params, tokens_per_seq=config.seq_len)
    if freezing.trainable_mask(params, config.get("finetune")) is not None:
      rows = reparam_report.with_trainable(rows, params, train_mask)
    report = format_report(rows)
    print(report, flush=True)
    with open(rundir.path(workdir, rundir.REPARAM_REPORT), "w") as f:
      f.write(report + "\n")


def _train_summary(window: list[dict], fetched: list[dict], tokens: int, seconds: float,
                   divergence: reliability.DivergenceMonitor, mfu_meter: MfuMeter | None
                   ) -> dict[str, float]:
  """`train/*` means over the steps since the last log (non-finite steps left out): those
  a resumed run restored from its checkpoint (`window`) and this process's (`fetched`).
  The timing fields time this process's steps, `tokens` and `seconds`, only."""
  steps_since_log = window + fetched
  bad = [m["nonfinite"] for m in steps_since_log]
  summary = {f"train/{k}": reliability.finite_mean([m[k] for m in steps_since_log], bad)
             for k in steps_since_log[0] if k != "nonfinite"}
  if divergence.policy == "skip":
    summary["train/skipped_steps"] = len(divergence.skipped)
  summary["train/step_time_ms"] = 1000 * seconds / len(fetched)
  summary["train/tokens_per_sec"] = tokens / seconds
  summary["train/tokens_per_sec_per_device"] = (summary["train/tokens_per_sec"]
                                                / jax.device_count())
  if mfu_meter is not None:
    summary.update(mfu_meter.fields(summary["train/tokens_per_sec_per_device"]))
  return summary


def _log_generations(task: Any, params: Any, step: int, when: str) -> None:
  """The task's continuations of `config.sample.prompts` (the LM task's `generations`),
  one line each in the run's console log; every process decodes (params may span hosts)."""
  generations = getattr(task, "generations", None)
  pairs = generations(params) if generations is not None else []
  if pairs and jax.process_index() == 0:
    for i, (prompt, text) in enumerate(pairs):
      print(f"generation {i} {when} (step {step}): {json.dumps(prompt, ensure_ascii=False)} "
            f"-> {json.dumps(text, ensure_ascii=False)}", flush=True)


def _host_metrics(pending: list[dict]) -> list[dict[str, float]]:
  """Per-step metrics as JSON floats (exact for float32), for a checkpoint's log window."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


def _close_quietly(ckpt: checkpoint.Checkpointer) -> None:
  try:
    ckpt.close(retry_last=False)
  except Exception as e:  # noqa: BLE001 (the error being raised matters more)
    print(f"warning: while stopping: {e}", file=sys.stderr, flush=True)
