"""Effective weights computed inside each layer (`reparam.per_layer`), unrolled or scanned.

The per-layer view must compute exactly the whole-model view, for every
registered transform and the composition examples; under `scan_layers` the
stacked θ must give the same logits and gradients and every `Reparam`
tool (masks, penalties, post-update, densify, starting from a dense
checkpoint) must treat the stack as its layers.  The point of it is memory:
compiled with remat, a per-layer spherical model holds no second copy of the
weights.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.pytree import layers
from reparam_jax.reparam.api import Reparam
from tests.helpers import greedy_cached
from tests.reparam.specs import COMPOSITIONS, EXAMPLES, initializable, smooth

CFG = transformer_config(dict(vocab_size=50, num_layers=3, num_heads=2, embed_dim=16,
                              mlp_dim=32, max_len=16, remat="full"))
IDS = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
KERNELS = r"block_\d+/(attn/(query|value)|mlp/fc_in)/kernel"
# One attention kernel ([D, H, Dh]) and one MLP kernel ([D, F]) per layer: each kind of
# kernel once, for the test that runs every transform.
TWO_KERNELS = r"block_\d+/(attn/query|mlp/fc_in)/kernel"


def _rp(spec: str, per_layer, kernels: str = KERNELS) -> Reparam:
  return Reparam.from_config({"rules": ((kernels, spec), ("embed/token/embedding", "frozen")),
                              "per_layer": per_layer})


def _models(spec: str, cfg=CFG, kernels: str = KERNELS):
  whole = _rp(spec, False, kernels).wrap(Transformer(cfg))
  unrolled = _rp(spec, True, kernels).wrap(Transformer(cfg))
  scanned = _rp(spec, "auto", kernels).wrap(
      Transformer(dataclasses.replace(cfg, scan_layers=True)))
  return whole, unrolled, scanned


def _stack_variables(variables):
  return {k: layers.stack_layers(v) for k, v in variables.items()}


def _first_of_each_transform(specs: list[str]) -> list:
  """The first spec of each transform (or chain of transforms) as is; its other examples,
  which differ only in arguments, `slow` (`make test-all` runs them)."""
  seen, out = set(), []
  for spec in specs:
    chain = tuple(part.split("(")[0] for part in spec.split("|"))
    out.append(spec if chain not in seen else pytest.param(spec, marks=pytest.mark.slow))
    seen.add(chain)
  return out


@pytest.mark.parametrize("spec", _first_of_each_transform(initializable(EXAMPLES + COMPOSITIONS)))
def test_per_layer_view_is_the_whole_model_view(spec):
  # Every transform and composition, run op by op (the suite's slowest parametrization):
  # two layers with one kernel of each shape make a stack.  No remat: run eagerly, a
  # rematerialised block is traced and compiled at every call, and what remat does to
  # the per-layer view is the gradient and memory tests' subject, below.
  whole, unrolled, scanned = _models(
      spec, dataclasses.replace(CFG, num_layers=2, remat="none"), TWO_KERNELS)
  variables = unrolled.init(jax.random.key(0), IDS)
  # Same θ tree as the whole-model lift builds (the per-layer init differs only in its keys).
  assert (jax.tree.structure(meta.unbox(variables))
          == jax.tree.structure(meta.unbox(jax.eval_shape(whole.init, jax.random.key(0), IDS))))
  ref = whole.apply(variables, IDS)["logits"]
  np.testing.assert_array_equal(unrolled.apply(variables, IDS)["logits"], ref)
  stacked = _stack_variables(variables)
  abstract = jax.eval_shape(scanned.init, jax.random.key(0), IDS)
  assert jax.tree.structure(meta.unbox(stacked)) == jax.tree.structure(meta.unbox(abstract))
  np.testing.assert_allclose(scanned.apply(stacked, IDS)["logits"], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", smooth(["lora(rank=2)", "spherical", "lowrank(rank=4)",
                                         "variational", "lora(rank=2)|magnitude"]))
def test_scanned_gradients_and_sampling(spec):
  whole, _, scanned = _models(spec)
  variables = whole.init(jax.random.key(0), IDS)
  stacked = _stack_variables(variables)

  def loss(model, p, v):
    return jnp.mean(model.apply({**v, "params": p}, IDS)["logits"] ** 2)

  # Compiled: run op by op, every rematerialised block is traced and compiled at each call.
  g0 = jax.jit(jax.grad(lambda p: loss(whole, p, variables)))(variables["params"])
  g1 = jax.jit(jax.grad(lambda p: loss(scanned, p, stacked)))(stacked["params"])
  for a, b in zip(jax.tree.leaves(layers.stack_layers(meta.unbox(g0))),
                  jax.tree.leaves(meta.unbox(g1))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
  # Stochastic transforms draw a different ε in every layer (the scan splits the stream).
  out = scanned.apply(stacked, IDS, rngs={"reparam": jax.random.key(3)})["logits"]
  again = scanned.apply(stacked, IDS, rngs={"reparam": jax.random.key(3)})["logits"]
  np.testing.assert_array_equal(out, again)


def test_tools_see_a_stack_as_its_layers():
  rp = _rp("spherical|lora(rank=2)", True)
  whole = _rp("spherical|lora(rank=2)", False).wrap(Transformer(CFG))
  params = whole.init(jax.random.key(0), IDS)["params"]
  stacked = layers.stack_layers(params)
  stack_of = layers.stack_layers
  # Boolean masks: one entry per stacked array (all layers agree).
  assert (jax.tree.leaves(stack_of(rp.trainable_mask(params)))
          == jax.tree.leaves(rp.trainable_mask(stacked)))
  assert jax.tree.leaves(stack_of(rp.decay_mask(params))) == jax.tree.leaves(rp.decay_mask(stacked))
  for a, b in zip(jax.tree.leaves(stack_of(rp.to_dense(params))),
                  jax.tree.leaves(rp.to_dense(stacked))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(stack_of(meta.unbox(rp.post_update(params)))),
                  jax.tree.leaves(meta.unbox(rp.post_update(stacked)))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  rows = rp.report_rows(stacked)
  assert len([r for r in rows if "block_" in r["path"]]) == 3 * 3  # 3 kernels × 3 layers


def test_penalties_sum_over_the_stack():
  rp = _rp("variational", True)
  whole = _rp("variational", False).wrap(Transformer(CFG))
  params = whole.init(jax.random.key(0), IDS)["params"]
  p0, t0 = rp.penalty(params, 10)
  p1, t1 = rp.penalty(layers.stack_layers(params), 10)
  assert float(p0) > 0
  np.testing.assert_allclose(float(p0), float(p1), rtol=1e-6)
  assert t0.keys() == t1.keys()


def test_a_scanned_lora_model_starts_from_an_unrolled_dense_checkpoint():
  dense = meta.unbox(Transformer(CFG).init(jax.random.key(0), IDS)["params"])
  rp = _rp("lora(rank=2)", "auto")
  scanned = rp.wrap(Transformer(dataclasses.replace(CFG, scan_layers=True)))
  model_params = scanned.init(jax.random.key(1), IDS)["params"]
  adopted = rp.adopt_dense(jax.tree.map(np.asarray, dense), model_params,
                           jax.random.key(2))
  assert "blocks" in adopted and "block_0" not in adopted
  # LoRA starts at W₀ = the checkpoint's weight: the logits are the dense model's.
  ref = Transformer(CFG).apply({"params": dense}, IDS)["logits"]
  out = scanned.apply({"params": adopted}, IDS)["logits"]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_a_rule_selecting_some_layers_scans_the_stack_in_runs_of_alike_layers():
  """LoRA on block 1's query alone, 4 scanned layers: runs [0], [1], [2, 3], each its own
  scan; the same logits and gradients as the unrolled model, and the checkpoint layouts
  convert both ways."""
  cfg = dataclasses.replace(CFG, num_layers=4)
  rp = Reparam.from_config({"rules": ((r"block_1/attn/query/kernel", "lora(rank=2)"),)})
  scanned = rp.wrap(Transformer(dataclasses.replace(cfg, scan_layers=True)))
  unrolled = rp.wrap(Transformer(cfg))
  params = unrolled.init(jax.random.key(0), IDS)["params"]
  abstract = jax.eval_shape(scanned.init, jax.random.key(0), IDS)["params"]
  runs = {k: layers.stack_depth(v) for k, v in abstract.items() if layers.is_stack(k, v)}
  assert runs == {"blocks_0": 1, "blocks_1": 1, "blocks_2": 2}
  assert isinstance(meta.unbox(abstract["blocks_1"]["attn"]["query"]["kernel"]), dict)
  assert not isinstance(meta.unbox(abstract["blocks_2"]["attn"]["query"]["kernel"]), dict)

  stacked = layers.like(params, abstract)
  assert jax.tree.structure(meta.unbox(stacked)) == jax.tree.structure(meta.unbox(abstract))
  ref = unrolled.apply({"params": params}, IDS)["logits"]
  np.testing.assert_allclose(scanned.apply({"params": stacked}, IDS)["logits"], ref,
                             rtol=1e-5, atol=1e-6)

  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, IDS)["logits"] ** 2)
  g_unrolled = jax.grad(lambda p: loss(unrolled, p))(params)
  g_scanned = jax.grad(lambda p: loss(scanned, p))(stacked)
  for a, b in zip(jax.tree.leaves(meta.unbox(layers.like(g_unrolled, abstract))),
                  jax.tree.leaves(meta.unbox(g_scanned))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)

  # Back to the unrolled layout, and from a stack scanned in one run (another config's).
  back = layers.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  one_run = layers.stack_layers(Transformer(cfg).init(jax.random.key(0), IDS)["params"])
  assert set(one_run) >= {"blocks"}
  dense_runs = layers.like(one_run, layers.like(layers.unstack_layers(one_run), abstract))
  assert {k for k in dense_runs if layers.is_stack(k, dense_runs[k])} == set(runs)


@pytest.mark.heavy
def test_runs_in_the_encoder_decoder_and_in_cached_decoding():
  """Runs are found under each stack's own path (`decoder/block_1/...`), and a decoder
  scanned in runs decodes token by token as the unrolled one does."""
  from reparam_jax.models.seq2seq import EncoderDecoder  # noqa: PLC0415

  cfg = transformer_config(dict(vocab_size=50, num_layers=2, num_decoder_layers=3, num_heads=2,
                                embed_dim=16, mlp_dim=32, max_len=16, preset="t5_small",
                                head_size=8))
  rp = Reparam.from_config({"rules": ((r"decoder/block_1/cross_attn/query/kernel",
                                       "lora(rank=2)"),)})
  src = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  tgt = jax.random.randint(jax.random.key(2), (2, 6), 0, 50)
  unrolled = rp.wrap(EncoderDecoder(cfg))
  scanned = rp.wrap(EncoderDecoder(dataclasses.replace(cfg, scan_layers=True)))
  params = unrolled.init(jax.random.key(0), src, tgt)["params"]
  abstract = jax.eval_shape(scanned.init, jax.random.key(0), src, tgt)["params"]
  assert set(abstract["encoder"]) >= {"blocks"}
  assert {k for k in abstract["decoder"] if k.startswith("block")} == {
      "blocks_0", "blocks_1", "blocks_2"}
  stacked = layers.like(params, abstract)
  np.testing.assert_allclose(scanned.apply({"params": stacked}, src, tgt)["logits"],
                             unrolled.apply({"params": params}, src, tgt)["logits"],
                             rtol=1e-5, atol=1e-6)

  lm_rp = Reparam.from_config({"rules": ((r"block_1/mlp/fc_in/kernel", "lowrank(rank=4)"),)})
  lm_unrolled = lm_rp.wrap(Transformer(CFG))
  lm_scanned = lm_rp.wrap(Transformer(dataclasses.replace(CFG, scan_layers=True)))
  lm_params = lm_unrolled.init(jax.random.key(0), IDS)["params"]
  lm_stacked = layers.like(lm_params, jax.eval_shape(lm_scanned.init, jax.random.key(0),
                                                     IDS)["params"])

  t0, last0 = greedy_cached(lm_unrolled, lm_params, IDS, 3)
  t1, last1 = greedy_cached(lm_scanned, lm_stacked, IDS, 3)
  np.testing.assert_array_equal(t0, t1)
  np.testing.assert_allclose(last0, last1, rtol=1e-5, atol=1e-6)


def test_scan_needs_the_per_layer_view():
  rp = Reparam.from_config({"rules": ((KERNELS, "lora(rank=2)"),), "per_layer": False})
  with pytest.raises(UserError, match="scan_layers=True computes effective weights inside"):
    rp.wrap(Transformer(dataclasses.replace(CFG, scan_layers=True)))


def test_rules_matching_nothing_are_still_caught_per_layer():
  rp = Reparam.from_config({"rules": ((r"block_\d+/attn/qurey/kernel", "lora(rank=2)"),),
                            "per_layer": True})
  with pytest.raises(UserError, match="matches no parameter"):
    rp.wrap(Transformer(CFG)).init(jax.random.key(0), IDS)


def _temp_bytes(per_layer: bool, scan: bool) -> int:
  cfg = transformer_config(dict(vocab_size=64, num_layers=4, num_heads=4, embed_dim=128,
                                mlp_dim=512, max_len=32, remat="full", scan_layers=scan))
  rules = ((r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel", "spherical"),)
  model = Reparam.from_config({"rules": rules, "per_layer": per_layer}).wrap(Transformer(cfg))
  ids = jnp.ones((2, 32), jnp.int32)
  params = meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids)["params"])

  def loss(p):
    return jnp.mean(model.apply({"params": p}, ids)["logits"] ** 2)
  return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.heavy
def test_the_per_layer_view_does_not_keep_every_layers_weights():
  """Compiled (not run): with remat, the whole-model view keeps all 4 layers' effective
  weights (and the transform's intermediates) through the backward pass; per layer, one."""
  block_bytes = 4 * (4 * 128 * 128 + 2 * 128 * 512)  # one layer's effective kernels, fp32
  whole = _temp_bytes(False, False)
  scanned = _temp_bytes(True, True)
  assert scanned < whole - 2 * block_bytes, (whole, scanned)
  # Unrolled, the saving depends on XLA's scheduling of the rematerialised blocks: jax 0.12
  # (the main environment) realises it (19.3 → 6.7 MB); jax 0.10.2 (the torch-peer
  # environment) keeps 21.2 MB, as docs/scaling.md says.  The scanned step saves on both.
  if tuple(int(x) for x in jax.__version__.split(".")[:2]) >= (0, 12):
    per_layer = _temp_bytes(True, False)
    assert whole - per_layer > 3 * block_bytes, (whole, per_layer)


@pytest.mark.parametrize("structured", [True, False])
def test_factored_matmuls_stay_factored_under_scan(structured):
  """Low-rank fc_in [16, 32] as U Vᵀ: with structured kernels no [16, 32] array is ever
  built inside the scanned step (x U, then Vᵀ); `structured=False` materialises it."""
  rules = ((r"block_\d+/mlp/fc_in/kernel", "lowrank(rank=2)"),)
  rp = Reparam.from_config({"rules": rules, "structured": structured})
  model = rp.wrap(Transformer(dataclasses.replace(CFG, scan_layers=True)))
  ids = jnp.ones((3, 8), jnp.int32)  # 24 token rows: no activation is [16, 32]
  params = model.init(jax.random.key(0), ids)["params"]
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda p: jnp.mean(model.apply({"params": p}, ids)["logits"] ** 2)))(params))
  assert ("f32[16,32]" in jaxpr) == (not structured)


