"""Budget-matched rows: solve a transform's size argument for a budget relative to another row.

A row of an ablation may name a budget instead of a size ("LoRA at the stored
bytes of 25 % of full fine-tuning"): `Variant(overrides, budget=Budget(...))`.
`resolve_budgets(exp)` builds each budgeted row's model the way the trainer
does (its config file plus overrides, initialised under `jax.eval_shape`,
perf/reparam_report.py), measures the reference row, searches the row's size
argument until the row's measure is `fraction` × the reference's, writes the
solved value into the row's overrides and returns, per row, what the table
shows beside it (the solved size and the achieved budget).  A budget no size
in range meets within the tolerance is refused (a `UserError` naming the
closest sizes on both sides).

Measures (`measure(config, name)`; the candidates and the reference go
through the same function, so they are counted alike):

* `stored_bytes`: bytes of the θ params collection: the trainer's
  `params/bytes` (done.json), packed integer codes counting their bytes;
* `trainable_params`: the trainer's `params/trainable` (the
  reparameterization's mask ANDed with `finetune.freeze`'s);
* `flops_per_token`: forward matmul FLOPs per token of the `report` table
  (`FLOPs/tok` of its total row: factored kernels count their factors; the
  tied output layer is included; attention's score/value products are not);
* `step_time`: measured, not counted: the median wall time of the jitted
  train step on synthetic batches (bench/lm_step.py; LM configs).  It is
  noisy, so its default tolerance is 5 % instead of 2 %.

Sizes (`Budget.size`):

* `"rules:ARG"` or `"rules:TRANSFORM.ARG"`: the argument ARG of every stage
  (of that transform) in the row's `reparam.rules` specs, e.g. `"rules:rank"`
  sets `rank=` in `lora(rank=8, alpha=16)`; the rules are rewritten and
  passed as the row's `reparam.rules` override;
* a config key such as `"model.num_layers"` or `"reparam.rank"` (a key that
  fills `{rank}` in a spec takes that argument's range).

The transform arguments that change a measure are listed in `SIZE_ARGUMENTS`
(with their range) or in `NOT_SIZES` (with why they are not a size);
tests/test_budget.py fails for a registered transform whose argument changes
the accounting and is in neither.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reparam_jax.errors import UserError

if TYPE_CHECKING:
  import ml_collections

  from reparam_jax.sweeps.experiment import Experiment

MEASURES = ("stored_bytes", "trainable_params", "flops_per_token", "step_time")
MEASURE_LABELS = {"stored_bytes": "stored bytes", "trainable_params": "trainable params",
                  "flops_per_token": "FLOPs/token", "step_time": "step time"}
DEFAULT_TOLERANCE = 0.02
STEP_TIME_TOLERANCE = 0.05  # a measured time moves by a few % from run to run
RULES_PREFIX = "rules:"
_MAX_CANDIDATES = 1 << 16  # integer sizes searched (validity is checked for each)


@dataclasses.dataclass(frozen=True)
class Budget:
  """Size a row so that its `measure` is `fraction` × the `relative_to` row's.

  `size` names what is solved (module docstring); `bounds` the (low, high)
  range searched (default: the argument's own, e.g. rank 1..min(d_in, d_out)
  of the weights its rules match; a config key: 1..4× its value);
  `tolerance` the relative error accepted (default 2 %, 5 % for step time);
  `vocab_size` the tokenizer's vocabulary where neither the config nor an
  inherited tokenizer gives it (else it is read from the task's data).
  """

  measure: str
  fraction: float = 1.0
  size: str = "rules:rank"
  relative_to: str | None = None  # a row label; None: the experiment's `reference`
  bounds: tuple[float, float] | None = None
  tolerance: float | None = None
  vocab_size: int = 0

  def __post_init__(self) -> None:
    if self.measure not in MEASURES:
      raise UserError(f"Budget(measure={self.measure!r}): use one of {', '.join(MEASURES)}")
    if not (isinstance(self.fraction, (int, float)) and math.isfinite(self.fraction)
            and self.fraction > 0):
      raise UserError(f"Budget(fraction={self.fraction!r}): use a positive number "
                      "(0.25: a quarter of the reference row's measure)")
    parse_size(self.size)
    if self.bounds is not None and (len(self.bounds) != 2 or not self.bounds[0] <= self.bounds[1]):
      raise UserError(f"Budget(bounds={self.bounds!r}): use (low, high) with low <= high")
    if self.tolerance is not None and not 0 < self.tolerance < 1:
      raise UserError(f"Budget(tolerance={self.tolerance!r}): use a fraction in (0, 1), "
                      "e.g. 0.02 for 2 %")

  @property
  def tol(self) -> float:
    if self.tolerance is not None:
      return self.tolerance
    return STEP_TIME_TOLERANCE if self.measure == "step_time" else DEFAULT_TOLERANCE


@dataclasses.dataclass(frozen=True)
class SizeRange:
  """The values a size argument may take: integers (or numbers) in [lo, hi].

  `hi` may name the matched weights' dimension ("min_dim", "max_dim", "d_in",
  "d_out": its smallest value over the weights the rule matches); values a
  transform rejects for some matched weight (`arg_problems`, `check`) are skipped.
  """

  lo: float
  hi: float | str
  integer: bool = True


# (transform, argument) -> the range the solver searches.  An argument is a
# size when it sets how much the transform stores, trains or computes.
SIZE_ARGUMENTS: dict[tuple[str, str], SizeRange] = {
    ("lowrank", "rank"): SizeRange(1, "min_dim"),
    ("lora", "rank"): SizeRange(1, "min_dim"),
    ("vera", "rank"): SizeRange(1, "max_dim"),  # may exceed min(d_in, d_out) (vera.py)
    ("latent", "dim"): SizeRange(1, "min_dim"),
    ("latent", "dim_out"): SizeRange(1, "d_out"),
    ("packed", "bits"): SizeRange(1, 16),  # the ones packed accepts: 2, 3, 4, 8
    ("packed", "group"): SizeRange(1, "d_in"),  # divisors of d_in (0, all of d_in, = d_in)
    ("q4", "block_size"): SizeRange(2, "d_in"),  # even divisors of d_in
}

# Arguments that change the accounting without being a size, and why.
NOT_SIZES: dict[tuple[str, str], str] = {
    ("hypersphere", "axis"): "which axis holds the per-vector radii, not how many",
    ("weightnorm", "axis"): "which axis holds the per-vector norms, not how many",
    ("spherical", "axis"): "which axis the angles run along",
    ("qweight", "axis"): "which axis gets a per-channel scale",
    ("quant", "axis"): "which axis gets a per-channel scale",
}


# --- sizes ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuleArg:
  """`rules:[TRANSFORM.]ARG`: an argument inside the row's `reparam.rules` specs."""

  arg: str
  transform: str | None = None

  def __str__(self) -> str:
    return RULES_PREFIX + (f"{self.transform}.{self.arg}" if self.transform else self.arg)


