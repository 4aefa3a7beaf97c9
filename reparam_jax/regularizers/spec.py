"""Penalty specs: `"l1(1e-5)"`, `"nuclear(1e-4)|l2(coef=1e-4, on=theta)"`.

The same shape as the reparam spec language (docs/reparam.md): stages joined
by `|`, each `name` or `name(...)` with Python-literal values and bare words as
strings, `{field}` filled from the config section.  One difference: the
coefficient may be given positionally (`l1(1e-5)`), since every penalty has
one and `l1(coef=1e-5)` in every rule is noise.  Here `|` means *sum*: every
stage is added to the loss.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any, Mapping

from reparam_jax.errors import UserError

TARGETS = ("effective", "theta")
ORTHO_KINDS = ("frobenius", "spectral")

# name -> its keyword arguments besides `coef` and `on`, with defaults.
PENALTIES: dict[str, dict[str, Any]] = {
    "l1": {},
    "l2": {},
    "nuclear": {"exact": False},
    "orthogonal": {"kind": "frobenius", "iters": 10},
}


@dataclasses.dataclass(frozen=True)
class Term:
  """One penalty stage: `coef · name(weight)`; `on` None = the section's `target`."""
  name: str
  coef: float
  on: str | None = None
  exact: bool = False  # nuclear: SVD even for a low-rank θ
  kind: str = "frobenius"  # orthogonal
  iters: int = 10  # orthogonal, kind=spectral: power iterations


def _literal(name: str, node: ast.AST, text: str) -> Any:
  if isinstance(node, ast.Name):  # bare word → string
    return {"True": True, "False": False, "None": None}.get(node.id, node.id)
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise UserError(f"{name}(...) in {text!r}: values must be literals") from None


def parse_term(text: str) -> Term:
  text = text.strip()
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    raise UserError(f"cannot parse penalty spec {text!r}; expected name(coef, key=value, ...)"
                    ) from None
  if isinstance(node, ast.Name):
    name, args, keywords = node.id, [], []
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name, args, keywords = node.func.id, node.args, node.keywords
  else:
    raise UserError(f"bad penalty spec {text!r}: use name(coef) or name(coef, key=value, ...)")
  if name not in PENALTIES:
    raise UserError(f"unknown penalty {name!r} in {text!r}; known: {', '.join(PENALTIES)}")
  if len(args) > 1:
    raise UserError(f"{text!r}: only the coefficient may be positional")
  allowed = {"coef", "on", *PENALTIES[name]}
  values: dict[str, Any] = {}
  if args:
    values["coef"] = _literal(name, args[0], text)
  for kw in keywords:
    if kw.arg not in allowed:
      raise UserError(f"{name} has no argument {kw.arg!r}; it takes: {', '.join(sorted(allowed))}")
    if kw.arg in values:
      raise UserError(f"{text!r}: {kw.arg} given twice")
    values[kw.arg] = _literal(name, kw.value, text)
  if "coef" not in values:
    raise UserError(f"{text!r}: the penalty needs a coefficient, e.g. {name}(1e-4)")
  coef = values["coef"]
  if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not coef >= 0 \
      or coef == float("inf"):
    raise UserError(f"{text!r}: the coefficient must be a non-negative finite number, got {coef!r}")
  values["coef"] = float(coef)
  if values.get("on") not in (None, *TARGETS):
    raise UserError(f"{text!r}: on must be one of {', '.join(TARGETS)}, got {values['on']!r}")
  if "exact" in values and not isinstance(values["exact"], bool):
    raise UserError(f"{text!r}: exact must be True or False")
  if values.get("kind", "frobenius") not in ORTHO_KINDS:
    raise UserError(f"{text!r}: kind must be one of {', '.join(ORTHO_KINDS)}")
  iters = values.get("iters", 10)
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
    raise UserError(f"{text!r}: iters must be a positive integer")
  return Term(name=name, **values)


def fill(spec: str, values: Mapping[str, Any], section: str = "reg") -> str:
  """`{field}` → `config.<section>.field` (so a sweep overrides one scalar)."""
  def sub(m: re.Match) -> str:
    key = m.group(1)
    if key not in values:
      raise UserError(f"penalty spec {spec!r} refers to {{{key}}} but config.{section}.{key} "
                      "is not set")
    return repr(values[key]) if isinstance(values[key], str) else str(values[key])
  return re.sub(r"\{(\w+)\}", sub, spec)


def parse_spec(spec: str) -> tuple[Term, ...]:
  """`"nuclear(1e-4)|l2(1e-4)"` → its terms (added together)."""
  if not isinstance(spec, str) or not spec.strip():
    raise UserError(f"empty penalty spec {spec!r}")
  return tuple(parse_term(s) for s in spec.split("|"))