@pytest.mark.parametrize("flag, want", [("True", True), ("False", False), ("auto", "auto")])
def test_per_layer_from_the_command_line(flag, want):
  """`--config.reparam.per_layer=True` reaches the string-typed config field as text."""
  from reparam_jax.config import load as config_load  # noqa: PLC0415
  from tests.helpers import QUICKSTART  # noqa: PLC0415
  config, _ = config_load.load([f"--config={QUICKSTART}", f"--config.reparam.per_layer={flag}"])
  assert Reparam.from_config(config.reparam).plan.per_layer == want


def test_an_unchanged_stack_is_not_restacked():
  """LoRA has no post-update: the stacked θ comes back as the very same arrays (no copy
  of every stacked weight inside each train step); hypersphere's re-projection restacks."""
  for spec, same in (("lora(rank=2)", True), ("hypersphere", False)):
    whole = _rp(spec, False).wrap(Transformer(CFG))
    stacked = layers.stack_layers(whole.init(jax.random.key(0), IDS)["params"])
    out = _rp(spec, True).post_update(stacked)
    kernels = [(a is b) for a, b in zip(jax.tree.leaves(stacked["blocks"]),
                                        jax.tree.leaves(out["blocks"]))]
    assert all(kernels) if same else not all(kernels), spec