@dataclasses.dataclass(frozen=True)
class ConfigKey:
  """A dotted config key (`model.num_layers`, `reparam.rank`)."""

  key: str

  def __str__(self) -> str:
    return self.key


def parse_size(size: str) -> RuleArg | ConfigKey:
  """`Budget.size` as a `RuleArg` or a `ConfigKey`; a malformed one is a `UserError`."""
  if not isinstance(size, str) or not size:
    raise UserError(f"Budget(size={size!r}): name a config key (model.num_layers) or a rule "
                    "argument (rules:rank, rules:lora.rank)")
  if size.startswith(RULES_PREFIX):
    m = re.fullmatch(r"(?:(\w+)\.)?(\w+)", size[len(RULES_PREFIX):])
    if not m:
      raise UserError(f"Budget(size={size!r}): write rules:ARG or rules:TRANSFORM.ARG, "
                      "e.g. rules:rank or rules:lora.rank")
    if m.group(1):
      import reparam_jax.reparam.transforms  # noqa: F401 (registers them)
      from reparam_jax.reparam.base import TRANSFORMS
      if m.group(1) not in TRANSFORMS:
        raise UserError(f"Budget(size={size!r}): no transform {m.group(1)!r}; known: "
                        f"{', '.join(sorted(TRANSFORMS))}")
    return RuleArg(m.group(2), m.group(1))
  if not re.fullmatch(r"\w+(\.\w+)*", size):
    raise UserError(f"Budget(size={size!r}): not a dotted config key nor rules:ARG")
  from reparam_jax.sweeps.hyper import normalize_key
  return ConfigKey(normalize_key(size))


