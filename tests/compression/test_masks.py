"""Sparsity masks: exact targets, N:M and head patterns, the cubic schedule, movement scores."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reparam_jax import reparam
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.rules import Plan
from reparam_jax.reparam.transforms import mask_schedule as schedule
from reparam_jax.reparam.transforms.mask_update import collect, prune_now, update_extra
from reparam_jax.sparsity.report import sparsity_rows, threshold_sweep

KERNELS = r"block_\d+/(attn|mlp)/\w+/kernel"
CFG = TransformerConfig(vocab_size=32, num_layers=2, num_heads=4, embed_dim=16, mlp_dim=40,
                        max_len=8)
IDS = jnp.zeros((2, 8), jnp.int32)


def _rc(*rules):
  return ml_collections.ConfigDict(dict(rules=tuple(rules)))


def _init(rc, seed=0):
  wrapped = reparam.wrap(Transformer(CFG), rc)
  v = nn.meta.unbox(wrapped.init(jax.random.key(seed), IDS))
  return wrapped, v["params"], v["masks"]


def _masks_by_path(params, masks, rc):
  return {(e.path, e.kp): np.asarray(e.aux["mask"])
          for e in collect(Plan.from_config(rc), params, masks)}


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layer_scope_prunes_exactly_the_target_in_every_weight(sparsity):
  rc = _rc((KERNELS, f"mask(sparsity={sparsity})"))
  _, params, masks = _init(rc)
  masks = prune_now(params, masks, Plan.from_config(rc))
  got = _masks_by_path(params, masks, rc)
  assert len(got) == 12
  for (path, _), m in got.items():
    assert (m.size - m.sum()) == int(sparsity * m.size + 0.5), path
    # the pruned entries are the smallest magnitudes
    w = np.abs(np.asarray(params_at(params, path)["w"]))
    assert w[~m].max() <= w[m].min()


def params_at(params, path):
  for k in path.split("/"):
    params = params[k]
  return params


def test_global_scope_hits_the_total_exactly_with_unequal_layers():
  rc = _rc((KERNELS, "mask(sparsity=0.6, scope='global')"))
  _, params, masks = _init(rc)
  # Make one layer's weights much larger: global ranking must spare it.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 10 if "fc_in" in jax.tree_util.keystr(p) else x, params)
  masks = prune_now(params, masks, Plan.from_config(rc))
  got = _masks_by_path(params, masks, rc)
  total = sum(m.size for m in got.values())
  pruned = sum(m.size - m.sum() for m in got.values())
  assert pruned == int(0.6 * total + 0.5)
  per = {p: 1 - m.mean() for (p, _), m in got.items()}
  assert per["block_0/mlp/fc_in/kernel"] < 0.1 < 0.6 < per["block_0/mlp/fc_out/kernel"]
  # the report counts the same zeros in the effective weights
  rows = sparsity_rows(params, Reparam.from_config(rc), masks, regex=KERNELS)
  assert rows[-1]["zeros"] >= pruned and rows[-1]["size"] == total


def test_two_four_pattern_is_exact():
  rc = _rc((KERNELS, "mask(pattern='2:4')"))
  _, params, masks = _init(rc)
  masks = prune_now(params, masks, Plan.from_config(rc))
  for (path, _), m in _masks_by_path(params, masks, rc).items():
    groups = m.reshape(m.shape[0] // 4, 4, m.shape[1])
    assert (groups.sum(axis=1) == 2).all(), path
    w = np.abs(np.asarray(params_at(params, path)["w"])).reshape(groups.shape)
    kept_min = np.where(groups, w, np.inf).min(axis=1)
    dropped_max = np.where(groups, -np.inf, w).max(axis=1)
    assert (dropped_max <= kept_min).all()


def test_nm_needs_divisible_inputs():
  from reparam_jax.errors import UserError
  with pytest.raises(UserError, match="multiple of 3"):
    _init(_rc((KERNELS, "mask(pattern='1:3')")))


def test_heads_pruned_as_units_across_qkv_and_out():
  rc = _rc((r"block_\d+/attn/(query|key|value)/kernel",
            "mask(pattern=group, groups=4, axis=1, sparsity=0.5)"),
           (r"block_\d+/attn/out/kernel", "mask(pattern=group, groups=4, axis=0, sparsity=0.5)"))
  _, params, masks = _init(rc)
  masks = prune_now(params, masks, Plan.from_config(rc))
  got = _masks_by_path(params, masks, rc)
  for layer in (0, 1):
    pre = f"block_{layer}/attn/"
    cols = {n: got[(pre + n + "/kernel", ())] for n in ("query", "key", "value")}
    rows = got[(pre + "out/kernel", ())]
    head_kept = rows.reshape(4, 4, 16).all(axis=(1, 2))
    assert head_kept.sum() == 2 and (rows.reshape(4, -1).all(1) | ~rows.reshape(4, -1).any(1)).all()
    for m in cols.values():
      assert (m.reshape(16, 4, 4).all(axis=(0, 2)) == head_kept).all()
      assert (m.reshape(16, 4, 4).any(axis=(0, 2)) == head_kept).all()


def test_neurons_global_structured_count_exact():
  rc = _rc((r"block_\d+/mlp/fc_in/kernel",
            "mask(pattern=group, groups=40, axis=1, sparsity=0.25, scope='global')"),
           (r"block_\d+/mlp/fc_out/kernel",
            "mask(pattern=group, groups=40, axis=0, sparsity=0.25, scope='global')"))
  _, params, masks = _init(rc)
  masks = prune_now(params, masks, Plan.from_config(rc))
  got = _masks_by_path(params, masks, rc)
  kept = [got[(f"block_{i}/mlp/fc_out/kernel", ())].all(axis=1) for i in (0, 1)]
  assert sum(int((~k).sum()) for k in kept) == 20
  for i in (0, 1):
    assert (got[(f"block_{i}/mlp/fc_in/kernel", ())].all(axis=0) == kept[i]).all()


def test_cubic_schedule_matches_formula():
  m = reparam.parse_spec("mask(sparsity=0.8, initial_sparsity=0.1, begin_step=100, "
                         "end_step=500, every=50)")
  for t in range(0, 700, 25):
    s = float(schedule.target_sparsity(m, t))
    if t < 100:
      want = 0.0
    elif t >= 500:
      want = 0.8
    else:
      want = 0.8 + (0.1 - 0.8) * (1 - (t - 100) / 400) ** 3
    assert s == pytest.approx(want, abs=1e-6), t
    assert bool(schedule.is_update_step(m, t)) == (100 <= t <= 500 and t % 50 == 0), t


def test_gradual_pruning_inside_jit_follows_schedule_exactly():
  spec = "mask(sparsity=0.75, initial_sparsity=0.0, begin_step=2, end_step=8, every=2)"
  rc = _rc((KERNELS, spec))
  _, params, masks = _init(rc)
  stage = reparam.parse_spec(spec)
  grads = jax.tree.map(jnp.zeros_like, params)
  step_fn = jax.jit(lambda p, e, t: update_extra(p, grads, e, t, Plan.from_config(rc)))
  extra = {"masks": masks}
  n = sum(int(np.size(x)) for x in jax.tree.leaves(masks))
  sizes = [m.size for m in _masks_by_path(params, masks, rc).values()]
  for t in range(12):
    extra, metrics = step_fn(params, extra, jnp.asarray(t))
    s_t = float(schedule.target_sparsity(stage, min(max(t, 0), 8))) if t >= 2 else 0.0
    last_update = max([u for u in range(2, 9, 2) if u <= t], default=None)
    if last_update is None:
      want = 0
    else:
      s_u = float(schedule.target_sparsity(stage, last_update))
      want = sum(int(np.floor(s_u * k + 0.5)) for k in sizes)
    assert float(metrics["sparsity"]) * n == pytest.approx(want, abs=0.5), (t, s_t)


def test_movement_scores_are_minus_sum_w_times_g():
  rc = _rc((KERNELS, "mask(method=movement, sparsity=0.5, begin_step=100, end_step=100)"))
  _, params, masks = _init(rc)
  extra = {"masks": masks}
  want = None
  for t in range(3):
    k = jax.random.key(t)
    p_t = jax.tree.map(lambda x, i=t: x + 0.01 * i, params)
    g_t = jax.tree.map(lambda x: jax.random.normal(k, x.shape), params)
    extra, _ = update_extra(p_t, g_t, extra, jnp.asarray(t), Plan.from_config(rc))
    # The score reads the probe's gradient, ∂L/∂W′ (the masked weight's).
    term = (-p_t["block_1"]["mlp"]["fc_in"]["kernel"]["w"]
            * g_t["block_1"]["mlp"]["fc_in"]["kernel"]["probe"])
    want = term if want is None else want + term
  got = extra["masks"]["block_1"]["mlp"]["fc_in"]["kernel"]["scores"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  # at the update step the lowest half of the scores is pruned
  extra, _ = update_extra(params, jax.tree.map(jnp.zeros_like, params), extra, jnp.asarray(100), Plan.from_config(rc))
  m = np.asarray(extra["masks"]["block_1"]["mlp"]["fc_in"]["kernel"]["mask"])
  s = np.asarray(got)
  assert m.sum() == m.size // 2 and s[~m].max() <= s[m].min()


def test_movement_scores_of_pruned_entries_use_the_masked_weights_gradient():
  """Sanh et al.'s straight-through scores: a pruned entry (mask 0) still gets
  S −= w·∂L/∂W′, with ∂L/∂W′ the gradient w.r.t. the masked weight; from the stored
  weight's gradient (0 there) its score would freeze and it could never return."""
  spec = "mask(method=movement, sparsity=0.5, begin_step=0, end_step=0)"
  rc = _rc((KERNELS, spec))
  wrapped, params, masks = _init(rc)
  masks = prune_now(params, masks, Plan.from_config(rc))
  masks = jax.tree.map(lambda x: jnp.zeros_like(x) if x.dtype != jnp.bool_ else x, masks)

  def loss(p):
    logits = wrapped.apply({"params": p, "masks": masks}, IDS)["logits"]
    return jnp.mean(jnp.square(logits))

  grads = jax.grad(loss)(params)
  extra, _ = update_extra(params, grads, {"masks": masks}, jnp.asarray(1), Plan.from_config(rc))
  # ∂L/∂W′ by hand: the bare model on the masked dense weights, differentiated there.
  dense = Reparam.from_config(rc).to_dense(params, masks)
  bare = Transformer(CFG)
  g_dense = jax.grad(lambda d: jnp.mean(jnp.square(bare.apply({"params": d}, IDS)["logits"])))(
      dense)
  w = params["block_0"]["mlp"]["fc_in"]["kernel"]["w"]
  m = np.asarray(masks["block_0"]["mlp"]["fc_in"]["kernel"]["mask"])
  want = -np.asarray(w) * np.asarray(g_dense["block_0"]["mlp"]["fc_in"]["kernel"])
  got = np.asarray(extra["masks"]["block_0"]["mlp"]["fc_in"]["kernel"]["scores"])
  assert (~m).sum() > 0 and np.abs(want[~m]).max() > 0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  # The weight itself still gets M ⊙ ∂L/∂W′ (the probe gets the rest).
  g_w = np.asarray(grads["block_0"]["mlp"]["fc_in"]["kernel"]["w"])
  assert not g_w[~m].any()


