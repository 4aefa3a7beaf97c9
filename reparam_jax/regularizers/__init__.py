"""Penalties on the weights, selected by path rules, added to the training loss.

Config (`config.reg`, see docs/regularization.md):

  c.reg.rules = ((r".*/kernel", "l1(1e-5)"),
                 (r"block_\\d+/mlp/.*/kernel", "nuclear({nuc})|l2(1e-4)"))
  c.reg.nuc = 1e-4         # fills {nuc}
  c.reg.l1 = 0.0           # > 0: coef · Σ|W| on every matrix (ndim ≥ 2), besides the rules
  c.reg.l2 = 0.0           # > 0: coef · ½ΣW² on every matrix, besides the rules
  c.reg.target = "effective"   # what a penalty sees for a reparameterized weight

Rules use the reparam core's matching (`reparam_jax.reparam.rules`): the
regex must fully match a weight's path (`block_0/mlp/fc_in/kernel`), the first
matching rule wins, a rule matching no weight is a `UserError`.  A weight is
a plain parameter or a whole reparameterized θ (the path of the weight it
replaces), so one rule covers a dense kernel and its low-rank factors alike.

`target`: `"effective"` penalizes the weight the model computes with,
W = f(θ) (LoRA merged, variational at its mean); `"theta"` penalizes the
stored, trainable θ leaves (e.g. L1 on low-rank factors, on LoRA's A and B
but not the frozen W₀).  Per term: `l1(1e-5, on=theta)`.  Whatever the
target, `nuclear` on a plain low-rank θ {u, v} uses the factored bound
½(‖U‖²+‖V‖²) unless `exact=True`.  Weights a reparam rule freezes entirely
(`frozen`) are skipped: their penalty would be a constant.

Decoupled weight decay is not here but in the optimizer
(`config.optimizer.weight_decay`, masked by `config.optimizer.decay_rules`;
`reparam_jax.regularizers.decay`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.regularizers import norms
from reparam_jax.regularizers.spec import PENALTIES, TARGETS, Term, fill, parse_spec
from reparam_jax.reparam.kernels import materialize
from reparam_jax.reparam.rules import Plan, Rule, map_theta, parse_rule_pairs
from reparam_jax.reparam.transforms.lowrank import LowRank

__all__ = ["PENALTIES", "Regularizer", "Term", "norms", "parse_spec", "weights"]

PyTree = Any
_MATRIX = {"nuclear", "orthogonal"}  # penalties defined on a 2-D weight


def weights(params: PyTree, reparam_plan: Plan | None = None
            ) -> list[tuple[str, Rule | None, Any]]:
  """(path, reparam rule or None, θ) of every weight: plain leaves and whole θ subtrees."""
  out: list[tuple[str, Rule | None, Any]] = []

  def visit(path, rule, theta):
    out.append((path, rule, theta))
    return theta

  map_theta(reparam_plan or Plan(()), meta.unbox(params), visit)
  return out


def _trainable_leaves(rule: Rule, theta: Any) -> Iterator[jax.Array]:
  def rec(t, m):
    if isinstance(t, Mapping):
      for k in t:
        yield from rec(t[k], m if isinstance(m, bool) else m[k])
    elif m:
      yield t
  yield from rec(theta, rule.node.trainable(theta))


def _is_lowrank(rule: Rule | None, theta: Any) -> bool:
  """A plain `lowrank` θ {u, v} of arrays: not a stack whose factors are themselves
  reparameterized (`lowrank|spherical` names itself lowrank but holds θ per factor)."""
  return (rule is not None and isinstance(rule.node, LowRank)
          and isinstance(theta, Mapping) and set(theta) == {"u", "v"}
          and not any(isinstance(theta[k], Mapping) for k in theta))


class Regularizer:
  """`penalty(params) -> (total, {'l1': ..., 'nuclear': ...})`, jit-traceable.

  Terms are weighted (coef included) and summed over weights by penalty name,
  so `penalty/l1` in the metrics is exactly what L1 added to the loss.
  """

  def __init__(self, reg_cfg: Any, reparam_plan: Plan | None = None):
    reg_cfg = reg_cfg if reg_cfg is not None else {}
    get = reg_cfg.get
    self.reparam_plan = reparam_plan
    self.target = get("target", "effective")
    if self.target not in TARGETS:
      raise UserError(f"config.reg.target must be one of {', '.join(TARGETS)}, "
                      f"got {self.target!r}")
    raw = get("rules", ()) or ()
    values = {k: v for k, v in reg_cfg.items()
              if k not in ("rules", "target") and isinstance(v, (int, float, str, bool))}
    rules = parse_rule_pairs(raw, "reg", lambda spec: fill(spec, values), parse_spec)
    self.plan = Plan(tuple(rules))
    self.scalars: list[Term] = []
    for name in ("l1", "l2"):
      coef = get(name, 0.0)
      if isinstance(coef, bool) or not isinstance(coef, (int, float)) \
          or not 0 <= coef < float("inf"):
        raise UserError(f"config.reg.{name}={coef!r}: expected a non-negative number")
      if coef > 0:
        self.scalars.append(Term(name, float(coef)))
    self.active = bool(self.plan.rules or self.scalars)

  def names(self) -> list[str]:
    """The penalty names this config logs, in a stable order."""
    seen = [t.name for r in self.plan.rules for t in r.node] + [t.name for t in self.scalars]
    return sorted(set(seen))

  def penalty(self, params: PyTree) -> tuple[jax.Array, dict[str, jax.Array]]:
    terms: dict[str, jax.Array] = {}
    used: set[int] = set()
    paths = []
    for path, rule, theta in weights(params, self.reparam_plan):
      paths.append(path)
      if rule is not None and not any(True for _ in _trainable_leaves(rule, theta)):
        continue  # frozen: a constant penalty with no gradient
      shape = tuple(rule.node.dense_shape(theta)) if rule is not None else tuple(theta.shape)
      stages: list[Term] = []
      match = self.plan.match(path)
      if match is not None:
        used.add(self.plan.rules.index(match))
        stages.extend(match.node)
      if len(shape) >= 2:
        stages.extend(self.scalars)
      effective = _Lazy(lambda rule=rule, theta=theta: theta if rule is None
                        else materialize(rule.node.apply(theta, None)))
      for term in stages:
        value = term.coef * self._value(term, path, rule, theta, shape, effective)
        terms[term.name] = terms[term.name] + value if term.name in terms else value
    for i, r in enumerate(self.plan.rules):
      if i not in used:
        sample = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
        raise UserError(f"reg rule {r.pattern!r} -> {r.spec!r} matches no trainable weight (or "
                        f"an earlier rule matches first); the regex must fully match a path "
                        f"such as: {sample}")
    for name in self.names():  # a constant 0 rather than a missing key keeps logs uniform
      terms.setdefault(name, jnp.zeros((), jnp.float32))
    total = sum(terms.values(), jnp.zeros((), jnp.float32))
    return total, terms

  def _value(self, term: Term, path: str, rule: Rule | None, theta: Any,
             shape: tuple[int, ...], effective: "_Lazy") -> jax.Array:
    if term.name == "nuclear" and not term.exact and _is_lowrank(rule, theta):
      return norms.nuclear_factored(theta["u"], theta["v"])
    fn = _FUNCTIONS[term.name](term)
    on = term.on or self.target
    if on == "theta" and rule is not None:
      leaves = list(_trainable_leaves(rule, theta))
      if term.name in _MATRIX:
        leaves = [x for x in leaves if x.ndim == 2]
        if not leaves:
          raise UserError(f"{term.name}(on=theta) at {path}: θ has no trainable 2-D leaf")
      return sum((fn(x) for x in leaves), jnp.zeros((), jnp.float32))
    if term.name in _MATRIX and len(shape) != 2:
      raise UserError(f"{term.name} needs a 2-D weight; {path} has shape {shape}")
    return fn(effective())


class _Lazy:
  """Materializes an effective weight once, only if some term needs it."""

  def __init__(self, make: Callable[[], jax.Array]):
    self._make, self._value = make, None

  def __call__(self) -> jax.Array:
    if self._value is None:
      self._value = self._make()
    return self._value


def _orthogonal(term: Term) -> Callable[[jax.Array], jax.Array]:
  if term.kind == "spectral":
    return lambda w: norms.orthogonality_spectral(w, term.iters)
  return norms.orthogonality_frobenius


_FUNCTIONS: dict[str, Callable[[Term], Callable[[jax.Array], jax.Array]]] = {
    "l1": lambda t: norms.l1,
    "l2": lambda t: norms.l2,
    "nuclear": lambda t: norms.nuclear_exact,
    "orthogonal": _orthogonal,
}
