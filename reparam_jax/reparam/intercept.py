"""Variable interception: run an unchanged Flax model on reparameterized weights.

`wrap(module, cfg)` returns a subclass of the module's class whose `__call__`
is lifted by `_reparam_lift`, a lifted transform in the style of Flax's
`nn.map_variables` (same `flax.core.lift.pack` machinery, same guarantees:
parameter paths unchanged, other collections and rng streams pass through,
works under jit/eval_shape/remat).  We do not call `nn.map_variables` itself
because its `trans_in_fn` sees only the variables, and two of our needs are
not functions of the variables alone:

* sampling: the variational transforms draw ε from the `'reparam'` rng, and
  only when the caller passed that stream;
* initialization: `map_variables(init=True)` maps the initialized dense tree
  through `trans_out_fn`, which gets no rng, and afterwards maps the *view*
  (effective weights) back through it again; for non-invertible maps (LoRA's
  W₀ + AB, a sampled W) that second mapping cannot recover θ.

The lift here: on `init`, runs the model once to create the dense variables
(shapes, dtypes, logical names, init scale), builds θ per matched path with
`transform.init`, then runs the model again on the effective weights (so
`init_with_output` returns what `apply` would).  On `apply`, it computes the
view θ → effective weights once per call, outside the model, and runs the
model on it with `params` immutable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta
from flax.core.frozen_dict import unfreeze
from flax.core.lift import pack
from flax.core.scope import subtract_filters
from flax.linen.transforms import lift_transform

from reparam_jax.pytree.paths import dict_leaves, set_path, subtree
from reparam_jax.reparam.kernels import materialize
from reparam_jax.reparam.rules import Plan, map_theta, path_key
from reparam_jax.reparam.state import AUX_COLLECTION, has_state, init_state, join_state

PyTree = Any

# Optional collection `{"index": int[batch]}` passed to `apply`: the row index a
# per-row kernel selects by (adapters/select.py: one adapter of a stack per row).
ROWS_COLLECTION = "adapter_index"


def _box_maker(leaf: Any) -> Callable[[Any, tuple], Any]:
  """Boxes θ leaves like the weight they replace (same box class and mesh)."""
  if isinstance(leaf, nn.Partitioned):
    return lambda value, names: leaf.replace(value=value, names=tuple(names))
  return lambda value, names: value  # an unboxed (e.g. stock nn.Dense) weight: θ unboxed too


def _names(leaf: Any, ndim: int) -> tuple:
  return tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else (None,) * ndim


def dense_to_theta(plan: Plan, dense: PyTree, make_theta: Callable[[str, Any, Any, Any], Any],
                   ) -> PyTree:
  """θ tree from a dense (boxed or plain) params tree; `make_theta(path, node, w, key)`.

  Every rule must match at least one leaf (a rule matching nothing is almost
  always a typo in its regex).
  """
  out = unfreeze(dense)  # a copy of the dict structure; leaves are shared
  used, paths = set(), []
  for path, leaf in dict_leaves(dense):
    paths.append(path)
    rule = plan.match(path)
    if rule is None:
      continue
    used.add(plan.rules.index(rule))
    w = leaf.unbox() if isinstance(leaf, meta.AxisMetadata) else leaf
    rule.node.check(tuple(w.shape))
    theta = make_theta(path, rule.node, w)
    # Integer leaves (e.g. int8 storage) keep their dtype.
    theta = jax.tree.map(
        lambda a, dt=w.dtype: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, theta)
    set_path(out, path, rule.node.box(theta, _names(leaf, w.ndim), _box_maker(leaf)))
  plan.check_all_used(used, paths)
  return out


def effective(plan: Plan, params: PyTree, rng: jax.Array | None, structured: bool,
              aux: PyTree | None = None, require_all: bool = False,
              rows: jax.Array | None = None) -> PyTree:
  """The view the model sees: effective weights (possibly structured) at θ's paths.

  `aux` is the `'masks'` collection (non-trainable per-weight state such as
  sparsity masks); its entries are joined into θ before `apply`.
  `require_all`: a rule that matches no θ is an error (conversions, reports).
  `rows`: the `ROWS_COLLECTION` index, handed to kernels that compute each
  batch row differently (`select_rows`, e.g. a stack of adapters).
  """
  def fn(path, rule, theta):
    if rule is None:
      return theta
    theta = meta.unbox(theta)
    if aux:
      theta = join_state(rule.node, theta, meta.unbox(subtree(aux, path)))
    w = rule.node.apply(theta, None if rng is None else path_key(rng, path))
    if rows is not None and hasattr(w, "select_rows"):
      w = w.select_rows(rows)
    return w if structured else materialize(w)
  return map_theta(plan, params, fn, require_all=require_all)


def init_aux_tree(plan: Plan, params: PyTree) -> dict:
  """The `'masks'` collection for freshly built θ: each aux entry boxed like its weight."""
  out: dict = {}

  def box_like(leaf, value):
    return leaf.replace(value=value) if isinstance(leaf, nn.Partitioned) else value

  def fn(path, rule, theta):
    if rule is not None and has_state(rule.node):
      aux = init_state(rule.node, theta, box_like)
      if aux:
        set_path(out, path, aux, create=True)
    return theta
  map_theta(plan, params, fn)
  return out


def _reparam_lift(fn: Callable, plan: Plan, structured: bool) -> Callable:
  def outer(scopes, *args, **kwargs):
    scope = jax.tree_util.tree_leaves(scopes)[0]
    params_mutable = scope.is_mutable_collection("params")
    sample_rng = scope.make_rng("reparam") if scope.has_rng("reparam") else None

    def inner(scope_fn, repack, variable_groups, rng_groups, *args, **kwargs):
      target, variables = variable_groups
      target = tuple(unfreeze(t) for t in target)
      new_aux = None
      if params_mutable and not any(t.get("params") for t in target):
        scopes = scope_fn((target, variables), rng_groups)
        fn(scopes, *args, **kwargs)
        key = jax.tree_util.tree_leaves(scopes)[0].make_rng("params")
        dense, _ = repack(scopes)
        target = tuple(
            {**d, "params": dense_to_theta(
                plan, d.get("params", {}),
                lambda path, node, w: node.init_from(path_key(key, path), w))}
            for d in (unfreeze(x) for x in dense))
        # Non-trainable per-weight state (sparsity masks) is created with θ.
        new_aux = tuple(init_aux_tree(plan, t.get("params", {})) for t in target)
      aux = new_aux or tuple(unfreeze(v).get(AUX_COLLECTION) for v in variables)
      rows = tuple(unfreeze(v).get(ROWS_COLLECTION, {}).get("index") for v in variables)
      views = tuple({**t, "params": effective(plan, t.get("params", {}), sample_rng, structured,
                                              a, rows=r)}
                    for t, a, r in zip(target, aux, rows))
      scopes = scope_fn((views, variables), rng_groups,
                        mutable_filter=subtract_filters(True, "params"))
      y = fn(scopes, *args, **kwargs)
      _, out_vars = repack(scopes)
      if new_aux is not None and any(new_aux):
        out_vars = tuple({**unfreeze(o), AUX_COLLECTION: a} if a else o
                         for o, a in zip(out_vars, new_aux))
      return y, (target, out_vars)

    others = subtract_filters(True, "params")
    packed = pack(inner, ("params", True), ("params" if params_mutable else False, others),
                  (True,), enable_kwargs=True, name="reparam")
    return packed(scopes, *args, **kwargs)

  return outer


_reparam_lift.__name__ = "reparam"


def structured_for(plan: Plan, module: nn.Module) -> bool:
  """Whether `module` gets structured kernels: `config.reparam.structured`, where 'auto'
  means yes for the project's models (whose `Dense` accepts them), no for any other."""
  if plan.structured == "auto":
    return type(module).__module__.startswith("reparam_jax.")
  return bool(plan.structured)


def wrap(module: nn.Module, plan: Plan) -> nn.Module:
  """`module` computing with reparameterized weights; same call signature.

  `wrapped.init(...)` returns boxed θ in place of each matched weight;
  `wrapped.apply(..., rngs={'reparam': key})` samples stochastic transforms.
  With no rules, returns `module` itself.
  """
  if not plan.rules:
    return module
  structured = structured_for(plan, module)
  cls = lift_transform(_reparam_lift, type(module), plan, structured)
  attrs = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
           if f.init and f.name != "parent"}
  return cls(**attrs)
