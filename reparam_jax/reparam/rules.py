"""`config.reparam` → a `Plan`: which transform stack applies to which parameter.

Config format (see docs/reparam.md):

  config.reparam.rules = (
      (r"block_\\d+/mlp/fc_(in|out)/kernel", "lowrank(rank={rank})"),
      (r"block_\\d+/attn/(query|value)/kernel", "lora(rank=8, alpha=16)"),
      (r".*", "frozen"),
  )
  config.reparam.rank = 64            # fills {rank}: --config.reparam.rank=32 sweeps it

* a rule is (regex, spec); the regex must *fully* match a '/'-joined
  parameter path such as 'block_0/mlp/fc_in/kernel'; the first matching rule
  wins; parameters no rule matches are left as they are;
* a spec is one or more stages joined by '|', each `name` or
  `name(key=value, ...)` with Python-literal values (bare words are strings:
  `latent(decoder=fixed)`), applied in declared order;
* `in_axes=K` on any one stage of a spec is the spec's, not the stage's: an
  N-D kernel matched by the rule is the matrix of its first K axes (input)
  by the rest (output) for the whole stack (matrix.py);
* `{field}` in a spec is replaced by `config.reparam.field`, so a sweep
  overrides one scalar instead of restating the rules;
* `config.reparam.structured` ('auto', True, False): whether 2-D weights reach
  the model as structured kernels (`(x U) Vᵀ`) or as dense arrays.  'auto'
  means structured for models from `reparam_jax.models` (whose `Dense`
  accepts them) and dense for any other (e.g. stock `nn.Dense`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import zlib
from typing import Any, Callable, Mapping

import jax

from reparam_jax.errors import UserError
from reparam_jax.pytree import layers
from reparam_jax.reparam.base import TRANSFORMS
from reparam_jax.reparam.compose import compose
from reparam_jax.reparam.matrix import view_of

IN_AXES = "in_axes"


def parse_stage(text: str) -> Any:
  """`"lowrank(rank=16)"` → `LowRank(rank=16)`."""
  text = text.strip()
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    raise UserError(f"cannot parse transform spec {text!r}; expected name(key=value, ...)") from None
  if isinstance(node, ast.Name):
    name, keywords = node.id, []
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
    name, keywords = node.func.id, node.keywords
  else:
    raise UserError(f"bad transform spec {text!r}: use name or name(key=value, ...) "
                    "(keyword arguments only)")
  if name not in TRANSFORMS:
    raise UserError(f"unknown transform {name!r} in {text!r}; known: {', '.join(sorted(TRANSFORMS))}")
  cls = TRANSFORMS[name]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kwargs = {}
  for kw in keywords:
    if kw.arg == IN_AXES:  # the spec's option, read by `spec_in_axes`
      continue
    if kw.arg not in fields:
      raise UserError(f"{name} has no argument {kw.arg!r}; it takes: "
                      f"{', '.join([*fields, IN_AXES])}")
    if isinstance(kw.value, ast.Name):  # bare word → string
      value: Any = {"True": True, "False": False, "None": None}.get(kw.value.id, kw.value.id)
    else:
      try:
        value = ast.literal_eval(kw.value)
      except ValueError:
        raise UserError(f"{name}({kw.arg}=...) in {text!r}: value must be a literal") from None
    default = fields[kw.arg].default
    if isinstance(default, bool) and not isinstance(value, bool):
      raise UserError(f"{name}({kw.arg}=...): expected True/False, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
      if not value.is_integer():
        raise UserError(f"{name}({kw.arg}=...): expected an integer, got {value!r}")
      value = int(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    kwargs[kw.arg] = value
  return cls(**kwargs)


def parse_spec(spec: str) -> Any:
  """`"spherical|lora(rank=4)"` → the composed node."""
  return compose([parse_stage(s) for s in spec.split("|")])


def spec_in_axes(spec: str) -> int | None:
  """The spec's `in_axes=K` (written on any one of its stages), or None."""
  found = []
  for text in spec.split("|"):
    node = ast.parse(text.strip(), mode="eval").body  # parse_stage has checked the syntax
    for kw in getattr(node, "keywords", ()):
      if kw.arg == IN_AXES:
        try:
          value = ast.literal_eval(kw.value)
        except ValueError:
          value = None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
          raise UserError(f"in_axes in {spec!r} must be a positive integer (the number of "
                          f"leading kernel axes contracted with the input), got "
                          f"{ast.unparse(kw.value)}")
        found.append(value)
  if len(found) > 1:
    raise UserError(f"in_axes is given {len(found)} times in {spec!r}; it applies to the whole "
                    "spec: write it once")
  return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  spec: str
  node: Any
  regex: re.Pattern = dataclasses.field(compare=False)
  in_axes: int | None = None  # N-D kernels: leading axes that are the input (matrix.py)


def parse_rule_pairs(raw: Any, section: str, fill_spec: Callable[[str], str],
                     parse: Callable[[str], Any]) -> list[Rule]:
  """`config.<section>.rules`, a tuple of (regex, spec) pairs, as `Rule`s.

  Shared by every rule-driven config section (reparam, reg); each problem
  is a one-line `UserError` naming the section and the rule's index.
  """
  if isinstance(raw, str):
    raise UserError(f"config.{section}.rules must be a tuple of (regex, spec) pairs, "
                    "not a string")
  rules = []
  for i, item in enumerate(raw):
    if not (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(x, str) for x in item)):
      raise UserError(f"config.{section}.rules[{i}] = {item!r}: expected a (regex, spec) pair")
    pattern, spec = item
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise UserError(f"config.{section}.rules[{i}]: bad regex {pattern!r}: {e}") from None
    spec = fill_spec(spec)
    rules.append(Rule(pattern, spec, parse(spec), regex))
  return rules


