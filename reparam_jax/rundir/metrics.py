"""Metric sinks: `metrics.jsonl`, TensorBoard event files, and the console.

Only process 0 writes; every record is one JSON object per line, e.g.
`{"step": 100, "train/loss": 2.1, "train/tokens_per_sec": 21000.0}`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter  # writes event files without TensorFlow

from reparam_jax.rundir import workdir as rundir


def _plain(v: Any) -> Any:
  v = np.asarray(v).item() if hasattr(v, "shape") or isinstance(v, np.generic) else v
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf; keep the record parseable
  return v


class MetricWriter:
  """Appends to `metrics.jsonl` and TensorBoard; `resume_step` hides what followed it.

  A run killed after its last checkpoint logged steps it will redo on resume;
  the trainer truncates `metrics.jsonl` to the restored step, and for the
  event files (append-only) `purge_step` writes TensorBoard's marker that
  discards earlier events at steps ≥ resume_step + 1.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None, resume_step: int = 0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      self._jsonl = open(rundir.path(workdir, rundir.METRICS), "a", encoding="utf-8")
      self._tb = SummaryWriter(rundir.path(workdir, rundir.TENSORBOARD),
                               purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if self.enabled:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()
    return record

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
