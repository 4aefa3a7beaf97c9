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

Per layer (`config.reparam.per_layer`, always with `model.scan_layers`): the
model's `layer_transform` hook (models/stack.py) lifts each block's class the
same way, so a block computes its own effective weights inside its call
(inside the scan, inside the remat region: in the backward pass they are
recomputed, and only one layer's exist at a time).  The lift around the whole
model then handles only the parameters outside the layers.  A block's lift
matches rules on its logical paths (`block_3/attn/query/kernel`); in a
scanned stack every layer must match the same rules, since one θ structure
is stacked, so where rules select some layers (`block_3/...`) the model
scans each run of alike layers separately (`layer_runs`, models/stack.py).
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

from reparam_jax.errors import UserError
from reparam_jax.pytree.layers import LAYER_PATH, STACK, layer_name, stack_start
from reparam_jax.pytree.paths import dict_leaves, set_path, subtree
from reparam_jax.reparam.kernels import materialize
from reparam_jax.reparam.matrix import node_for
from reparam_jax.reparam.rules import Plan, Rule, map_theta, path_key
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
                   check_used: bool = True, prefix: str = "",
                   skip: Any = None) -> PyTree:
  """θ tree from a dense (boxed or plain) params tree; `make_theta(path, node, w, key)`.

  Every rule must match at least one leaf (a rule matching nothing is almost
  always a typo in its regex); `check_used=False` leaves that check to the
  caller.  `prefix`: the tree's own path (a layer's); `skip`: a path regex
  whose leaves are left as they are (the layers, when they reparameterize
  themselves; rules already applied there count as used).
  """
  out = unfreeze(dense)  # a copy of the dict structure; leaves are shared
  used, paths = set(), []
  if skip is not None:  # θ the layers made: its rules count as used
    map_theta(plan, dense, lambda path, rule, theta: theta, used=used, prefix=prefix,
              visit_only=True)
  for rel, leaf in dict_leaves(dense):
    path = f"{prefix}/{rel}" if prefix else rel
    if skip is not None and skip.fullmatch(path):
      continue
    paths.append(path)
    rule = plan.match(path)
    if rule is None:
      continue
    used.add(plan.rules.index(rule))
    w = leaf.unbox() if isinstance(leaf, meta.AxisMetadata) else leaf
    names = _names(leaf, w.ndim)
    node = node_for(rule, path, tuple(w.shape), names)  # an N-D kernel: its matrix view
    node.check(tuple(w.shape))
    theta = make_theta(path, node, w)
    # Integer leaves (e.g. int8 storage) keep their dtype.
    theta = jax.tree.map(
        lambda a, dt=w.dtype: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, theta)
    set_path(out, rel, node.box(theta, names, _box_maker(leaf)))
  if check_used:
    plan.check_all_used(used, paths)
  return out


def effective(plan: Plan, params: PyTree, rng: jax.Array | None, structured: bool,
              aux: PyTree | None = None, require_all: bool = False,
              rows: jax.Array | None = None, prefix: str = "", skip: Any = None) -> PyTree:
  """The view the model sees: effective weights (possibly structured) at θ's paths.

  `aux` is the `'masks'` collection (non-trainable per-weight state such as
  sparsity masks); its entries are joined into θ before `apply`.
  `require_all`: a rule that matches no θ is an error (conversions, reports).
  `rows`: the `ROWS_COLLECTION` index, handed to kernels that compute each
  batch row differently (`select_rows`, e.g. a stack of adapters).
  `prefix`: the tree's own path (a layer's); `skip`: paths left as they are.
  """
  def fn(path, rule, theta):
    if rule is None:
      return theta
    theta = meta.unbox(theta)
    if aux:
      rel = path[len(prefix) + 1:] if prefix else path
      theta = join_state(rule.node, theta, meta.unbox(subtree(aux, rel)))
    w = rule.node.apply(theta, None if rng is None else path_key(rng, path))
    if rows is not None and hasattr(w, "select_rows"):
      w = w.select_rows(rows)
    return w if structured else materialize(w)
  return map_theta(plan, params, fn, require_all=require_all, prefix=prefix, skip=skip)


