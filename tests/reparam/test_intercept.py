"""Rules, interception on the project Transformer and on stock Flax, tree-level API."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reparam_jax import reparam
from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.rules import Plan, parse_spec
from reparam_jax.training import optim
from tests.reparam.specs import COMPOSITIONS, EXAMPLES, initializable

CFG = TransformerConfig(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                        max_len=8, residual_dropout=0.1)
IDS = (jnp.arange(16, dtype=jnp.int32).reshape(2, 8)) % 32
KERNELS = r"block_\d+/(attn|mlp)/\w+/kernel"


def rcfg(*rules, **extra):
  return ml_collections.ConfigDict(dict(rules=tuple(rules), **extra))


class MLP(nn.Module):
  """A stock-Flax model: `nn.Dense` only accepts arrays."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(16, name="hidden")(x))
    return nn.Dense(2, name="out")(h)


def test_identity_is_bit_identical():
  model = Transformer(CFG)
  wrapped = reparam.wrap(model, rcfg((".*", "identity")))
  v0 = model.init(jax.random.key(0), IDS)
  v1 = wrapped.init(jax.random.key(0), IDS)
  assert jax.tree.structure(v0) == jax.tree.structure(v1)
  assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(v0), jax.tree.leaves(v1)))
  rngs = {"dropout": jax.random.key(1), "reparam": jax.random.key(2)}
  y0 = model.apply(v0, IDS, train=True, rngs=rngs)["logits"]
  y1 = wrapped.apply(v0, IDS, train=True, rngs=rngs)["logits"]
  np.testing.assert_array_equal(y0, y1)


def test_no_rules_returns_module_unchanged():
  model = Transformer(CFG)
  assert reparam.wrap(model, rcfg()) is model


@pytest.mark.parametrize("spec", initializable(EXAMPLES + COMPOSITIONS))
def test_transformer_runs_and_matches_dense_equivalent(spec):
  """Wrapped model == bare model on the materialized effective weights."""
  model = Transformer(CFG)
  rc = rcfg((KERNELS, spec))
  wrapped = reparam.wrap(model, rc)
  params = wrapped.init(jax.random.key(0), IDS)["params"]
  y = wrapped.apply({"params": params}, IDS)["logits"]
  dense = Reparam.from_config(rc).to_dense(nn.meta.unbox(params))
  y_ref = model.apply({"params": dense}, IDS)["logits"]
  np.testing.assert_allclose(y, y_ref, atol=2e-5)


def test_stock_flax_model_gets_dense_arrays():
  rc = rcfg(("hidden/kernel", "lowrank(rank=2)"), ("out/kernel", "spherical|lora(rank=1)"))
  wrapped = reparam.wrap(MLP(), rc)
  x = jnp.ones((3, 5))
  params = wrapped.init(jax.random.key(0), x)["params"]
  assert set(params["hidden"]["kernel"]) == {"u", "v"}
  assert set(params["out"]["kernel"]) == {"base", "lora_a", "lora_b"}
  y = wrapped.apply({"params": params}, x)
  y_ref = MLP().apply({"params": Reparam.from_config(rc).to_dense(params)}, x)
  np.testing.assert_allclose(y, y_ref, atol=1e-6)
  jax.grad(lambda p: wrapped.apply({"params": p}, x).sum())(params)  # differentiable


def test_variational_samples_only_with_reparam_rng():
  rc = rcfg((KERNELS, "variational(sigma_ratio=0.5)"))
  wrapped = reparam.wrap(Transformer(CFG), rc)
  v = wrapped.init(jax.random.key(0), IDS)
  mean1 = wrapped.apply(v, IDS)["logits"]
  mean2 = wrapped.apply(v, IDS, rngs={"dropout": jax.random.key(5)})["logits"]
  np.testing.assert_array_equal(mean1, mean2)
  s1 = wrapped.apply(v, IDS, rngs={"reparam": jax.random.key(1)})["logits"]
  s2 = wrapped.apply(v, IDS, rngs={"reparam": jax.random.key(2)})["logits"]
  assert not np.allclose(s1, s2) and not np.allclose(s1, mean1)
  total, terms = Reparam.from_config(rc).penalty(nn.meta.unbox(v["params"]), 0)
  assert set(terms) == {"variational/kl"} and float(total) == float(terms["variational/kl"]) > 0


def test_rule_errors():
  model = Transformer(CFG)
  with pytest.raises(UserError, match="matches no parameter"):
    reparam.wrap(model, rcfg(("block_0/nothing", "lowrank(rank=2)"))).init(jax.random.key(0), IDS)
  with pytest.raises(UserError, match="matches no parameter"):  # shadowed by an earlier rule
    reparam.wrap(model, rcfg((".*", "identity"), (KERNELS, "spherical"))).init(
        jax.random.key(0), IDS)
  with pytest.raises(UserError, match="2-D"):
    reparam.wrap(model, rcfg((r".*/bias", "lowrank(rank=2)"))).init(jax.random.key(0), IDS)
  for bad, msg in [("nosuch", "unknown transform"), ("lowrank(rnk=2)", "no argument"),
                   ("lowrank(2)", "keyword"), ("lowrank(rank=1.5)", "integer"),
                   ("spherical|variational", "cannot follow"), ("lora|variational", "cannot follow"),
                   ("lowrank(rank=", "parse")]:
    with pytest.raises(UserError, match=msg):
      parse_spec(bad)
  with pytest.raises(UserError, match="not set"):
    Plan.from_config(rcfg((".*", "lowrank(rank={rank})")))