def _stage_calls(spec: str) -> list[tuple[str, list[ast.keyword]]]:
  """(name, keywords) of each stage of a raw spec (`{field}` placeholders parse as sets)."""
  out = []
  for text in spec.split("|"):
    try:
      node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
      raise UserError(f"cannot parse transform spec {text.strip()!r}") from None
    if isinstance(node, ast.Name):
      out.append((node.id, []))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      out.append((node.func.id, list(node.keywords)))
    else:
      raise UserError(f"bad transform spec {text.strip()!r}: use name or name(key=value, ...)")
  return out


def _takes(name: str, size: RuleArg) -> bool:
  """Whether stage `name` is one `size` sets."""
  import reparam_jax.reparam.transforms  # noqa: F401
  from reparam_jax.reparam.base import TRANSFORMS
  if size.transform is not None and name != size.transform:
    return False
  cls = TRANSFORMS.get(name)
  return cls is not None and size.arg in {f.name for f in dataclasses.fields(cls)}


def set_rule_arg(rules: Sequence[tuple[str, str]], size: RuleArg, value: Any
                 ) -> tuple[tuple[str, str], ...]:
  """`rules` with `size.arg=value` in every stage it names (added where the spec left the
  default); a size no stage takes is a `UserError`."""
  out, hits = [], 0
  for pattern, spec in rules:
    stages = []
    for name, keywords in _stage_calls(spec):
      if _takes(name, size):
        hits += 1
        keywords = [k for k in keywords if k.arg != size.arg]
        keywords.append(ast.keyword(arg=size.arg, value=ast.Constant(value)))
      args = ", ".join(f"{k.arg}={ast.unparse(k.value)}" for k in keywords)
      stages.append(f"{name}({args})" if args else name)
    out.append((pattern, "|".join(stages)))
  if not hits:
    specs = "; ".join(spec for _, spec in rules) or "none"
    raise UserError(f"size {size}: no stage of reparam.rules takes {size.arg!r} "
                    f"(the specs: {specs}); name an argument of one of them")
  return tuple(out)


def _placeholder_arg(rules: Sequence[tuple[str, str]], field: str) -> tuple[str, str] | None:
  """(transform, argument) that `{field}` fills in `rules`, if any."""
  for _, spec in rules:
    for name, keywords in _stage_calls(spec):
      for k in keywords:
        v = k.value
        if (isinstance(v, ast.Set) and len(v.elts) == 1 and isinstance(v.elts[0], ast.Name)
            and v.elts[0].id == field):
          return name, k.arg
  return None


# --- building and measuring ------------------------------------------------------------------


def build_config(config_spec: str, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The trainer's config of a row: its file plus `--config.k=v` overrides (as the
  command line passes them), with a pretrained `init_from`'s architecture."""
  from reparam_jax.config import load as config_load
  from reparam_jax.hf import pretrained
  from reparam_jax.sweeps.points import override_flag
  config, _ = config_load.load([f"--config={config_spec}",
                                *(override_flag(k, v) for k, v in overrides.items())])
  return pretrained.resolve(config)


def _vocab(config: Any, vocab_size: int) -> int:
  """The tokenizer's vocabulary the task would use (read from its data if nothing says it)."""
  from reparam_jax.perf.reparam_report import task_vocab_size
  found = config.model.get("vocab_size") or task_vocab_size(config, vocab_size)
  if found or config.get("task") is None:
    return found
  try:
    from reparam_jax.tasks import make_task
    return int(make_task(config, None).tokenizer.vocab_size)
  except Exception as e:  # noqa: BLE001 (a task's data loading raises many types)
    raise UserError(f"the vocabulary size of {config.get('task')} is read from its data, which "
                    f"failed ({type(e).__name__}: {str(e)[:120]}); set Budget(vocab_size=N) or "
                    "model.vocab_size") from None


def measure(config: Any, name: str, vocab_size: int = 0) -> float:
  """`name` (one of MEASURES) of the model `config` builds; module docstring."""
  if name not in MEASURES:
    raise UserError(f"unknown budget measure {name!r}; use one of {', '.join(MEASURES)}")
  vocab = _vocab(config, vocab_size)
  if name == "step_time":
    return step_time(config, vocab)
  return counted_measures(config, vocab)[name]