def test_soft_movement_shrinks_scores_and_thresholds():
  rc = _rc((KERNELS, "mask(method=soft_movement, threshold=0.0, l1=0.01, every=1)"))
  _, params, masks = _init(rc)
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads = jax.tree.map(lambda x: -jnp.sign(x), params)
  for block in ("block_0", "block_1"):  # ∂L/∂W′ = −sign(w): scores += |w|
    for group in ("attn", "mlp"):
      for k, node in grads[block][group].items():
        node["kernel"]["probe"] = -jnp.sign(params[block][group][k]["kernel"]["w"])
  extra, _ = update_extra(params, grads, {"masks": masks}, jnp.asarray(0), Plan.from_config(rc))
  extra, _ = update_extra(params, zeros, extra, jnp.asarray(1), Plan.from_config(rc))
  w = np.abs(np.asarray(params["block_0"]["attn"]["query"]["kernel"]["w"]))
  node = extra["masks"]["block_0"]["attn"]["query"]["kernel"]
  np.testing.assert_allclose(np.asarray(node["scores"]), np.maximum(w - 0.02, 0.0), atol=1e-6)
  assert (np.asarray(node["mask"]) == (w > 0.02 + 1e-7)).all() or (
      np.asarray(node["mask"]) == (np.maximum(w - 0.02, 0.0) > 0)).all()
  assert 0 < np.asarray(node["mask"]).mean() < 1