def init_aux_tree(plan: Plan, params: PyTree, prefix: str = "", skip: Any = None) -> dict:
  """The `'masks'` collection for freshly built θ: each aux entry boxed like its weight."""
  out: dict = {}

  def box_like(leaf, value):
    return leaf.replace(value=value) if isinstance(leaf, nn.Partitioned) else value

  def fn(path, rule, theta):
    if rule is not None and has_state(rule.node):
      aux = init_state(rule.node, theta, box_like)
      if aux:
        set_path(out, path[len(prefix) + 1:] if prefix else path, aux, create=True)
    return theta
  map_theta(plan, params, fn, prefix=prefix, skip=skip)
  return out


class LayerPlan:
  """A `Plan` seen from inside one block: rules matched on the block's logical paths.

  `prefixes`: the block's logical path, or in a scanned stack every layer's
  (`.../block_0` ... `.../block_{L-1}`).  Matching is done on the first; every
  other layer must match the same rule, because one θ structure is stacked.
  """

  def __init__(self, plan: Plan, prefixes: list[str]):
    self.plan, self.prefixes, self.rules = plan, prefixes, plan.rules

  def match(self, path: str) -> Rule | None:
    rule = self.plan.match(path)
    first = self.prefixes[0]
    if len(self.prefixes) > 1 and path.startswith(first + "/"):
      rel = path[len(first) + 1:]
      for p in self.prefixes[1:]:
        other = self.plan.match(f"{p}/{rel}")
        if other is not rule:
          def show(r: Rule | None) -> str:
            return "no rule" if r is None else f"rule {r.pattern!r}"
          raise UserError(
              f"{first}/{rel} matches {show(rule)} but {p}/{rel} matches {show(other)}: in a "
              f"scanned stack (model.scan_layers=True) every layer gets the same "
              f"reparameterization; make the rule select all layers, or unroll the layers "
              f"(model.scan_layers=False)")
    return rule

  def check_all_used(self, used: set[int], paths: list[str]) -> None:
    pass  # the model's lift checks every rule once, over the whole tree


def _layer_prefixes(scope_path: tuple[str, ...], stacked: int) -> list[str]:
  """The logical path(s) of the block whose scope is at `scope_path` (a stack, or a run
  `blocks_{start}` of one, covers `block_{start}` ... `block_{start + stacked - 1}`)."""
  parts = [str(p) for p in scope_path]
  if not stacked:
    return ["/".join(parts)]
  start = stack_start(parts[-1]) if parts else None
  if start is None:
    raise ValueError(f"a scanned layer lift expects its scope to end in a stack name "
                     f"({STACK!r}, {STACK}_<first layer>), got {parts}")
  return ["/".join(parts[:-1] + [layer_name(start + i)]) for i in range(stacked)]


def layer_runs(plan: Plan, layer_paths: list[list[str]]) -> list[int]:
  """The first layer of each run of layers the rules treat alike (`runs` of models/stack.py):
  layer i starts a run when some parameter path of it matches another rule than the
  same path of layer i - 1 does."""
  def rules_of(paths: list[str]) -> tuple:
    return tuple(id(plan.match(p)) for p in paths)
  seen = [rules_of(paths) for paths in layer_paths]
  return [0] + [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]


