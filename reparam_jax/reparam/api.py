"""`Reparam`: a config's reparameterization, parsed once, with everything the trainer and tools need.

  rp = Reparam.from_config(config.reparam)   # parses and checks the rules once
  model = rp.wrap(model)                     # θ in place of the matched weights
  loss += rp.penalty(params, step)[0]        # e.g. variational KL terms
  params = rp.post_update(params)            # e.g. re-projection to a sphere
  mask = rp.trainable_mask(params)           # for the optimizer (None: all trainable)
  extra, metrics = rp.update_state(params, grads, extra, step)   # sparsity masks
  dense = rp.to_dense(params)                # effective weights, no sampling
  theta = rp.from_dense(dense, key)          # a dense checkpoint in θ form

Everything is a pure function of the params tree (`'params'` collection,
boxed or unboxed, concrete or abstract).  With no rules every method is the
identity (or reports nothing), so the trainer calls them unconditionally.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from reparam_jax.pytree import layers
from reparam_jax.pytree.paths import set_path, subtree
from reparam_jax.reparam import intercept, stats
from reparam_jax.reparam.rules import Plan, map_theta, path_key
from reparam_jax.reparam.state import has_state
from reparam_jax.reparam.transforms import mask_update

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Reparam:
  """The parsed `config.reparam` (see rules.py for the config format)."""

  plan: Plan

  @classmethod
  def from_config(cls, reparam_cfg: Any) -> "Reparam":
    """From a `config.reparam` section (a ConfigDict or a plain dict with `rules`)."""
    return cls(Plan.from_config(reparam_cfg))

  @property
  def active(self) -> bool:
    return bool(self.plan.rules)

  @property
  def has_state(self) -> bool:
    """Whether any rule has a stage with non-trainable state (a sparsity mask)."""
    return any(has_state(r.node) for r in self.plan.rules)

  def wrap(self, module: nn.Module) -> nn.Module:
    """`module` computing with the reparameterized weights (`module` itself without rules)."""
    return intercept.wrap(module, self.plan)

  def penalty(self, params: PyTree, step: jax.Array | int
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum of the transforms' penalties (weighted and annealed), and each term by name.

    Terms are summed over all weights of a transform, e.g. `{'variational/kl': ...}`.
    """
    terms: dict[str, jax.Array] = {}
    if not self.active:
      return jnp.zeros((), jnp.float32), terms

    def visit(path, rule, theta):
      if rule is not None:
        for k, v in rule.node.penalty(meta.unbox(theta), step).items():
          terms[k] = terms[k] + v if k in terms else v
      return theta

    map_theta(self.plan, params, visit)
    return sum(terms.values(), jnp.zeros((), jnp.float32)), terms

  def post_update(self, params: PyTree) -> PyTree:
    """Params after each transform's post-optimizer-step hook (e.g. re-projection to a sphere)."""
    if not self.active:
      return params

    def visit(path, rule, theta):
      if rule is None:
        return theta
      return _rebox(theta, rule.node.post_update(meta.unbox(theta)))

    return map_theta(self.plan, params, visit)

  def trainable_mask(self, params: PyTree) -> PyTree | None:
    """True where the optimizer updates the leaf (boxes count as leaves); None without rules.

    Unmatched parameters are trainable; add a `('.*', 'frozen')` rule last to
    freeze everything no earlier rule adapts (the usual LoRA fine-tune).
    """
    if not self.active:
      return None

    def visit(path, rule, theta):
      if rule is None:
        return True
      return _bool_tree(theta, rule.node.trainable(meta.unbox(theta)))

    return map_theta(self.plan, params, visit)

  def decay_mask(self, params: PyTree) -> PyTree:
    """True where decoupled weight decay acts: plain matrices (ndim ≥ 2, as without
    rules) and the weight-like θ entries each transform names (`decayable`), never
    angles, ρ, radii or step sizes.  `config.optimizer.decay_rules` override it.

    `params` may hold optax's `MaskedNode`s (a frozen leaf inside `multi_transform`);
    they stay as they are.
    """
    def plain(x):
      return jax.tree.map(lambda p: p.ndim >= 2, x)

    if not self.active:
      return plain(params)

    def visit(path, rule, theta):
      if rule is None:
        return plain(theta)
      flags = _bool_tree(theta, rule.node.decayable(meta.unbox(theta)))
      return jax.tree.map(lambda f, sub: jax.tree.map(lambda _: f, sub), flags, theta)

    return map_theta(self.plan, params, visit)

  def update_state(self, params: PyTree, grads: PyTree, extra: PyTree, step: jax.Array
                   ) -> tuple[PyTree, dict[str, jax.Array]]:
    """Scheduled mask/score updates inside the train step (transforms/mask_update.py).

    `params` and `grads` are the step's (pre-update) θ and its gradient;
    returns the new non-param collections and metrics (`sparsity`).
    """
    if not self.has_state:
      return extra, {}
    return mask_update.update_extra(params, grads, extra, step, self.plan)

  def to_dense(self, params: PyTree, state: PyTree | None = None) -> PyTree:
    """Dense params: each θ replaced by its effective weight (deterministic: no sampling).

    `state` is the `'masks'` collection of a run with stateful stages; without
    it a mask stage computes as if nothing were pruned.
    """
    return intercept.effective(self.plan, params, None, structured=False,
                               aux=meta.unbox(state) if state else None, require_all=True)

  def from_dense(self, dense_params: PyTree, key: jax.Array | None = None) -> PyTree:
    """θ params representing (or best approximating) `dense_params`.

    Boxed leaves give boxed θ (names derived from the weight's); plain leaves
    give plain θ.  `key` seeds randomized conversions (ALS start, LoRA's A).
    """
    key = jax.random.key(0) if key is None else key
    return intercept.dense_to_theta(
        self.plan, dense_params, lambda path, node, w: node.from_dense(w, path_key(key, path)))

  def adopt_dense(self, checkpoint_params: PyTree, model_params: PyTree,
                  key: jax.Array) -> PyTree:
    """`checkpoint_params` with every dense weight the model holds as θ turned into θ.

    Starting a LoRA, low-rank or pruning run from a dense pretrained checkpoint
    needs no separate `convert` step: each weight a rule reparameterizes is
    converted with its transform's `from_dense` (LoRA: W₀ = the weight, B = 0;
    low-rank: truncated SVD).  θ the checkpoint already holds (a reparameterized
    run's) and weights no rule selects are left as they are.  `key` seeds the
    randomized conversions (LoRA's A, an ALS start), one key per weight path; it
    is required so that runs of different seeds start from different adapters
    (the trainer derives it from `config.seed`).
    """
    if layers.has_stack(model_params) or layers.has_stack(checkpoint_params):
      # Paths are the unrolled ones (block_{i}): convert there, then to the model's layout.
      shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                            meta.unbox(model_params))
      out = self.adopt_dense(layers.unstack_layers(checkpoint_params),
                             layers.unstack_layers(shapes), key)
      return layers.like(out, model_params)
    out = jax.tree.map(lambda x: x, dict(checkpoint_params))  # a copy of the structure

    def visit(path, rule, theta):
      if rule is not None:
        w = subtree(checkpoint_params, path)
        if w is not None and not isinstance(w, Mapping):
          rule.node.check(tuple(np.shape(w)))
          set_path(out, path, rule.node.from_dense(jnp.asarray(w), path_key(key, path)))
      return theta
    map_theta(self.plan, meta.unbox(model_params), visit)
    return out

  def init_state(self, params: PyTree) -> dict:
    """The `'masks'` collection for θ `params` (all-ones masks, zero scores)."""
    return intercept.init_aux_tree(self.plan, params)

  def report_rows(self, params: PyTree, tokens_per_seq: int | None = None,
                  structured: bool = True) -> list[dict[str, Any]]:
    """Per-weight size/FLOPs rows (`stats.report_rows`)."""
    return stats.report_rows(params, self.plan, tokens_per_seq, structured)


def wrap(module: nn.Module, reparam_cfg: Any) -> nn.Module:
  """`Reparam.from_config(reparam_cfg).wrap(module)`, for one-off use."""
  return Reparam.from_config(reparam_cfg).wrap(module)


def _rebox(orig: Any, new: Any) -> Any:
  """`new` (unboxed arrays) in the boxes of `orig` (which may be unboxed)."""
  return jax.tree.map(lambda o, n: o.replace_boxed(n) if isinstance(o, meta.AxisMetadata) else n,
                      orig, new, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def _bool_tree(theta: Any, mask: Any) -> Any:
  """`mask` shaped like `theta`; a single bool covers a whole subtree."""
  if isinstance(mask, (bool, np.bool_)):
    if isinstance(theta, Mapping):
      return {k: _bool_tree(v, mask) for k, v in theta.items()}
    return bool(mask)
  return {k: _bool_tree(theta[k], mask[k]) for k in theta}