def test_spec_language_and_placeholders():
  plan = Plan.from_config(rcfg((KERNELS, "lowrank(rank={rank}, method={method})|variational"),
                               (".*", "frozen"), rank=6, method="als"))
  node = plan.rules[0].node
  assert node.inner.rank == 6 and node.inner.method == "als"
  assert plan.match("block_1/mlp/fc_in/kernel") is plan.rules[0]
  assert plan.match("block_1/mlp/fc_in/bias") is plan.rules[1]
  assert parse_spec("latent(decoder=fixed, offset=True)").decoder == "fixed"
  assert parse_spec("lora(rank=4, alpha=16)").outer.scale == 4.0


def test_trainable_mask_freeze_optimizer_and_post_update():
  rc = rcfg((KERNELS, "lora(rank=2)"), (r"block_0/mlp/fc_in/bias", "identity"), (".*", "frozen"))
  wrapped = reparam.wrap(Transformer(CFG), rc)
  params = nn.meta.unbox(wrapped.init(jax.random.key(0), IDS)["params"])
  mask = Reparam.from_config(rc).trainable_mask(params)
  k = mask["block_0"]["attn"]["query"]["kernel"]
  assert k == {"base": False, "lora_a": True, "lora_b": True}
  assert mask["block_0"]["mlp"]["fc_in"]["bias"] is True
  assert mask["embed"]["token"]["embedding"] is False
  tx = optim.freeze(optax.adam(1e-2), Reparam.from_config(rc).trainable_mask(params))
  state = tx.init(params)
  grads = jax.grad(lambda p: wrapped.apply({"params": p}, IDS)["logits"].std())(params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert bool((new["embed"]["token"]["embedding"] == params["embed"]["token"]["embedding"]).all())
  q0, q1 = params["block_0"]["attn"]["query"]["kernel"], new["block_0"]["attn"]["query"]["kernel"]
  assert bool((q0["base"] == q1["base"]).all()) and not bool((q0["lora_b"] == q1["lora_b"]).all())

  rc = rcfg((KERNELS, "hypersphere"))
  boxed = reparam.wrap(Transformer(CFG), rc).init(jax.random.key(0), IDS)["params"]
  moved = jax.tree.map(lambda x: x * 3.0, boxed)
  out = Reparam.from_config(rc).post_update(moved)
  d = out["block_1"]["mlp"]["fc_out"]["kernel"]["direction"]
  assert isinstance(d, nn.Partitioned)  # boxes kept
  np.testing.assert_allclose(jnp.linalg.norm(d.value, axis=0), 1.0, rtol=1e-5)
  s = out["block_1"]["mlp"]["fc_out"]["kernel"]["scale"]
  np.testing.assert_allclose(s.value, 3.0 * boxed["block_1"]["mlp"]["fc_out"]["kernel"]["scale"].value)


def test_adapter_save_load_and_convert_round_trip(tmp_path):
  rc = rcfg((KERNELS, "lora(rank=2, alpha=4)"))
  model = Transformer(CFG)
  dense = nn.meta.unbox(model.init(jax.random.key(0), IDS)["params"])
  params = Reparam.from_config(rc).from_dense(dense)
  wrapped = reparam.wrap(model, rc)
  y0 = model.apply({"params": dense}, IDS)["logits"]
  np.testing.assert_allclose(wrapped.apply({"params": params}, IDS)["logits"], y0, atol=1e-6)
  # "fine-tune": change the adapters, save them alone, load onto a fresh conversion.
  tuned = jax.tree.map(lambda x: x, params)
  for blk in ("block_0", "block_1"):
    kb = tuned[blk]["mlp"]["fc_in"]["kernel"]
    kb["lora_b"] = jax.random.normal(jax.random.key(1), kb["lora_b"].shape) * 0.1
  path = str(tmp_path / "adapter.npz")
  reparam.save_adapter(path, tuned, Reparam.from_config(rc))
  adapter = reparam.extract_adapter(tuned, Reparam.from_config(rc))
  assert all(p.endswith(("lora_a", "lora_b")) for p in adapter) and len(adapter) == 24
  restored = reparam.load_adapter(path, Reparam.from_config(rc).from_dense(dense))
  y_tuned = wrapped.apply({"params": tuned}, IDS)["logits"]
  np.testing.assert_allclose(wrapped.apply({"params": restored}, IDS)["logits"], y_tuned,
                             atol=1e-6)
  merged = Reparam.from_config(rc).to_dense(tuned)
  np.testing.assert_allclose(model.apply({"params": merged}, IDS)["logits"], y_tuned, atol=1e-5)


def test_dense_to_reparam_keeps_boxes_and_derives_names():
  rc = rcfg((KERNELS, "lowrank(rank=3)"))
  boxed = Transformer(CFG).init(jax.random.key(0), IDS)["params"]
  theta = Reparam.from_config(rc).from_dense(boxed)
  specs = nn.get_partition_spec(theta)
  assert specs["block_0"]["attn"]["out"]["kernel"]["u"] == jax.sharding.PartitionSpec("heads", None)
  assert specs["block_0"]["attn"]["out"]["kernel"]["v"] == jax.sharding.PartitionSpec("embed", None)