def _reparam_lift(fn: Callable, plan: Plan, structured: bool, layer: int | None = None,
                  skip_layers: bool = False) -> Callable:
  """`layer`: None for the lift around a whole model, else the lift around one block
  (0: an unrolled block, L: a scanned stack of L).  `skip_layers`: the whole
  model's lift leaves the layers' parameters to their own lifts."""
  skip = LAYER_PATH if skip_layers else None

  def outer(scopes, *args, **kwargs):
    scope = jax.tree_util.tree_leaves(scopes)[0]
    params_mutable = scope.is_mutable_collection("params")
    sample_rng = scope.make_rng("reparam") if scope.has_rng("reparam") else None
    prefix, view_plan = "", plan
    if layer is not None:
      prefixes = _layer_prefixes(scope.path, layer)
      prefix, view_plan = prefixes[0], LayerPlan(plan, prefixes)

    def inner(scope_fn, repack, variable_groups, rng_groups, *args, **kwargs):
      target, variables = variable_groups
      target = tuple(unfreeze(t) for t in target)
      new_aux = None
      if params_mutable and not any(t.get("params") for t in target):
        scopes = scope_fn((target, variables), rng_groups)
        fn(scopes, *args, **kwargs)
        key = jax.tree_util.tree_leaves(scopes)[0].make_rng("params")
        dense, made = repack(scopes)
        target = tuple(
            {**d, "params": dense_to_theta(
                view_plan, d.get("params", {}),
                lambda path, node, w: node.init_from(path_key(key, path), w),
                check_used=layer is None, prefix=prefix, skip=skip)}
            for d in (unfreeze(x) for x in dense))
        # Non-trainable per-weight state (sparsity masks) is created with θ.
        new_aux = tuple(init_aux_tree(view_plan, t.get("params", {}), prefix, skip)
                        for t in target)
        if skip is not None:  # the layers made their own state: keep it beside ours
          new_aux = tuple({**(unfreeze(m).get(AUX_COLLECTION) or {}), **a}
                          for m, a in zip(made, new_aux))
          variables = tuple({**unfreeze(v), AUX_COLLECTION: a} if a else v
                            for v, a in zip(variables, new_aux))
      aux = new_aux or tuple(unfreeze(v).get(AUX_COLLECTION) for v in variables)
      rows = tuple(unfreeze(v).get(ROWS_COLLECTION, {}).get("index") for v in variables)
      if skip is not None and any(r is not None for r in rows):
        raise UserError("per-row adapters (adapter_index) need the whole-model view: set "
                        "config.reparam.per_layer=False and model.scan_layers=False")
      views = tuple({**t, "params": effective(view_plan, t.get("params", {}), sample_rng,
                                              structured, a, rows=r, prefix=prefix, skip=skip)}
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


def per_layer_for(plan: Plan, module: nn.Module) -> bool:
  """Whether `module`'s blocks compute their own effective weights (`config.reparam.per_layer`).

  'auto' means per layer exactly when the model scans its layers (a scanned
  stack has no whole-model view to compute); models without the
  `layer_transform` hook (models/stack.py) take the whole-model view.
  """
  hooked = any(f.name == "layer_transform" for f in dataclasses.fields(module))
  scanned = bool(getattr(getattr(module, "cfg", None), "scan_layers", False))
  per_layer = scanned if plan.per_layer == "auto" else bool(plan.per_layer)
  if per_layer and not hooked:
    raise UserError(f"config.reparam.per_layer needs a model with a layer_transform hook "
                    f"(models/stack.py); {type(module).__name__} has none")
  if scanned and not per_layer:
    raise UserError("model.scan_layers=True computes effective weights inside each layer: "
                    "set config.reparam.per_layer to 'auto' or True")
  return per_layer


def wrap(module: nn.Module, plan: Plan) -> nn.Module:
  """`module` computing with reparameterized weights; same call signature.

  `wrapped.init(...)` returns boxed θ in place of each matched weight;
  `wrapped.apply(..., rngs={'reparam': key})` samples stochastic transforms.
  With no rules, returns `module` itself.
  """
  if not plan.rules:
    return module
  structured = structured_for(plan, module)
  attrs = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
           if f.init and f.name != "parent"}
  per_layer = per_layer_for(plan, module)
  if per_layer:
    def layer_transform(block_cls: type, stacked: int) -> type:
      return lift_transform(_reparam_lift, block_cls, plan, structured, stacked)
    layer_transform.runs = lambda layer_paths: layer_runs(plan, layer_paths)
    attrs["layer_transform"] = layer_transform
  cls = lift_transform(_reparam_lift, type(module), plan, structured, None, per_layer)
  return cls(**attrs)
