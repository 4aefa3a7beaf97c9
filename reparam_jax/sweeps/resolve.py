"""An experiment made concrete: budgets solved, tuning choices applied, the columns they add.

`ablate` (which runs what is missing) and `report_html` (which only reads)
resolve an experiment the same way, so both name the same points and show
the same solved sizes and chosen settings beside each row.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from reparam_jax.sweeps.budget import resolve_budgets
from reparam_jax.sweeps.experiment import Experiment
from reparam_jax.sweeps.tuning import TuningOutcome, apply_choices, run_tuning


@dataclasses.dataclass
class Resolved:
  """`experiment` with sizes and settings filled in, when `complete`."""

  experiment: Experiment
  tuning: TuningOutcome
  # {row label: {column: text}}: the solved size and budget, the chosen setting and the
  # search budget; None when no row has either (the table looks as it always did).
  extra_columns: dict[str, dict[str, str]] | None

  @property
  def complete(self) -> bool:
    return self.tuning.complete


def resolve(exp: Experiment, root: str | os.PathLike[str], extra_args: Sequence[str] = (),
            run: Callable | None = None) -> Resolved:
  """Budgets (counted under eval_shape), then the tuning rungs through `run` (None: read
  only what finished), then the choices applied, if every searched row has one."""
  exp, budget_columns = resolve_budgets(exp, extra_args=extra_args)
  outcome = run_tuning(exp, root, run, extra_args=extra_args)
  if outcome.complete:
    exp = apply_choices(exp, outcome)
  columns = _row_columns(exp, budget_columns, outcome.columns if exp.tuning else {})
  return Resolved(exp, outcome, columns)


def _row_columns(exp: Experiment, *per_row: dict[str, dict[str, str]]
                 ) -> dict[str, dict[str, str]] | None:
  columns: dict[str, dict[str, str]] = {}
  for part in per_row:
    for label, cols in part.items():
      columns.setdefault(label, {}).update(cols)
  keys = [k for k in dict.fromkeys(k for cols in columns.values() for k in cols)
          if any(cols.get(k) for cols in columns.values())]
  if not keys or exp.variants is None:
    return None
  return {label: {k: columns.get(label, {}).get(k, "") for k in keys} for label in exp.variants}
