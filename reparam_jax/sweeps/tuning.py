"""Per-row tuning on a held-out split carved from the training data, by successive halving.

A row of an experiment may declare a search space, ``Variant(search={"optimizer.lr":
[1e-4, 3e-4, 1e-3]})``; its settings are the product of the value lists (first key
outermost). `Experiment(tuning=Tuning(...))` says how a row's setting is chosen:
every setting trains with `Tuning.holdout`'s overrides (which make the run hold
training examples out and evaluate on them, e.g. ``{"data.holdout_examples": 2000,
"data.evaluate_on": "holdout"}``, data/classification.py) at `Tuning.seed`, and
`Tuning.metric` of its final evaluation (done.json) ranks it.  The reported runs
then train at the chosen setting with the experiment's seeds and are evaluated on
the reported split once: the split a table reports never chose anything.

The search is successive halving.  With n settings, R = ceil(log_eta n) halvings
reach one.  Rung 0 trains every setting for f0 = max(min_fraction, eta**-R) of the
row's steps (`steps_key`; `scale_keys` such as the warm-up scale with it); the
best ceil(n / eta) go on to the next rung with `eta` times the steps, until one
setting remains (it is the choice) or a rung trains at the full budget (its best
is the choice).  So a small search ends with a rung at 1/eta of the steps, whose
next rung would be the chosen setting's full-length reported runs; min_fraction
(default 1/eta**2) bounds how short a large search's first rung gets.  Its cost in
full-run equivalents is

    C(n) = sum over rungs r of ceil(n / eta**r) * min(1, f0 * eta**r),

rungs r = 0, 1, ... while ceil(n / eta**r) > 1, ending with the first rung at the
full budget.  Each rung costs at most (n / eta**r + 1) * f0 * eta**r = n f0 + f0
eta**r.  With the defaults (eta = 3, min_fraction = 1/9): n <= 3 is one rung at 1/3
(C = n/3); n = 4..9 two rungs from 1/9 (C <= 2 n/9 + 4/9); n > 9 at most three
rungs from 1/9 (C <= n/3 + 13/9).  Each is <= n: never more than one full run per
setting (C(9) = 2, C(27) = 9; tests/test_tuning.py checks 2..27 and beyond).  A
16-row experiment with 9 settings a row trains 16 * 2 = 32 full runs' worth
beside its 16 * seeds reported runs.

Rows search the same number of settings (their budget) unless
`Tuning(allow_unequal=True)`: a row tuned over more settings would be favoured.
Tuning points live in ``ROOT/tuning/<row>/<point name>``; finished ones are
skipped, so a re-run resumes, and a setting whose run diverged (the trainer's
"training diverged" error in its log) ranks last without being re-run.
``ROOT/tuning/choices.json`` records each row's settings, every rung's scores and
the choice.  Ties go to the setting declared first.

`python -m reparam_jax.ablate` calls `check_tuning`, `run_tuning` and
`apply_choices` (see their docstrings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps import hyper
from reparam_jax.sweeps.points import (
  RunPoint,
  format_value,
  make_points,
  override_flag,
  point_name,
)

if TYPE_CHECKING:  # experiment.py imports this module
  from reparam_jax.sweeps.experiment import Experiment, Variant
  from reparam_jax.sweeps.launchers import SweepResult

TUNING_DIR = "tuning"
CHOICES = "choices.json"
DIVERGED = "training diverged"  # reliability.py's TrainingDiverged message, in the run's log
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Tuning:
  """How rows with a `Variant.search` choose their setting (see the module docstring).

  metric: a key of the tuning runs' done.json, read on the held-out evaluation
    (e.g. "eval/accuracy"); goal: "max" or "min".
  holdout: the overrides that make a run train without, and evaluate on, a
    held-out split of the training data; never empty.
  seed: the seed of every tuning run.  eta, min_fraction: successive halving
    (min_fraction None = 1/eta**2, the shortest first rung).  steps_key: the
    config key of a run's length; scale_keys: step counts scaled with it.
  allow_unequal: accept rows that search different numbers of settings.
  """

  metric: str
  _: dataclasses.KW_ONLY
  holdout: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  goal: str = "max"
  seed: int = 0
  eta: int = 3
  min_fraction: float | None = None
  steps_key: str = "num_steps"
  scale_keys: Sequence[str] = ("optimizer.warmup_steps",)
  allow_unequal: bool = False

  def __post_init__(self) -> None:
    if self.goal not in ("min", "max"):
      raise UserError(f"Tuning(goal={self.goal!r}): use 'max' or 'min'")
    if not self.holdout:
      raise UserError("Tuning(holdout=...) is empty: give the overrides that make a tuning run "
                      "evaluate on a held-out split, e.g. {'data.holdout_examples': 2000, "
                      "'data.evaluate_on': 'holdout'}; otherwise tuning reads the reported split")
    if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
      raise UserError(f"Tuning(eta={self.eta!r}): expected an integer >= 2 (the fraction of "
                      "settings kept per rung is 1/eta)")
    if not 0 < self.fraction <= 1:
      raise UserError(f"Tuning(min_fraction={self.min_fraction!r}): expected a number in (0, 1]")
    if isinstance(self.scale_keys, str):
      raise UserError(f"Tuning(scale_keys={self.scale_keys!r}): expected a tuple of keys")

  @property
  def fraction(self) -> float:
    """The shortest first rung's fraction of a row's steps."""
    return 1.0 / self.eta ** 2 if self.min_fraction is None else float(self.min_fraction)


@dataclasses.dataclass(frozen=True)
class Rung:
  """One round of successive halving: `settings` settings, each for `fraction` of the steps."""

  index: int
  settings: int
  fraction: float


def halving_schedule(n_settings: int, eta: int = 3, min_fraction: float | None = None
                     ) -> list[Rung]:
  """The rungs that choose one of `n_settings` (none for one setting: nothing to choose)."""
  halvings, n = 0, n_settings
  while n > 1:  # ceil(log_eta(n)) without float error
    halvings, n = halvings + 1, -(-n // eta)
  floor = 1.0 / eta ** 2 if min_fraction is None else min_fraction
  fraction = max(floor, float(eta) ** -halvings)
  rungs: list[Rung] = []
  n = n_settings
  while n > 1:
    full = fraction >= 1 - _EPS
    rungs.append(Rung(len(rungs), n, 1.0 if full else fraction))
    if full:
      break
    n, fraction = -(-n // eta), fraction * eta
  return rungs


def halving_cost(n_settings: int, eta: int = 3, min_fraction: float | None = None) -> float:
  """C(n) of the module docstring: the schedule's training in full-run equivalents."""
  return sum(r.settings * r.fraction for r in halving_schedule(n_settings, eta, min_fraction))


