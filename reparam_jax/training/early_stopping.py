"""Early stopping on a logged evaluation metric, keeping and restoring the best params.

  c.early_stopping.metric = "eval/loss"   # any key `evaluate` returns; "" = off
  c.early_stopping.mode = "min"           # or "max" (accuracy)
  c.early_stopping.patience = 5           # evaluations in a row without improvement
  c.early_stopping.min_delta = 0.0        # improvement = beating the best by more than this

An evaluation *improves* when it beats the best so far by more than
`min_delta`; the best value and step then move to it and its params are
written to `<workdir>/best/<step>/` (a params checkpoint,
`checkpoint.save_params`).  After `patience` evaluations in a row without
improvement the run stops.  At the end (stopped, or `num_steps` reached) the
best params are loaded back, evaluated once more, and written as the final
train-state checkpoint, so `done.json`, `load_params(workdir)`, `sample` and
`init_from=<workdir>` all see the best model.

Why a separate `best/` params checkpoint rather than orbax's `best_fn`: the
train-state checkpoints serve resumption and keep the *latest* N; ranking
them by a metric would delete the newest state and make resuming replay from
an old one.  Evaluations also need not coincide with checkpoint steps.

Resume: the counters are not saved anywhere; they are recomputed from the
eval records of `metrics.jsonl` up to the restored step (records past it are
truncated on resume, and the rerun reproduces them).  `best/<step>` dirs are
pruned only once no retained train checkpoint could need them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from reparam_jax.errors import UserError
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir

PyTree = Any


@dataclasses.dataclass
class EarlyStopping:
  metric: str = ""
  mode: str = "min"
  patience: int = 5
  min_delta: float = 0.0
  workdir: str = ""
  best: float | None = None
  best_step: int = 0
  bad_evals: int = 0
  stop_step: int = 0  # the evaluation step at which patience ran out; 0 = not stopped
  improvements: list[int] = dataclasses.field(default_factory=list)

  @classmethod
  def from_config(cls, cfg: Any, workdir: str) -> "EarlyStopping":
    cfg = cfg if cfg is not None else {}
    es = cls(metric=cfg.get("metric", ""), mode=cfg.get("mode", "min"),
             patience=cfg.get("patience", 5), min_delta=cfg.get("min_delta", 0.0),
             workdir=workdir)
    if es.mode not in ("min", "max"):
      raise UserError(f"config.early_stopping.mode must be 'min' or 'max', got {es.mode!r}")
    if isinstance(es.patience, bool) or not isinstance(es.patience, int) or es.patience < 1:
      raise UserError(f"config.early_stopping.patience must be a positive integer (evaluations), "
                      f"got {es.patience!r}")
    if not (isinstance(es.min_delta, (int, float)) and 0 <= es.min_delta < math.inf):
      raise UserError(f"config.early_stopping.min_delta must be a non-negative number, "
                      f"got {es.min_delta!r}")
    return es

  @property
  def active(self) -> bool:
    return bool(self.metric)

  @property
  def stopped(self) -> bool:
    return self.stop_step > 0

  def best_dir(self, step: int | None = None) -> str:
    return os.path.join(self.workdir, rundir.BEST, str(self.best_step if step is None else step))

  # -- the decision -----------------------------------------------------------

  def _improves(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    if self.mode == "min":
      return value < self.best - self.min_delta
    return value > self.best + self.min_delta

  def update(self, step: int, eval_metrics: Mapping[str, float]) -> bool:
    """Counts one evaluation; True when it is a new best."""
    if self.metric not in eval_metrics:
      raise UserError(f"config.early_stopping.metric={self.metric!r} is not an evaluation "
                      f"metric of this task; it logs: {', '.join(sorted(eval_metrics))}")
    value = float(eval_metrics[self.metric])
    improved = self._improves(value)
    if improved:
      self.best, self.best_step, self.bad_evals = value, step, 0
      self.improvements.append(step)
    else:
      self.bad_evals += 1
      if self.bad_evals >= self.patience:
        self.stop_step = step
    return improved

  # -- the train loop's calls -------------------------------------------------

  def resume(self, start_step: int) -> None:
    """Recomputes the counters from the eval records up to the restored step."""
    if not self.active:
      return
    if jax.process_index() == 0:
      for record in rundir.read_metrics(self.workdir):
        if self.stopped or record.get("step", 0) > start_step or self.metric not in record:
          continue
        self.update(record["step"], record)
    if jax.process_count() > 1:
      self._broadcast()

  def _broadcast(self) -> None:
    head = np.array([np.nan if self.best is None else self.best, self.best_step,
                     self.bad_evals, self.stop_step, len(self.improvements)], np.float64)
    head = multihost_utils.broadcast_one_to_all(head)
    n = int(head[4])
    imp = multihost_utils.broadcast_one_to_all(
        np.array(self.improvements + [0] * (n - len(self.improvements)), np.int64)[:n]
        if n else np.zeros((1,), np.int64))
    self.best = None if np.isnan(head[0]) else float(head[0])
    self.best_step, self.bad_evals, self.stop_step = (int(x) for x in head[1:4])
    self.improvements = [int(x) for x in imp[:n]]

  def observe(self, step: int, eval_metrics: Mapping[str, float], params: PyTree) -> None:
    """After an evaluation: update, save the params if best, say so if stopping."""
    if not self.active:
      return
    if self.update(step, eval_metrics):
      checkpoint.save_params(self.best_dir(), params)
      self._prune()
    if self.stopped and jax.process_index() == 0:
      print(f"early stopping at step {step}: {self.metric} has not improved by more than "
            f"{self.min_delta:g} for {self.patience} evaluations (best {self.best:.6g} at step "
            f"{self.best_step})", flush=True)

  def finished(self, step: int, num_steps: int) -> bool:
    """Whether the loop ends after this step (then the best params replace the last)."""
    return self.active and (self.stopped or step >= num_steps)

  def final_step(self, num_steps: int) -> int:
    return self.stop_step or num_steps

  def restore_best(self, state: Any, abstract_params: PyTree,
                   evaluate: Callable[[Any], dict[str, float]]) -> tuple[Any, dict[str, float]]:
    """`state` with the best params, and their evaluation."""
    if self.best is None:
      raise UserError("early stopping: no evaluation was recorded, so there is no best "
                      "checkpoint to restore")
    params = checkpoint.load_params(self.best_dir(), abstract_params)
    state = state.replace(params=params)
    metrics = evaluate(state)
    if jax.process_index() == 0:
      print(f"restored the best params: step {self.best_step}, {self.metric}="
            f"{metrics.get(self.metric, float('nan')):.6g}", flush=True)
    return state, metrics

  def done_fields(self, num_steps: int) -> dict[str, Any]:
    """What done.json records about why and where the run stopped."""
    if not self.active:
      return {"stop_reason": "num_steps"}
    return {"step": self.final_step(num_steps),
            "stop_reason": "early_stopping" if self.stopped else "num_steps",
            "best_step": self.best_step, "best_metric": self.metric, "best_value": self.best,
            "best_params": self.best_dir()}

  def _prune(self) -> None:
    """Removes best/<step> dirs no resume could need: keeps the current best, the best as
    of every completed train checkpoint, and every one newer than the newest checkpoint."""
    if jax.process_index() != 0:
      return
    root = rundir.path(self.workdir, rundir.BEST)
    ckpt_dir = rundir.path(self.workdir, rundir.CHECKPOINTS)
    ckpts = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) \
        if os.path.isdir(ckpt_dir) else []
    keep = {self.best_step}
    for c in ckpts:
      earlier = [s for s in self.improvements if s <= c]
      if earlier:
        keep.add(max(earlier))
    newest = ckpts[-1] if ckpts else -1
    for d in os.listdir(root):
      if d.isdigit() and int(d) not in keep and int(d) <= newest:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