def counted_measures(config: Any, vocab_size: int) -> dict[str, float]:
  """The counted measures (all but step_time) of one abstract build of `config`."""
  import jax
  import numpy as np

  from reparam_jax.perf import reparam_report
  from reparam_jax.training import freezing
  built = reparam_report.abstract_model(config, vocab_size)
  rows = reparam_report.model_rows(config, vocab_size, built=built)
  return {"stored_bytes": float(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                                    for x in jax.tree.leaves(built.params))),
          "trainable_params": float(freezing.count_trainable(built.params, built.trainable)),
          "flops_per_token": float(rows[-1]["flops"]),
          # (filled spec, dense shape) of each reparameterized weight: what the sizes act on
          "weights": tuple((r["spec"], tuple(r["shape"])) for r in rows[:-1] if r.get("spec"))}


def step_time(config: Any, vocab_size: int, warmup: int = 2, steps: int = 5) -> float:
  """Median wall seconds of the trainer's jitted step on synthetic LM batches."""
  if config.get("task") not in (None, "lm"):
    raise UserError(f"a step_time budget times the LM train step (bench/lm_step.py); task "
                    f"{config.get('task')!r} is not an LM: use flops_per_token")
  try:
    from bench.lm_step import StepRunner
  except ImportError:
    raise UserError("a step_time budget needs bench/lm_step.py (run from the repository "
                    "root); use flops_per_token") from None
  runner = StepRunner(config, vocab_size)
  for i in range(warmup):
    runner.run(i)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    runner.run(warmup + i)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


@functools.lru_cache(maxsize=4096)
def _measure_cached(config_spec: str, overrides: tuple[tuple[str, str], ...], name: str,
                    vocab_size: int) -> float:
  if name == "step_time":
    return measure(build_config(config_spec, dict(overrides)), name, vocab_size)
  return _counted_cached(config_spec, overrides, vocab_size)[name]


@functools.lru_cache(maxsize=4096)
def _counted_cached(config_spec: str, overrides: tuple[tuple[str, str], ...], vocab_size: int
                    ) -> dict[str, Any]:
  config = build_config(config_spec, dict(overrides))
  return counted_measures(config, _vocab(config, vocab_size))