def settings_of(search: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """The product of a search space's values, in declaration order (first key outermost)."""
  keys = [hyper.normalize_key(k) for k in search]
  return [dict(zip(keys, values)) for values in itertools.product(*search.values())]


def rank(scores: Sequence[float | None], goal: str) -> list[int]:
  """Setting indices best first; a missing (diverged) score is last; ties keep declaration order."""
  def key(i: int) -> tuple[int, float, int]:
    s = scores[i]
    if s is None or not math.isfinite(s):
      return (1, 0.0, i)
    return (0, -s if goal == "max" else s, i)
  return sorted(range(len(scores)), key=key)


def _variant(v: Any) -> Variant:
  from reparam_jax.sweeps.experiment import Variant
  return v if isinstance(v, Variant) else Variant(dict(v))


def searched_rows(exp: Experiment) -> dict[str, Variant]:
  """The rows of `exp` that declare a search space, in row order."""
  return {label: v for label, v in ((lbl, _variant(v)) for lbl, v in (exp.variants or {}).items())
          if v.search}


_VARIANT_REF = re.compile(r"^\{variant:(.+)\}$")


def leaking_reduction(exp: Experiment) -> str | None:
  """A metric reduction that picks a step on the reported split (None if there is none)."""
  from reparam_jax.sweeps.experiment import _AT_RE
  reductions = [(m.key, m.reduce, None) for m in exp.metrics]
  for label, v in (exp.variants or {}).items():
    reductions += [(k, r, label) for k, r in _variant(v).reduce.items()]
  for key, reduce, row in reductions:
    at = _AT_RE.match(reduce)
    by = at.group(2) if at else key
    if (at or reduce in ("min", "max")) and by.startswith("eval/"):
      where = f"row {row!r}: " if row else ""
      return (f"{where}metric {key} uses reduce={reduce!r}, which picks the best evaluation "
              f"of {by} on the reported split; with tuning use reduce='final' (the run's last "
              "evaluation) so the reported split chooses nothing")
  return None


def check_tuning(exp: Experiment) -> None:
  """One-line errors for a search that cannot run or would not be fair; call before running."""
  rows = searched_rows(exp)
  if exp.tuning is None:
    if rows:
      raise UserError(f"experiment {exp.name}: row {next(iter(rows))!r} declares search= but the "
                      "experiment has no tuning=Tuning(metric=..., holdout=...) saying how the "
                      "setting is chosen")
    return
  t = exp.tuning
  if exp.variants is None:
    raise UserError(f"experiment {exp.name}: tuning= needs rows given as variants= "
                    "(each with its Variant(search=...)), not sweep=")
  problem = leaking_reduction(exp)
  if problem:
    raise UserError(f"experiment {exp.name}: {problem}")
  for label, v in rows.items():
    for key, values in v.search.items():
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise UserError(f"experiment {exp.name}: row {label!r} searches {key} over {values!r}; "
                        "give a non-empty list of values")
      if key in (exp.seed_key, t.steps_key, *t.scale_keys):
        raise UserError(f"experiment {exp.name}: row {label!r} searches {key}, which tuning "
                        "sets itself (the seed and the rung's steps); search other keys")
    refs = [k for k, val in {**exp.overrides, **v.overrides}.items()
            if isinstance(val, str) and _VARIANT_REF.match(val)]
    if refs:
      raise UserError(f"experiment {exp.name}: row {label!r} is tuned and reads another row's "
                      f"run ({refs[0]}); tuning such a row is not supported: drop its search")
  sizes = {label: len(settings_of(_variant(v).search)) for label, v in exp.variants.items()}
  if len(set(sizes.values())) > 1 and not t.allow_unequal:
    listed = ", ".join(f"{label}: {n}" for label, n in sizes.items())
    raise UserError(f"experiment {exp.name}: rows search different numbers of settings "
                    f"({listed}); give every row the same number, or Tuning(allow_unequal=True) "
                    "to accept unequal search budgets (the table shows each row's)")


def row_dir(label: str) -> str:
  """A row's folder under ROOT/tuning: the label made filesystem-safe, hashed if it changed."""
  safe = re.sub(r"[^A-Za-z0-9._,=+@-]", "_", label)
  if safe.startswith(".") or not safe:
    safe = "_" + safe[1:]
  if safe != label:
    safe = f"{safe}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"
  return safe


def holdout_unread(config: Any) -> str | None:
  """Why a config's `data.evaluate_on="holdout"` would not be what its run evaluates, if so.

  The task says (`Task.holdout_unread`): the classify task carves the held-out split
  from any source (data/classification.py), the lm and seq2seq tasks from
  tiny_shakespeare text (data/lm_text.py); otherwise the run would still evaluate
  the reported split while tuning believed otherwise.
  """
  from reparam_jax.tasks import task_class  # pylint: disable=import-outside-toplevel
  if (config.get("data") or {}).get("evaluate_on", "validation") != "holdout":
    return None
  why = task_class(config).holdout_unread(config)
  if why is None:
    return None
  return (f"data.evaluate_on='holdout' is not read: {why}; give Tuning(holdout=...) "
          "overrides that point this task's evaluation at data carved from training "
          "instead (e.g. data.eval_prepared or data.eval_source)")


def _scaled(value: Any, factor: float) -> Any:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"a Tuning.scale_keys value must be a number of steps, got {value!r}")
  return round(value * factor) if isinstance(value, int) else value * factor


