"""A trained run (config, params, masks) and its validation metric, for offline tools.

Used by `reparam_jax.compress`, the sensitivity pruner and the sparsity report:
the evaluation is the trainer's own eval step (`steps.make_eval_step`) over
the task's validation split, exactly as `reparam_jax.train.evaluate` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath

from reparam_jax.errors import UserError
from reparam_jax.reparam.transforms.mask import AUX_COLLECTION
from reparam_jax.rundir import checkpoint
from reparam_jax.training import sharding, steps

PyTree = Any


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  params: PyTree
  masks: PyTree | None
  workdir: str


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no config.json; is it a training workdir or compress output?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _latest_extra(workdir: str) -> PyTree | None:
  """The non-param collections of the newest train-state checkpoint, if any."""
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if not ckpt_dir.exists():
    return None
  steps = sorted((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()), reverse=True)
  for step in steps:
    state_dir = ckpt_dir / str(step) / "state"
    if not state_dir.exists():
      continue
    if not checkpoint.array_metadata(state_dir).get("extra"):
      return None
    return checkpoint.restore_on_one_device(state_dir)["extra"]
  return None


def load_run(workdir: str) -> Run:
  """A training workdir (latest checkpoint) or a `compress` output directory."""
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  params = checkpoint.load_params(workdir)
  extra = _latest_extra(workdir) or {}
  masks = extra.get(AUX_COLLECTION)
  if masks is None and os.path.isdir(os.path.join(workdir, "masks")):
    masks = checkpoint.load_params(os.path.join(workdir, "masks"))
  return Run(config, params, masks, workdir)


class Evaluator:
  """`evaluate(params, masks, rules)` → {'loss': …, 'perplexity': …} on the validation split.

  One jitted eval step per rule set: re-evaluating with other masks of the same
  shapes (sensitivity pruning) does not recompile.  `max_batches` evaluates a
  prefix of the split (an estimate; None = the whole split, the reported metric).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None):
    from reparam_jax.tasks import make_task  # noqa: PLC0415

    self.config = config
    self.task = make_task(config, workdir)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.rules_tuple(config.axis_rules)
    self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    self._steps: dict[Any, Callable] = {}
    self._batches: list | None = None

  def _step(self, reparam_rules: tuple) -> Callable:
    key = tuple(tuple(r) for r in reparam_rules)
    if key not in self._steps:
      cfg = ml_collections.ConfigDict(dict(self.config.reparam))
      cfg.rules = key
      model = steps.ReparamHooks(cfg).wrap(self.task.model())
      self._steps[key] = jax.jit(steps.make_eval_step(model, self.task))
    return self._steps[key]

  def batches(self) -> list:
    if self._batches is None:
      from reparam_jax.data.pipeline import to_global  # noqa: PLC0415
      self._batches = [to_global(b, self.batch_sharding) for b in self.task.eval_batches()]
    return self._batches

  def __call__(self, params: PyTree, reparam_rules: tuple = (), masks: PyTree | None = None,
               max_batches: int | None = None) -> dict[str, float]:
    step = self._step(reparam_rules)
    replicated = sharding.replicated(self.mesh)
    params = jax.device_put(params, replicated)
    extra = {} if masks is None else {AUX_COLLECTION: jax.device_put(masks, replicated)}
    state = steps.TrainState(step=0, params=params, opt_state=None, extra=extra)
    if max_batches is None:  # the reported metric: exactly the trainer's evaluation
      from reparam_jax.train import evaluate  # noqa: PLC0415
      with jax.set_mesh(self.mesh):
        out = evaluate(step, state, self.task, self.batch_sharding)
      return {k.removeprefix("eval/"): v for k, v in out.items()}
    sums = None
    with jax.set_mesh(self.mesh):
      for batch in self.batches()[:max_batches]:
        out = step(state, batch)
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    sums = {k: float(np.asarray(v)) for k, v in jax.device_get(sums).items()}
    return self.task.eval_metrics(sums)