def _key(overrides: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
  from reparam_jax.sweeps.points import format_value
  return tuple(sorted((k, format_value(v)) for k, v in overrides.items()))


def measure_row(config_spec: str, overrides: Mapping[str, Any], name: str,
                vocab_size: int = 0) -> float:
  """`measure` of a row's built config, cached per (config, overrides): a reference row
  shared by several budgets is built once, for all its counted measures."""
  if name not in MEASURES:
    raise UserError(f"unknown budget measure {name!r}; use one of {', '.join(MEASURES)}")
  return _measure_cached(config_spec, _key(overrides), name, vocab_size)


# --- solving ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Solution:
  """A solved size: the override that sets it and what it achieves."""

  value: Any  # the size argument's value
  overrides: dict[str, Any]  # to merge into the row's overrides
  achieved: float
  target: float
  reference: float

  @property
  def error(self) -> float:
    return self.achieved / self.target - 1


def _shapes_for(config_spec: str, overrides: Mapping[str, Any], size: RuleArg, vocab: int
                ) -> list[tuple[type, Any, tuple]]:
  """(transform class, parsed stage, weight shape) of every weight a stage `size` sets."""
  from reparam_jax.reparam.rules import parse_stage
  out = []
  for spec, shape in _counted_cached(config_spec, _key(overrides), vocab)["weights"]:
    for text in spec.split("|"):
      if _takes(_stage_calls(text)[0][0], size):
        stage = parse_stage(text)
        out.append((type(stage), stage, shape))
  return out


def _dim(shapes: Sequence[tuple], which: str) -> int:
  def mat(s: tuple) -> tuple[int, int]:
    return (math.prod(s[:-1]), s[-1]) if len(s) >= 2 else (s[0], 1)
  pick = {"min_dim": lambda m: min(m), "max_dim": lambda m: max(m), "d_in": lambda m: m[0],
          "d_out": lambda m: m[1]}[which]
  return min(pick(mat(s)) for s in shapes)


def _stage_ok(stage: Any, arg: str, value: Any, shapes: Sequence[tuple]) -> bool:
  """Whether `stage` with `arg=value` accepts every matched weight's shape."""
  try:
    s = dataclasses.replace(stage, **{arg: value})
    if s.arg_problems():
      return False
    for shape in shapes:
      s.check(shape)
  except (UserError, ValueError, TypeError):
    return False
  return True


def _search_space(config_spec: str, overrides: Mapping[str, Any], size: RuleArg | ConfigKey,
                  bounds: tuple[float, float] | None, vocab: int
                  ) -> tuple[list[Any] | tuple[float, float], Callable[[Any], dict]]:
  """(the integer candidates in order, or a float (lo, hi) range; value -> overrides) of
  `size` in the row (`config_spec` + `overrides`)."""
  config = build_config(config_spec, overrides)
  rules = tuple(tuple(r) for r in (config.reparam.get("rules") or ()))
  if isinstance(size, ConfigKey):
    node = config
    for part in size.key.split("."):
      if not hasattr(node, "keys") or part not in node:
        raise UserError(f"size {size}: the config has no key {size.key!r}")
      node = node[part]
    current = node
    if isinstance(current, bool) or not isinstance(current, (int, float)):
      raise UserError(f"size {size}: {size.key} = {current!r} is not a number")
    to_overrides = lambda v: {size.key: v}
    filled = (_placeholder_arg(rules, size.key.split(".", 1)[1])
              if size.key.startswith("reparam.") else None)
    if filled is None:
      lo, hi = bounds or ((1, max(4 * current, 4)) if isinstance(current, int)
                          else (0.0, 4 * current))
      if isinstance(current, int):
        return list(range(int(lo), int(hi) + 1)), to_overrides
      return (float(lo), float(hi)), to_overrides
    rule_arg = RuleArg(filled[1], filled[0])
  else:
    rule_arg = size
    to_overrides = lambda v: {"reparam.rules": set_rule_arg(rules, size, v)}
    set_rule_arg(rules, size, 0)  # a size no stage takes is refused here
  matched = _shapes_for(config_spec, overrides, rule_arg, vocab)
  if not matched:
    raise UserError(f"size {size}: no weight of the model is matched by a rule whose spec "
                    f"takes {rule_arg.arg!r}")
  names = sorted({cls.name for cls, _, _ in matched})
  ranges = [SIZE_ARGUMENTS.get((n, rule_arg.arg)) for n in names]
  if None in ranges and bounds is None:
    n = names[ranges.index(None)]
    why = NOT_SIZES.get((n, rule_arg.arg))
    raise UserError(f"size {size}: {n}({rule_arg.arg}=...) is not a size argument the budget "
                    f"solver knows{f' ({why})' if why else ''}; sizes: "
                    f"{', '.join(f'{t}.{a}' for t, a in SIZE_ARGUMENTS)}")
  integer = all(r.integer for r in ranges if r is not None)
  if bounds is not None:
    lo, hi = bounds
  else:
    lo = max(r.lo for r in ranges)
    his = [r.hi if not isinstance(r.hi, str) else
           _dim([s for c, _, s in matched if c.name == n], r.hi) for n, r in zip(names, ranges)]
    hi = min(his)
  if not integer:
    return (float(lo), float(hi)), to_overrides
  shapes_of: dict[Any, list[tuple]] = {}  # each distinct stage: the shapes it must accept
  for _, stage, shape in matched:
    shapes_of.setdefault(stage, []).append(shape)
  if hi - lo > _MAX_CANDIDATES:
    raise UserError(f"size {size}: the range {lo}..{hi} is too wide; set Budget(bounds=...)")
  candidates = [v for v in range(math.ceil(lo), int(hi) + 1)
                if all(_stage_ok(st, rule_arg.arg, v, sh) for st, sh in shapes_of.items())]
  if not candidates:
    raise UserError(f"size {size}: no value in {lo}..{hi} suits every matched weight; "
                    "change Budget(bounds=...)")
  return candidates, to_overrides


def _fmt(value: float, name: str) -> str:
  if name == "step_time":
    return f"{value * 1e3:.3g} ms"
  for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= div:
      return f"{value / div:.3g}{suffix}"
  return f"{value:.4g}"


def solve(config_spec: str, overrides: Mapping[str, Any], budget: Budget, reference: float,
          label: str = "row") -> Solution:
  """The size of `budget.size` whose measure is closest to `budget.fraction × reference`.

  Integer sizes: interpolation search (with bisection steps) over the valid
  values, as every measure here grows or shrinks with its size argument,
  then the better of the two values around the target; floats: bisection.
  Outside the tolerance: a `UserError` naming the closest values on both sides.
  """
  size = parse_size(budget.size)
  target = budget.fraction * reference
  base = build_config(config_spec, overrides)
  vocab = _vocab(base, budget.vocab_size)
  space, to_overrides = _search_space(config_spec, overrides, size, budget.bounds, vocab)

  def f(v: Any) -> float:
    return measure_row(config_spec, {**overrides, **to_overrides(v)}, budget.measure, vocab)

  if isinstance(space, tuple):  # continuous
    lo, hi = space
    f_lo, f_hi = f(lo), f(hi)
    up = f_hi >= f_lo
    for _ in range(60):
      mid = (lo + hi) / 2
      if (f(mid) < target) == up:
        lo = mid
      else:
        hi = mid
      if abs(f(mid) / target - 1) < budget.tol / 4:
        break
    pairs = [(lo, f(lo)), (hi, f(hi))]
    ends = [(space[0], f_lo), (space[1], f_hi)]
  else:
    values = space
    f_first, f_last = f(values[0]), f(values[-1])
    if f_first == f_last:
      raise UserError(f"{label}: {MEASURE_LABELS[budget.measure]} is the same "
                      f"({_fmt(f_first, budget.measure)}) at {size}={values[0]} and "
                      f"{size}={values[-1]}: {size} does not change it (a masked weight, for "
                      "one, is stored dense); budget another measure or size")
    sign = 1.0 if f_last > f_first else -1.0
    g = lambda i: sign * f(values[i])
    goal = sign * target
    lo_i, hi_i = 0, len(values) - 1  # invariant: g(lo_i) <= goal < g(hi_i)
    if g(lo_i) > goal:
      hi_i = 0
    elif g(hi_i) <= goal:
      lo_i = hi_i
    interpolate = True
    while hi_i - lo_i > 1:
      # Interpolation lands next to the answer in a step or two (the counted measures are
      # near-linear in their size); a step that does not halve the bracket is followed by
      # a bisection step, so the search stays logarithmic for any monotone measure.
      width = hi_i - lo_i
      if interpolate and g(hi_i) > g(lo_i):
        mid = lo_i + round((goal - g(lo_i)) * width / (g(hi_i) - g(lo_i)))
        mid = min(max(mid, lo_i + 1), hi_i - 1)
      else:
        mid = (lo_i + hi_i) // 2
      if g(mid) <= goal:
        lo_i = mid
      else:
        hi_i = mid
      interpolate = not interpolate or 2 * (hi_i - lo_i) <= width
    pairs = [(values[i], f(values[i])) for i in sorted({lo_i, hi_i})]
    ends = [(values[0], f_first), (values[-1], f_last)]
  value, achieved = min(pairs, key=lambda p: (abs(p[1] / target - 1), p[0]))
  if abs(achieved / target - 1) > budget.tol:
    m = budget.measure
    near = " and ".join(f"{size}={v} gives {_fmt(a, m)} ({a / reference:.3g}×)" for v, a in pairs)
    span = (f"{size} in {ends[0][0]}..{ends[1][0]} reaches {_fmt(min(ends[0][1], ends[1][1]), m)}"
            f"..{_fmt(max(ends[0][1], ends[1][1]), m)}")
    raise UserError(f"{label}: no {size} meets {MEASURE_LABELS[m]} {_fmt(target, m)} "
                    f"(= {budget.fraction:g}× the reference's {_fmt(reference, m)}) within "
                    f"{budget.tol:.0%}: {near}; {span}; change Budget(fraction=...) or "
                    "Budget(bounds=...)")
  if isinstance(value, float) and isinstance(space, list):
    value = int(value)
  return Solution(value, to_overrides(value), achieved, target, reference)


def describe(size: str, solution: Solution, budget: Budget, reference_label: str
             ) -> dict[str, str]:
  """The columns a budgeted row shows: the solved size and the achieved budget."""
  name = parse_size(size)
  arg = name.arg if isinstance(name, RuleArg) else name.key
  value = f"{solution.value:.4g}" if isinstance(solution.value, float) else str(solution.value)
  achieved = solution.achieved / solution.reference
  return {"size": f"{arg}={value}",
          "budget": (f"{MEASURE_LABELS[budget.measure]} {_fmt(solution.achieved, budget.measure)} "
                     f"= {achieved:.3g}× {reference_label} (target {budget.fraction:.3g}×, "
                     f"{100 * solution.error:+.1f} %)")}


# --- experiments -----------------------------------------------------------------------------

_VARIANT_REF = re.compile(r"^\{variant:.+\}$")


def _row(exp: Experiment, label: str, extra: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(config spec, overrides) of row `label`, as expand() merges them; `{variant:...}`
  values are left out (the run they name may not exist yet)."""
  from reparam_jax.sweeps import hyper
  from reparam_jax.sweeps.experiment import Variant
  v = exp.variants[label]
  own = v.overrides if isinstance(v, Variant) else v
  merged = {hyper.normalize_key(k): val for k, val in {**exp.overrides, **own, **extra}.items()}
  config = merged.pop(hyper.CONFIG_KEY, None) or exp.config
  if config is None:
    raise UserError(f"experiment {exp.name}: row {label!r} has no config")
  merged.pop(exp.seed_key, None)
  return config, {k: val for k, val in merged.items()
                  if not (isinstance(val, str) and _VARIANT_REF.match(val))}


def resolve_budgets(exp: Experiment, extra_args: Sequence[str] = ()
                    ) -> tuple[Experiment, dict[str, dict[str, str]]]:
  """`exp` with every budgeted row's size solved into its overrides, and per such row the
  columns to show ({"size": "rank=77", "budget": "stored bytes ... (target ..., +0.4 %)"}).

  `extra_args`: the command line's `--config.k=v` overrides (they apply to every
  row, the reference included).  Rows without a budget are unchanged; a
  budget relative to a budgeted row uses that row's solved size.
  """
  from reparam_jax.sweeps.experiment import Variant
  if not exp.variants or not any(isinstance(v, Variant) and v.budget for v in
                                 exp.variants.values()):
    return exp, {}
  extra = dict(a[len("--config."):].split("=", 1) for a in extra_args)
  variants = dict(exp.variants)
  columns: dict[str, dict[str, str]] = {}
  solving: list[str] = []

  def resolve(label: str) -> None:
    v = variants[label]
    if not isinstance(v, Variant) or v.budget is None or label in columns:
      return
    if label in solving:
      raise UserError(f"experiment {exp.name}: budgets of rows {', '.join(solving)} refer to "
                      "each other in a cycle")
    b = v.budget
    ref = b.relative_to or exp.reference
    if ref is None:
      raise UserError(f"experiment {exp.name}: row {label!r} has a budget but names no "
                      "reference row; set Budget(relative_to=LABEL) or Experiment(reference=...)")
    if ref not in variants:
      raise UserError(f"experiment {exp.name}: row {label!r}'s budget is relative to "
                      f"{ref!r}, which is no row (rows: {', '.join(map(repr, variants))})")
    if ref == label:
      raise UserError(f"experiment {exp.name}: row {label!r}'s budget is relative to itself; "
                      "name another row in Budget(relative_to=...)")
    solving.append(label)
    resolve(ref)
    solving.pop()
    ref_spec, ref_overrides = _row(dataclasses.replace(exp, variants=variants), ref, extra)
    reference = measure_row(ref_spec, ref_overrides, b.measure, _vocab(
        build_config(ref_spec, ref_overrides), b.vocab_size))
    spec, overrides = _row(dataclasses.replace(exp, variants=variants), label, extra)
    solution = solve(spec, overrides, b, reference, label=f"experiment {exp.name}, row {label!r}")
    variants[label] = dataclasses.replace(v, overrides={**v.overrides, **solution.overrides})
    columns[label] = describe(b.size, solution, b, ref)

  for label in list(variants):
    resolve(label)
  return dataclasses.replace(exp, variants=variants), columns