@dataclasses.dataclass
class _Row:
  """One searched row's state while its rungs run."""

  label: str
  base: dict[str, Any]  # the row's overrides (experiment's, row's, holdout) without the setting
  settings: list[dict[str, Any]]
  full_steps: int
  scale: dict[str, Any]  # scale key -> its full-length value
  extra_args: tuple[str, ...]
  root: str
  schedule: list[Rung]
  alive: list[int]
  rungs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  chosen: int | None = None
  blocked: str = ""  # why the search cannot go on in this invocation
  steps_run: dict[str, int] = dataclasses.field(default_factory=dict)  # point name -> its steps


def _refuse_early_stopping(exp: Experiment, label: str, config: Any) -> None:
  """A row of a tuned table trains for its full steps: early stopping would keep the reported
  runs' best evaluation on the split the table reports, a choice made on it, which is what the
  tuning exists to avoid (for an unsearched row as much as for a searched one)."""
  stopping = (config.get("early_stopping") or {}).get("metric", "")
  if stopping:
    raise UserError(f"experiment {exp.name}: row {label!r}: early_stopping.metric="
                    f"{stopping!r} would keep the reported runs' best checkpoint by their "
                    "evaluations on the reported split; a tuned row trains for its full steps: "
                    "set early_stopping.metric='' in its overrides, or search num_steps instead")


