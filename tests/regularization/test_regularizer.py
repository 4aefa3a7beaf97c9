"""Rules → penalties on a real (reparameterized) Transformer's params; the decay mask."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reparam_jax import reparam
from reparam_jax.config.base import base_config
from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.regularizers import Regularizer, norms, parse_spec
from reparam_jax.regularizers.decay import decay_mask_fn
from reparam_jax.regularizers.spec import Term
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.rules import Plan
from reparam_jax.training import optim

MODEL = dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, vocab_size=11, max_len=8,
             causal=True)


def _params(reparam_cfg=None):
  model = Transformer(transformer_config(MODEL))
  if reparam_cfg is not None:
    model = reparam.wrap(model, reparam_cfg)
  v = model.init(jax.random.key(0), np.zeros((1, 8), np.int32), train=False)
  return nn.meta.unbox(v["params"])


def _cfg(**kw):
  c = base_config().reg
  for k, v in kw.items():
    c[k] = v
  return c


def _rcfg(*rules):
  return ml_collections.ConfigDict(dict(rules=tuple(rules)))


def test_spec_parsing():
  assert parse_spec("l1(1e-5)") == (Term("l1", 1e-5),)
  assert parse_spec("nuclear(coef=2, exact=True)|l2(1e-4, on=theta)") == (
      Term("nuclear", 2.0, exact=True), Term("l2", 1e-4, on="theta"))
  assert parse_spec("orthogonal(1e-3, kind=spectral, iters=3)")[0].kind == "spectral"
  for bad in ("l3(1)", "l1", "l1(-1)", "l1(1, 2)", "l1(1, on=weights)", "nuclear(1, foo=2)",
              "orthogonal(1, kind=svd)", "l1(1, coef=2)", "l1(1"):
    with pytest.raises(UserError):
      parse_spec(bad)


def test_rules_select_paths_and_terms_sum_per_name():
  p = _params()
  c = _cfg(rules=((r"block_0/mlp/fc_in/kernel", "l1(2.0)|nuclear(0.5)"),
                  (r".*/kernel", "l1(1.0)")))
  total, terms = Regularizer(c).penalty(p)
  fc_in = p["block_0"]["mlp"]["fc_in"]["kernel"]
  others = [p["block_0"]["attn"][k]["kernel"] for k in ("query", "key", "value", "out")] + [
      p["block_0"]["mlp"]["fc_out"]["kernel"]]
  want_l1 = 2.0 * norms.l1(fc_in) + sum(norms.l1(w) for w in others)  # first rule wins
  assert float(terms["l1"]) == pytest.approx(float(want_l1), rel=1e-5)
  assert float(terms["nuclear"]) == pytest.approx(0.5 * float(norms.nuclear_exact(fc_in)),
                                                  rel=1e-5)
  assert float(total) == pytest.approx(float(terms["l1"] + terms["nuclear"]), rel=1e-6)


def test_scalars_cover_every_matrix_not_biases_or_norms():
  p = _params()
  _, terms = Regularizer(_cfg(l1=1.0, l2=1.0)).penalty(p)
  mats = [x for x in jax.tree.leaves(p) if x.ndim >= 2]
  assert float(terms["l1"]) == pytest.approx(float(sum(norms.l1(x) for x in mats)), rel=1e-5)
  assert float(terms["l2"]) == pytest.approx(float(sum(norms.l2(x) for x in mats)), rel=1e-5)
  assert not Regularizer(_cfg()).active


def test_placeholder_and_bad_rules():
  c = _cfg(rules=((r".*/kernel", "l2({coef})"),))
  c.coef = 0.25
  _, terms = Regularizer(c).penalty(_params())
  assert float(terms["l2"]) > 0
  with pytest.raises(UserError, match="config.reg.nope"):
    Regularizer(_cfg(rules=((r".*", "l2({nope})"),)))
  with pytest.raises(UserError, match="matches no trainable weight"):
    Regularizer(_cfg(rules=((r"block_0/mlp/kernel", "l1(1)"),))).penalty(_params())
  with pytest.raises(UserError, match="needs a 2-D weight"):
    Regularizer(_cfg(rules=((r"ln_final/scale", "nuclear(1)"),))).penalty(_params())
  with pytest.raises(UserError):
    Regularizer(_cfg(target="both"))


def test_effective_vs_theta_on_a_lowrank_weight():
  rc = _rcfg((r"block_0/mlp/fc_in/kernel", "lowrank(rank=3)"))
  p = _params(rc)
  theta = p["block_0"]["mlp"]["fc_in"]["kernel"]
  w = theta["u"] @ theta["v"].T
  rules = ((r"block_0/mlp/fc_in/kernel", "l1(1)|l2(1)|nuclear(1)|orthogonal(1)"),)
  _, eff = Regularizer(_cfg(rules=rules), Plan.from_config(rc)).penalty(p)
  _, th = Regularizer(_cfg(rules=rules, target="theta"), Plan.from_config(rc)).penalty(p)
  assert float(eff["l1"]) == pytest.approx(float(norms.l1(w)), rel=1e-5)
  assert float(th["l1"]) == pytest.approx(float(norms.l1(theta["u"]) + norms.l1(theta["v"])),
                                          rel=1e-5)
  assert float(eff["orthogonal"]) == pytest.approx(float(norms.orthogonality_frobenius(w)),
                                                   rel=1e-4)
  # Nuclear on a low-rank θ: the factored bound whatever the target; exact=True forces the SVD.
  bound = float(norms.nuclear_factored(theta["u"], theta["v"]))
  assert float(eff["nuclear"]) == pytest.approx(bound, rel=1e-5)
  assert float(th["nuclear"]) == pytest.approx(bound, rel=1e-5)
  _, ex = Regularizer(_cfg(rules=((r".*fc_in/kernel", "nuclear(1, exact=True)"),)), Plan.from_config(rc)).penalty(p)
  assert float(ex["nuclear"]) == pytest.approx(float(norms.nuclear_exact(w)), rel=1e-4)
  assert float(ex["nuclear"]) <= bound + 1e-5
  # The gradient reaches θ.
  g = jax.grad(lambda q: Regularizer(_cfg(rules=rules), Plan.from_config(rc)).penalty(q)[0])(p)
  assert float(jnp.abs(g["block_0"]["mlp"]["fc_in"]["kernel"]["u"]).sum()) > 0


@pytest.mark.parametrize("stack", ["lowrank(rank=3)|spherical", "lowrank(rank=3)|variational"])
def test_nuclear_on_a_stack_over_low_rank_factors_is_the_exact_norm_of_w(stack):
  """A stack over the factors has no factored bound: the norm of its effective W
  (these raised AttributeError: the θ of each factor was taken for an array)."""
  rc = _rcfg((r"block_0/mlp/fc_in/kernel", stack))
  p = _params(rc)
  w = Reparam.from_config(rc).to_dense(p)["block_0"]["mlp"]["fc_in"]["kernel"]
  rules = ((r"block_0/mlp/fc_in/kernel", "nuclear(1)"),)
  _, terms = Regularizer(_cfg(rules=rules), Plan.from_config(rc)).penalty(p)
  assert float(terms["nuclear"]) == pytest.approx(float(norms.nuclear_exact(w)), rel=1e-4)


def test_lora_theta_target_skips_frozen_base_and_frozen_weights_are_skipped():
  rc = _rcfg((r"block_0/attn/query/kernel", "lora(rank=2)"), (r".*", "frozen"))
  p = _params(rc)
  q = p["block_0"]["attn"]["query"]["kernel"]
  # B = 0 at init, so only A contributes on θ; the base and every frozen weight do not.
  _, th = Regularizer(_cfg(l1=1.0, target="theta"), Plan.from_config(rc)).penalty(p)
  assert float(th["l1"]) == pytest.approx(float(norms.l1(q["lora_a"]) + norms.l1(q["lora_b"])),
                                          rel=1e-5)
  _, eff = Regularizer(_cfg(l1=1.0), Plan.from_config(rc)).penalty(p)
  assert float(eff["l1"]) == pytest.approx(float(norms.l1(q["base"])), rel=1e-5)  # W = W₀ + 0


def test_penalty_jits():
  p = _params()
  reg = Regularizer(_cfg(l1=1e-3, rules=((r".*fc_out/kernel", "orthogonal(1, kind=spectral)"),)))
  eager = reg.penalty(p)[0]
  assert float(jax.jit(lambda q: reg.penalty(q)[0])(p)) == pytest.approx(float(eager), rel=1e-5)


def test_decay_mask_default_excludes_biases_and_norms():
  p = _params()
  mask = decay_mask_fn(())(p)
  flat = {"/".join(k.key for k in path): m
          for path, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["block_0/mlp/fc_in/kernel"] and flat["embed/token/embedding"]
  assert not flat["block_0/mlp/fc_in/bias"]
  assert not flat["block_0/ln_attn/scale"] and not flat["ln_final/bias"]
  # Rules override, by the path of the leaf or of a subtree holding it.
  mask = decay_mask_fn(((r"embed/.*", False), (r"block_0/ln_mlp", True)))(p)
  flat = {"/".join(k.key for k in path): m
          for path, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert not flat["embed/token/embedding"] and flat["block_0/ln_mlp/scale"]
  assert flat["block_0/attn/query/kernel"] and not flat["block_0/attn/query/bias"]
  with pytest.raises(UserError):
    decay_mask_fn(((r".*", "yes"),))


def test_optimizer_decays_only_masked_leaves():
  """With zero gradients AdamW's update is the decay alone: biases and norms stay put."""
  p = _params()
  opt = base_config().optimizer
  opt.weight_decay, opt.warmup_steps, opt.clip_norm = 0.5, 0, 0.0
  tx = optim.make_optimizer(opt, num_steps=10)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
  new = optax.apply_updates(p, updates)
  for path, (a, b) in zip(jax.tree_util.tree_leaves_with_path(p),
                          zip(jax.tree.leaves(p), jax.tree.leaves(new))):
    changed = not np.array_equal(np.asarray(a), np.asarray(b))
    assert changed == (a.ndim >= 2 and float(jnp.abs(a).sum()) > 0), path[0]
  opt.decay_rules = ((r"embed/.*", False),)
  tx = optim.make_optimizer(opt, num_steps=10)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
  assert float(jnp.abs(updates["embed"]["token"]["embedding"]).sum()) == 0
  assert float(jnp.abs(updates["block_0"]["mlp"]["fc_in"]["kernel"]).sum()) > 0