def _fill(spec: str, values: Mapping[str, Any]) -> str:
  def sub(m: re.Match) -> str:
    key = m.group(1)
    if key not in values:
      raise UserError(f"spec {spec!r} refers to {{{key}}} but config.reparam.{key} is not set")
    return repr(values[key]) if isinstance(values[key], str) else str(values[key])
  return re.sub(r"\{(\w+)\}", sub, spec)


@dataclasses.dataclass(frozen=True)
class Plan:
  rules: tuple[Rule, ...]
  structured: Any = "auto"
  per_layer: Any = "auto"  # effective weights inside each layer (intercept.py)

  @classmethod
  def from_config(cls, cfg: Any) -> "Plan":
    if cfg is None:
      return cls(())
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    raw = get("rules", ()) or ()
    values = {k: v for k, v in (cfg.items() if hasattr(cfg, "items") else [])
              if k not in ("rules", "structured", "per_layer") and isinstance(v, (int, float, str, bool))}
    rules = [dataclasses.replace(r, in_axes=spec_in_axes(r.spec))
             for r in parse_rule_pairs(raw, "reparam", lambda spec: _fill(spec, values),
                                       parse_spec)]
    # A bool typed on the command line into a string-typed ConfigDict field arrives as text.
    as_bool = {"True": True, "False": False}
    structured = as_bool.get(get("structured", "auto"), get("structured", "auto"))
    if structured not in ("auto", True, False):
      raise UserError(f"config.reparam.structured must be 'auto', True or False, got {structured!r}")
    per_layer = as_bool.get(get("per_layer", "auto"), get("per_layer", "auto"))
    if per_layer not in ("auto", True, False):
      raise UserError(f"config.reparam.per_layer must be 'auto', True or False, got {per_layer!r}")
    return cls(tuple(rules), structured, per_layer)

  def match(self, path: str) -> Rule | None:
    for rule in self.rules:
      if rule.regex.fullmatch(path):
        return rule
    return None

  def check_all_used(self, used: set[int], paths: list[str]) -> None:
    for i, rule in enumerate(self.rules):
      if i not in used:
        sample = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
        raise UserError(f"reparam rule {rule.pattern!r} -> {rule.spec!r} matches no parameter "
                        f"(or an earlier rule matches first); the regex must fully match a "
                        f"path such as: {sample}")


def path_key(key: jax.Array, path: str) -> jax.Array:
  """A per-parameter key that does not depend on tree order."""
  return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def map_theta(plan: Plan, tree: Any, fn, *, require_all: bool = False, prefix: str = "",
              skip: re.Pattern | None = None, used: set[int] | None = None,
              visit_only: bool = False) -> Any:
  """Rebuilds a θ params tree, replacing each reparameterized subtree by `fn(path, rule, θ)`.

  A subtree is reparameterized when its path matches a rule and its structure
  is that rule's θ; unmatched leaves go through `fn(path, None, leaf)`.
  A scanned stack (`blocks`, pytree/layers.py) is visited layer by layer
  under its logical paths (`block_{i}/...`) and the results are restacked,
  so `fn` always sees one layer's θ.  `skip`: paths left as they are, `fn`
  not called; `used`: collects the indices of the rules that matched;
  `visit_only`: `fn` is called for its effect, and a stack's first layer stands
  for all of them (the model's lifts check that every layer matches alike).
  """
  used = set() if used is None else used
  paths: list[str] = []

  def rec(node: Any, path: str) -> Any:
    if path and skip is not None and skip.fullmatch(path):
      return node
    if path:
      rule = plan.match(path)
      if rule is not None and rule.node.matches(node):
        used.add(plan.rules.index(rule))
        return fn(path, rule, node)
      view = None if rule is None else view_of(rule.node, node)
      if view is not None:  # an N-D kernel's θ: `fn` sees the rule with its view
        used.add(plan.rules.index(rule))
        return fn(path, dataclasses.replace(rule, node=view), node)
    if isinstance(node, Mapping):
      return {k: (rec_stack(v, path, layers.stack_start(k)) if layers.is_stack(k, v)
                  else rec(v, f"{path}/{k}" if path else str(k)))
              for k, v in node.items()}
    paths.append(path)
    return fn(path, None, node)

  def rec_stack(stack: Mapping, parent: str, start: int) -> Any:
    def logical(i: int) -> str:  # row i of a stack (a run) whose first layer is `start`
      return f"{parent}/{layers.layer_name(start + i)}" if parent else layers.layer_name(start + i)
    if visit_only:
      rec(layers.layer_of(stack, 0) if layers.stack_depth(stack) else stack, logical(0))
      return stack
    if layers.stack_depth(stack) is None:  # placeholders only (optax MaskedNode): one pass
      return rec(stack, logical(0))
    rows = layers.split_stack(stack)
    out = [rec(row, logical(i)) for i, row in enumerate(rows)]
    # Layers `fn` returned unchanged (no post-update, a visit for its penalty) keep the stack
    # itself: restacking their slices would copy every stacked weight, each train step.
    if all(jax.tree.structure(o) == jax.tree.structure(r)
           and all(a is b for a, b in zip(jax.tree.leaves(o), jax.tree.leaves(r)))
           for o, r in zip(out, rows)):
      return stack
    return layers.join_stack(out)

  out = rec(tree, prefix)
  if require_all:
    plan.check_all_used(used, paths)
  return out