def _row_config(exp: Experiment, label: str, base: Mapping[str, Any],
                extra_args: Sequence[str]) -> Any:
  """The config a row's run builds from its overrides `base` (and the command line's)."""
  config_spec = base.get(hyper.CONFIG_KEY) or exp.config
  if not config_spec:
    raise UserError(f"experiment {exp.name}: row {label!r} has no config")
  flags = [override_flag(k, val) for k, val in base.items() if k != hyper.CONFIG_KEY]
  config, _ = config_load.load([f"--config={config_spec}", *flags, *extra_args])
  return config


def _overrides(exp: Experiment, v: Variant) -> dict[str, Any]:
  return {hyper.normalize_key(k): val for k, val in {**exp.overrides, **v.overrides}.items()}


def _check_unsearched_rows(exp: Experiment, extra_args: Sequence[str]) -> None:
  """Builds each unsearched row's config (as its reported runs will) to refuse early stopping."""
  for label, v in ((lbl, _variant(v)) for lbl, v in (exp.variants or {}).items()):
    if not v.search:
      _refuse_early_stopping(exp, label, _row_config(exp, label, _overrides(exp, v), extra_args))


def _row_state(exp: Experiment, label: str, v: Variant, root: str,
               extra_args: Sequence[str]) -> _Row:
  """Reads the row's full steps (and scaled keys) from its built config."""
  t = exp.tuning
  assert t is not None
  base = _overrides(exp, v)
  base.update({hyper.normalize_key(k): val for k, val in t.holdout.items()})
  # The tuning points set the steps and scaled keys themselves: a command-line value of
  # one of them is the full length, not a clash.
  owned = {t.steps_key, *t.scale_keys}
  extra = [a for a in extra_args if a.split("=", 1)[0][len("--config."):] not in owned]
  config = _row_config(exp, label, base, extra_args)

  problem = holdout_unread(config)
  if problem:
    raise UserError(f"experiment {exp.name}: row {label!r}: {problem}")
  _refuse_early_stopping(exp, label, config)

  def read(key: str) -> Any:
    node: Any = config
    for part in key.split("."):
      if part not in node:
        config_spec = base.get(hyper.CONFIG_KEY) or exp.config
        raise UserError(f"experiment {exp.name}: row {label!r}: config {config_spec} has no key "
                        f"{key!r} (Tuning.steps_key / scale_keys)")
      node = node[part]
    return node

  full_steps = read(t.steps_key)
  if isinstance(full_steps, bool) or not isinstance(full_steps, int) or full_steps < 1:
    raise UserError(f"experiment {exp.name}: row {label!r}: {t.steps_key}={full_steps!r} is not "
                    "a number of steps (Tuning.steps_key)")
  settings = settings_of(v.search)
  schedule = halving_schedule(len(settings), t.eta, t.fraction)
  return _Row(label, base, settings, full_steps, {k: read(k) for k in t.scale_keys},
              tuple(extra), os.path.join(root, TUNING_DIR, row_dir(label)), schedule,
              list(range(len(settings))))


