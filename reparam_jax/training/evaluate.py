"""Evaluation on a task's validation split: the trainer's, and the offline tools' `Evaluator`.

`evaluate` is what the training loop logs as `eval/*`.  `Evaluator` runs the
same eval step (`steps.make_eval_step`) on params from elsewhere (a loaded
run, a pruned or compressed copy), for `reparam_jax.compress`, the
sensitivity pruner and the sparsity report.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from reparam_jax.data.pipeline import to_global
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.state import AUX_COLLECTION
from reparam_jax.rundir import sharded
from reparam_jax.tasks import make_task
from reparam_jax.training import sharding, steps

PyTree = Any


def evaluate(eval_step: Callable, state: steps.TrainState, task: Any, batch_sharding: Any
             ) -> dict[str, float]:
  """`eval/<metric>` over the task's whole validation split (sums, then the task's metrics)."""
  sums = sum_over_batches(eval_step, state,
                          (to_global(batch, batch_sharding) for batch in task.eval_batches()))
  return {f"eval/{k}": v for k, v in task.eval_metrics(sums).items()}


def per_example_outcomes(model: Any, task: Any, state: steps.TrainState, mesh: Any,
                         batch_sharding: Any) -> dict[str, np.ndarray] | None:
  """The task's `eval_examples` over the whole validation split, padding dropped, in order.

  None for a task without per-example outcomes.  The outputs are replicated so
  every process can fetch the whole split (a batch-sharded output is not
  addressable from one host of a multi-process run).
  """
  if not hasattr(task, "eval_examples"):
    return None

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(steps.make_eval_step(model, task, "eval_examples"), out_shardings=replicated)
  parts: dict[str, list[np.ndarray]] = {}
  for batch in task.eval_batches():
    out = jax.device_get(step(state, to_global(batch, batch_sharding)))
    keep = np.asarray(out.pop("weights")) > 0
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v)[keep])
  return {k: np.concatenate(v) for k, v in parts.items()}


def sum_over_batches(eval_step: Callable, state: Any, batches: Any) -> dict[str, float]:
  """The eval step's sums over `batches`, one batch in flight at a time.

  Each batch's sums are fetched before the next batch is dispatched and added
  on the host in their own dtype (float32 sums add as XLA adds them, bit for
  bit).  Dispatching every batch asynchronously deadlocked multi-process CPU
  runs (gloo collectives, 2 processes × 2 devices, a loaded machine: both
  processes waiting forever in the eval loop, 2 of 6 tries), and the eval step
  is not the hot loop, so waiting for each batch costs little.
  """
  sums = None
  for batch in batches:
    out = jax.device_get(eval_step(state, batch))
    sums = out if sums is None else {k: np.add(sums[k], v) for k, v in out.items()}
  return {k: float(v) for k, v in sums.items()}


class Evaluator:
  """`evaluate(params, masks, rules)` → {'loss': …, 'perplexity': …} on the validation split.

  One jitted eval step per rule set: re-evaluating with other masks of the same
  shapes (sensitivity pruning) does not recompile.  `max_batches` evaluates a
  prefix of the split (an estimate; None = the whole split, the reported metric).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None):
    self.config = config
    self.task = make_task(config, workdir)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.rules_tuple(config.axis_rules)
    self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    self._steps: dict[Any, Callable] = {}
    self._batches: list | None = None

  def _step(self, reparam_rules: tuple) -> tuple[Callable, dict]:
    """(the jitted eval step, the model's variable shardings) for a rule set."""
    key = tuple(tuple(r) for r in reparam_rules)
    if key not in self._steps:
      model = Reparam.from_config({**self.config.reparam.to_dict(), "rules": key}).wrap(
          self.task.model())
      abstract = jax.eval_shape(steps.init_variables_fn(model, self.task.init_args()),
                                jax.random.key(0))
      self._steps[key] = (jax.jit(steps.make_eval_step(model, self.task)),
                          sharding.logical_to_sharding(abstract, self.mesh, self.rules))
    return self._steps[key]

  def batches(self) -> list:
    if self._batches is None:
      self._batches = [to_global(b, self.batch_sharding) for b in self.task.eval_batches()]
    return self._batches

  def __call__(self, params: PyTree, reparam_rules: tuple = (), masks: PyTree | None = None,
               max_batches: int | None = None) -> dict[str, float]:
    step, shardings = self._step(reparam_rules)
    # The trainer's layout (FSDP/tensor splits of the rules table), not a replica per
    # device: params from a multi-host tool are split over the processes (rundir/sharded.py).
    params = _place(params, shardings["params"], "params")
    extra = {} if masks is None else {
        AUX_COLLECTION: _place(masks, shardings[AUX_COLLECTION], AUX_COLLECTION)}
    state = steps.TrainState(step=0, params=params, opt_state=None, extra=extra)
    if max_batches is None:  # the reported metric: exactly the trainer's evaluation
      with jax.set_mesh(self.mesh):
        out = evaluate(step, state, self.task, self.batch_sharding)
      return {k.removeprefix("eval/"): v for k, v in out.items()}
    with jax.set_mesh(self.mesh):
      sums = sum_over_batches(step, state, self.batches()[:max_batches])
    return self.task.eval_metrics(sums)


def _place(tree: PyTree, shardings: PyTree, what: str) -> PyTree:
  if jax.tree.structure(tree) != jax.tree.structure(shardings):
    raise ValueError(f"the {what} to evaluate do not have the model's structure "
                     f"({jax.tree.structure(tree)} vs {jax.tree.structure(shardings)})")
  return jax.tree.map(sharded.reshard, tree, shardings)