def test_masked_model_equals_the_model_with_pruned_entries_zeroed():
  rc = _rc((r"block_\d+/mlp/\w+/kernel", "lowrank(rank=4)|mask(sparsity=0.5)"),
           (r"block_\d+/attn/\w+/kernel", "quant(bits=8)|mask(sparsity=0.5)"))
  wrapped, params, masks = _init(rc)
  masks = prune_now(params, masks, Plan.from_config(rc))
  out = wrapped.apply({"params": params, "masks": masks}, IDS)["logits"]
  folded = jax.tree.map(lambda x: x, params)
  for e in collect(Plan.from_config(rc), params, masks):
    node = params_at(folded, e.path)
    for k in e.kp:
      node = node[k]
    node["w"] = jnp.where(e.aux["mask"], node["w"], 0.0)
  ref = wrapped.apply({"params": folded}, IDS)["logits"]  # no masks collection: no masking
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
  bare = wrapped.apply({"params": params}, IDS)["logits"]
  assert not np.allclose(np.asarray(out), np.asarray(bare), atol=1e-4)


def test_mask_then_quant_stack_is_mask_times_quantized_weight():
  from reparam_jax.reparam.state import join_state
  from reparam_jax.reparam.transforms.quant import fake_quant, max_scale
  node = reparam.parse_spec("mask|quant(bits=4)")
  w = jax.random.normal(jax.random.key(0), (8, 6))
  theta = node.from_dense(w)
  assert node.matches(theta) and set(theta) == {"w"} and set(theta["w"]) == {"w"}
  m = jax.random.bernoulli(jax.random.key(1), 0.5, w.shape)
  got = node.apply(join_state(node, theta, {"mask": m}))
  want = jnp.where(m, fake_quant(w, max_scale(w, 4), 4), 0.0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_masks_shard_like_their_weight():
  from reparam_jax.training import sharding
  rc = _rc((KERNELS, "mask(method=movement)"))
  wrapped = reparam.wrap(Transformer(CFG), rc)
  abstract = jax.eval_shape(wrapped.init, jax.random.key(0), IDS)
  specs = nn.get_partition_spec(abstract)
  w = specs["params"]["block_0"]["mlp"]["fc_in"]["kernel"]["w"]
  assert specs["masks"]["block_0"]["mlp"]["fc_in"]["kernel"]["mask"] == w
  assert specs["masks"]["block_0"]["mlp"]["fc_in"]["kernel"]["scores"] == w
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  shard = sharding.logical_to_sharding(abstract, mesh, sharding.rules_tuple(
      sharding.DEFAULT_AXIS_RULES))
  assert (shard["masks"]["block_0"]["mlp"]["fc_in"]["kernel"]["mask"].spec
          == shard["params"]["block_0"]["mlp"]["fc_in"]["kernel"]["w"].spec)


def test_threshold_sweep_counts_exactly():
  params = {"block_0": {"mlp": {"fc_in": {"kernel": jnp.array([[0.1, -0.2], [0.3, 0.0]])}}},
            "embed": {"embedding": jnp.ones((2, 2))}}
  rows = threshold_sweep(params, [0.0, 0.1, 0.25, 1.0], Reparam.from_config(None))
  assert [r["zeros"] for r in rows] == [1, 2, 3, 4] and rows[1]["sparsity"] == 0.5


def test_masked_training_through_the_trainer_step():
  """The real trainer step (bench.lm_step) updates masks in the step and logs sparsity."""
  from bench.lm_step import StepRunner, quickstart_config
  spec = "mask(sparsity=0.5, begin_step=1, end_step=3, every=1)"
  cfg = quickstart_config(**{"reparam.rules": ((KERNELS, spec),), "model.num_layers": 1,
                             "model.embed_dim": 16, "model.mlp_dim": 32, "model.num_heads": 2,
                             "seq_len": 8, "batch_size": 8, "num_steps": 10})
  runner = StepRunner(cfg, vocab_size=65)
  for i in range(5):
    runner.run(i)
  state = runner.state
  m = np.asarray(state.extra["masks"]["block_0"]["mlp"]["fc_in"]["kernel"]["mask"])
  assert m.sum() == m.size // 2
  with jax.set_mesh(runner.mesh):
    _, metrics = runner.step_fn(state, runner.batches[0])
  assert float(metrics["sparsity"]) == pytest.approx(0.5)


def test_a_pruned_run_converts_and_exports_with_its_masks(tmp_path, raw_data_dir, tfds_dir):
  """convert --direction=to_dense and export_hf materialize the weights training computed
  with: the pruned entries are zero (they were stale values before the masks were applied)."""
  import safetensors.numpy

  from reparam_jax import convert, export_hf, train
  from reparam_jax.rundir import checkpoint
  from tests.helpers import tiny_args
  workdir = str(tmp_path / "run")
  spec = "mask(sparsity=0.75, begin_step=0, end_step=0)"  # one-shot at the first step
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=3, eval_every=3,
                       checkpoint_every=3) + [f"--config.reparam.rules=((r'{KERNELS}', '{spec}'),)"])
  cfg = str(tmp_path / "cfg.py")
  with open(cfg, "w") as f:
    f.write("from configs.lm.shakespeare_char import get_config as base\n"
            "def get_config():\n  c = base()\n"
            f"  c.reparam.rules = ((r'{KERNELS}', '{spec}'),)\n  return c\n")
  dense_dir = str(tmp_path / "dense")
  convert.main([f"--config={cfg}", "--direction=to_dense", f"--src={workdir}",
                f"--dst={dense_dir}"])
  fc_in = np.asarray(checkpoint.load_params(dense_dir)["block_0"]["mlp"]["fc_in"]["kernel"])
  assert np.mean(fc_in == 0) == pytest.approx(0.75, abs=1e-3)
  export_hf.main([f"--workdir={workdir}", f"--to={tmp_path / 'hf'}"])
  tensors = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = tensors["transformer.h.0.mlp.c_fc.weight"]  # GPT-2's Conv1D: [d_in, d_out]
  np.testing.assert_array_equal(exported, fc_in)