def _rung_points(exp: Experiment, row: _Row, rung: Rung) -> list[tuple[int, RunPoint]]:
  """(setting index, its point) for the row's settings alive at `rung`."""
  t = exp.tuning
  assert t is not None
  steps = max(1, round(row.full_steps * rung.fraction))
  factor = steps / row.full_steps
  dicts = []
  for i in row.alive:
    d = {**row.base, **row.settings[i], t.steps_key: steps, exp.seed_key: t.seed}
    d.update({k: _scaled(val, factor) for k, val in row.scale.items()})
    dicts.append(d)
  pts = make_points(dicts, exp.config or "", row.root, row.extra_args)
  by_name = {p.name: p for p in pts}
  out = []
  for i, d in zip(row.alive, dicts):
    d = dict(d)
    config = d.pop(hyper.CONFIG_KEY, None)
    p = by_name[point_name(d, config)]
    row.steps_run[p.name] = steps
    out.append((i, p))
  return out


def diverged(point: RunPoint) -> bool:
  """A point that is not done and whose log ends in the trainer's divergence error."""
  if point.done:
    return False
  log = Path(point.workdir) / rundir.LOG
  try:
    return DIVERGED in log.read_text(encoding="utf-8", errors="replace")
  except OSError:
    return False


def _score(exp: Experiment, point: RunPoint) -> tuple[str, float | None]:
  """(status, score): "done" with the held-out metric, "diverged", or "missing"."""
  t = exp.tuning
  assert t is not None
  if diverged(point):
    return "diverged", None
  done = rundir.read_done(point.workdir)
  if done is None:
    return "missing", None
  if t.metric not in done:
    evals = ", ".join(sorted(k for k in done if k.startswith("eval/"))) or "no eval/ keys"
    raise UserError(f"{point.workdir}: done.json has no {t.metric!r}; Tuning(metric=...) must be "
                    f"a key the run writes at its final evaluation (it has: {evals})")
  value = done[t.metric]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return "diverged", None  # a non-finite final metric ranks last, like a diverged run
  return "done", float(value)


@dataclasses.dataclass
class TuningOutcome:
  """What `run_tuning` found: each searched row's chosen overrides and its table columns.

  chosen: row label -> {override key: value}, for rows whose search finished.
  columns: row label -> {"chosen": "optimizer.lr=0.001", "search": "9 settings, SH eta=3,
    3 full runs"}, for every row (an unsearched row: "chosen" "", "search" "not searched").
  cost: row label -> the search's training in full-run equivalents (0 when not searched).
  complete: every searched row has its choice; False: some tuning points failed, were
    submitted to a cluster or were only printed (--dry-run): run the same command again.
  """

  chosen: dict[str, dict[str, Any]]
  columns: dict[str, dict[str, str]]
  cost: dict[str, float]
  complete: bool


def _describe_setting(setting: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={format_value(v)}" for k, v in setting.items())


def at_edge(settings: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]) -> dict[str, str]:
  """{key: "largest" | "smallest"} for each numeric key whose chosen value is the largest or
  smallest of the values searched for it: the best may lie outside the range, so a reader
  should know (the tuning playbooks' check that the best trial is not on the boundary)."""
  edges = {}
  for key, value in chosen.items():
    values = [s[key] for s in settings if key in s]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for v in (value, *values)) or len(set(values)) < 2:
      continue
    if value == max(values):
      edges[key] = "largest"
    elif value == min(values):
      edges[key] = "smallest"
  return edges


def _describe_choice(settings: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]) -> str:
  """The chosen setting, each value on the edge of its range said so: "optimizer.lr=0.003
  (largest searched)"."""
  edges = at_edge(settings, chosen)
  return ", ".join(f"{k}={format_value(v)}" + (f" ({edges[k]} searched)" if k in edges else "")
                   for k, v in chosen.items())


def run_tuning(exp: Experiment, root: str | os.PathLike[str],
               run: Callable[[list[RunPoint]], SweepResult | None] | None,
               extra_args: Sequence[str] = ()) -> TuningOutcome:
  """Runs the searched rows' rungs (all rows' points of a rung in one `run` call) and writes
  ROOT/tuning/choices.json.

  `run` is the launcher, e.g. ``lambda pts: run_points(pts, launcher=..., parallel=...)``
  (launchers.py); it skips finished points, so a re-run resumes.  `run=None` runs nothing
  and reads what has finished (``--render-only``).  A row stops where one
  of its points has no result (failed, queued, dry run): its choice waits for the next
  invocation, and the outcome is not `complete`.
  """
  check_tuning(exp)
  root = os.fspath(root)
  columns = {label: {"chosen": "", "search": "not searched"} for label in exp.variants or {}}
  if exp.tuning is None:
    return TuningOutcome({}, columns, {label: 0.0 for label in columns}, True)
  t = exp.tuning
  _check_unsearched_rows(exp, extra_args)
  rows = [_row_state(exp, label, v, root, extra_args) for label, v in searched_rows(exp).items()]
  for row in rows:
    if not row.schedule:  # one setting: nothing to choose
      row.chosen = 0
  for r in itertools.count():
    active = [row for row in rows if row.chosen is None and not row.blocked]
    if not active:
      break
    batch = {row.label: _rung_points(exp, row, row.schedule[r]) for row in active}
    todo = [p for pts in batch.values() for _, p in pts if not diverged(p)]
    if todo and run is not None:
      run(todo)
    for row in active:
      rung = row.schedule[r]
      entries, scores = [], [None] * len(row.settings)
      for i, p in batch[row.label]:
        status, score = _score(exp, p)
        scores[i] = score
        entries.append({"setting": row.settings[i], "point": p.name, "status": status,
                        "score": score})
        if status == "missing" and not row.blocked:
          row.blocked = f"tuning point {p.workdir} has no result yet"
      row.rungs.append({"rung": r, "steps": row.steps_run[batch[row.label][0][1].name],
                        "fraction": rung.fraction, "scores": entries})
      if row.blocked:
        continue
      ranked = [i for i in rank(scores, t.goal) if i in row.alive]
      if r == len(row.schedule) - 1:
        row.chosen = ranked[0]
      else:
        row.alive = sorted(ranked[:row.schedule[r + 1].settings])
  chosen, cost = {}, {label: 0.0 for label in columns}
  for row in rows:
    # What was trained, in full-run equivalents: each distinct point once (two rungs of a
    # short run can round to the same steps and share their points).
    cost[row.label] = sum(row.steps_run.values()) / row.full_steps
    n = len(row.settings)
    rungs = f"SH eta={t.eta}, {len(row.schedule)} rung{'s' * (len(row.schedule) != 1)}"
    columns[row.label] = {
        "chosen": ("" if row.chosen is None
                   else _describe_choice(row.settings, row.settings[row.chosen])),
        "search": f"{n} setting{'s' * (n != 1)}, {rungs}, {cost[row.label]:.3g} full runs"}
    if row.chosen is not None:
      chosen[row.label] = dict(row.settings[row.chosen])
  complete = all(row.chosen is not None for row in rows)
  _write_choices(exp, root, rows, cost)
  return TuningOutcome(chosen, columns, cost, complete)


def _write_choices(exp: Experiment, root: str, rows: Sequence[_Row],
                   cost: Mapping[str, float]) -> Path:
  t = exp.tuning
  assert t is not None
  out = {"metric": t.metric, "goal": t.goal, "seed": t.seed, "eta": t.eta,
         "min_fraction": t.fraction, "holdout": dict(t.holdout), "steps_key": t.steps_key,
         "rows": {}}
  for row in rows:
    out["rows"][row.label] = {
        "chosen": None if row.chosen is None else row.settings[row.chosen],
        "at_edge": {} if row.chosen is None else at_edge(row.settings, row.settings[row.chosen]),
        "complete": row.chosen is not None, "waiting_for": row.blocked or None,
        "settings": row.settings, "full_steps": row.full_steps,
        "schedule": [dataclasses.asdict(r) for r in row.schedule],
        "planned_cost": halving_cost(len(row.settings), t.eta, t.fraction),
        "cost": cost[row.label], "rungs": row.rungs}
  path = Path(root) / TUNING_DIR / CHOICES
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1, default=repr) + "\n", encoding="utf-8")
  path.with_suffix(".md").write_text(choices_markdown(out), encoding="utf-8")
  return path


def choices_markdown(choices: Mapping[str, Any]) -> str:
  """choices.json as a Markdown table: every setting's held-out score at every rung, the choice.

  One line per (row, setting), one column per rung; a cell is the score and the rung's steps
  ("0.8585 @ 200"), "—" where the setting did not reach that rung.
  """
  rows = choices["rows"]
  n_rungs = max((len(r["rungs"]) for r in rows.values()), default=0)
  holdout = ", ".join(f"{k}={format_value(v)}" for k, v in choices["holdout"].items())
  title = (f"Tuning: each setting's {choices['metric']} ({choices['goal']}) on the held-out "
           f"split ({holdout}), seed {choices['seed']}, successive halving with "
           f"eta={choices['eta']}.")
  lines = [title, "",
           "| row | setting | " + " | ".join(f"rung {i}" for i in range(n_rungs)) + " | chosen |",
           "|---|---|" + "---:|" * n_rungs + "---|"]
  for label, row in rows.items():
    for i, setting in enumerate(row["settings"]):
      cells = []
      for rung in row["rungs"]:
        entry = next((e for e in rung["scores"] if e["setting"] == setting), None)
        if entry is None:
          cells.append("—")
        elif entry["score"] is None:
          cells.append(f"{entry['status']} @ {rung['steps']}")
        else:
          cells.append(f"{entry['score']:.4f} @ {rung['steps']}")
      cells += [""] * (n_rungs - len(cells))
      edges = row.get("at_edge") or {}
      chosen = ""
      if setting == row["chosen"]:
        chosen = "**chosen**" + "".join(f", {k} the {e} searched" for k, e in edges.items())
      name = label.replace("|", "\\|") if i == 0 else ""
      lines.append(f"| {name} | {_describe_setting(setting) or '(config)'} | "
                   + " | ".join(cells) + f" | {chosen} |")
  return "\n".join(lines) + "\n"


def apply_choices(exp: Experiment, outcome: TuningOutcome) -> Experiment:
  """`exp` with each searched row's overrides set to its chosen setting and its search
  cleared; rows without a search are unchanged.  The reported runs are then the
  experiment's ordinary points (its seeds, its reported split)."""
  from reparam_jax.sweeps.experiment import Variant
  rows = searched_rows(exp)
  if not rows:
    return exp
  missing = [label for label in rows if label not in outcome.chosen]
  if missing:
    raise UserError(f"experiment {exp.name}: row {missing[0]!r} has no chosen setting yet "
                    "(its tuning did not finish); run the same command again")
  variants = {}
  for label, v in (exp.variants or {}).items():
    if label in rows:
      v = rows[label]
      v = Variant({**v.overrides, **outcome.chosen[label]}, reduce=v.reduce, budget=v.budget)
    variants[label] = v
  return dataclasses.replace(exp, variants=variants)


def around(value: float, factor: float = 3.0) -> list[float]:
  """`[value / factor, value, value * factor]`: a row's search around its config's setting
  (rounded to 8 digits, so point names stay short)."""
  return [round(value / factor, 8), value, round(value * factor, 8)]
