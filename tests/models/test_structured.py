"""Structured pruning (compression/structured.py): heads and MLP units physically removed.

The model built from the returned config on the returned (smaller) params computes
exactly what the original computes when the removed units were zero, trains, and
decodes with its per-layer key/value cache.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from reparam_jax.compression import calibration, structured
from reparam_jax.errors import UserError
from reparam_jax.generation.decode import Sampling, generate
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.pytree import layers
from tests.helpers import greedy_cached

GPT2 = {"vocab_size": 40, "num_layers": 3, "num_heads": 4, "embed_dim": 16, "mlp_dim": 32, "max_len": 24}
LLAMA = dict(GPT2, num_kv_heads=2, norm="rms", activation="silu", mlp_gated=True, rope=True,
             use_bias=False, tie_embeddings=False)
BERT = dict(GPT2, causal=False, pre_norm=False, embed_norm=True, type_vocab_size=2,
            pooler=True, gelu_approximate=False, layer_norm_eps=1e-12)
FAMILIES = {"gpt2": GPT2, "llama": LLAMA, "bert": BERT}


def _params(cfg: TransformerConfig, ids):
  return meta.unbox(Transformer(cfg).init(jax.random.key(0), ids)["params"])


def _size(tree) -> int:
  return sum(np.size(x) for x in jax.tree.leaves(tree))


def _zero_units(params, cfg, dead_groups, dead_neurons):
  """Zeroes the output weights of the listed key/value groups and MLP units per layer."""
  params = jax.tree.map(np.array, params)
  group, K = cfg.num_heads // cfg.kv_heads, cfg.head_dim
  for i, (groups, neurons) in enumerate(zip(dead_groups, dead_neurons)):
    out = params[f"block_{i}"]["attn"]["out"]["kernel"]
    for g in groups:
      out[g * group * K:(g + 1) * group * K] = 0.0
    params[f"block_{i}"]["mlp"]["fc_out"]["kernel"][list(neurons)] = 0.0
  return params


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_model_computes_what_the_zeroed_one_does(family):
  cfg = TransformerConfig(**FAMILIES[family])
  ids = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
  groups = cfg.kv_heads
  dead_groups = [[0], [], [groups - 1]] if groups == 2 else [[1], [0, 3], [2]]
  dead_neurons = [[3, 7, 30], [0], list(range(0, 32, 2))]
  params = _zero_units(_params(cfg, ids), cfg, dead_groups, dead_neurons)
  want = Transformer(cfg).apply({"params": params}, ids)

  group = cfg.num_heads // cfg.kv_heads
  keep_heads = [(groups - len(d)) * group for d in dead_groups]
  pruned, pruned_cfg = structured.prune_heads(params, cfg, keep_heads)
  pruned, pruned_cfg = structured.prune_neurons(pruned, pruned_cfg,
                                                [32 - len(d) for d in dead_neurons])
  assert pruned_cfg.layer_heads == tuple(keep_heads)
  assert pruned_cfg.layer_mlp_dims == tuple(32 - len(d) for d in dead_neurons)
  got = Transformer(pruned_cfg).apply({"params": pruned}, ids)
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-5, atol=1e-5)

  # Physically smaller: exactly the removed units' weights are gone.
  K, D = cfg.head_dim, cfg.embed_dim
  removed_kv_heads = sum(len(d) for d in dead_groups)
  per_kv_head = (group * K * D * 2 + 2 * K * D  # query cols, out rows, key and value cols
                 + (K * (group + 2) if cfg.use_bias else 0))
  per_neuron = D * (3 if cfg.mlp_gated else 2) + (2 if cfg.mlp_gated else 1) * cfg.use_bias
  removed = removed_kv_heads * per_kv_head + sum(len(d) for d in dead_neurons) * per_neuron
  assert _size(params) - _size(pruned) == removed
  assert pruned["block_1"]["attn"]["query"]["kernel"].shape == (D, keep_heads[1] * K)
  assert pruned["block_2"]["mlp"]["fc_in"]["kernel"].shape == (D, 16)


def test_default_scores_remove_the_zeroed_units_first():
  cfg = TransformerConfig(**GPT2)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = _zero_units(_params(cfg, ids), cfg, [[2], [1], [0]], [[5], [6], [7]])
  heads = structured.head_scores(params, cfg)
  assert [int(np.argmin(s)) for s in heads] == [2, 1, 0]
  assert all(s.min() == 0 and (np.sort(s)[1:] > 0).all() for s in heads)
  neurons = structured.neuron_scores(params, cfg)
  assert [int(np.argmin(s)) for s in neurons] == [5, 6, 7]
  # A fraction ranked across layers keeps at least one unit everywhere and `keep` overall.
  _, frac_cfg = structured.prune_heads(params, cfg, 0.5, across_layers=True)
  assert sum(frac_cfg.layer_heads) == 6 and min(frac_cfg.layer_heads) >= 1


def test_activation_scores_are_wanda_per_unit_and_prune_dead_units():
  cfg = TransformerConfig(**LLAMA)
  ids = jax.random.randint(jax.random.key(4), (4, 6), 0, cfg.vocab_size)
  params = jax.tree.map(np.array, _params(cfg, ids))
  K = cfg.head_dim
  # Layer 1's second key/value group reads zero values, layer 0's units 3 and 9 a zero
  # gate: their inputs to attn/out and fc_out are zero, whatever those kernels hold.
  params["block_1"]["attn"]["value"]["kernel"][:, K:2 * K] = 0.0
  params["block_0"]["mlp"]["fc_gate"]["kernel"][:, [3, 9]] = 0.0
  stats = {}

  def record(path, w, layer_stats):
    stats[path] = layer_stats
    return w
  calibration.compress_blockwise(
      Transformer(cfg), params, {"ids_BxL": np.asarray(ids)}, lambda p: True, record,
      calibration.Calibration(n=4, length=6, chunk=2, samples=24), log=lambda *_: None)
  heads, neurons = structured.activation_scores(params, cfg, stats)

  # Wanda's |W|·‖X‖ written out, ‖X‖ from the sampled rows (here every calibration row).
  x = stats["block_2/attn/out/kernel"].samples_MxI.astype(np.float64)
  w = params["block_2"]["attn"]["out"]["kernel"].astype(np.float64)
  rows_of_group = [range(g * 2 * K, (g + 1) * 2 * K) for g in range(2)]
  want = [sum(abs(w[r, o]) * np.sqrt((x[:, r] ** 2).sum()) for r in rows
              for o in range(w.shape[1])) for rows in rows_of_group]
  np.testing.assert_allclose(heads[2], want, rtol=1e-4)
  assert heads[1][1] == 0 and heads[1][0] > 0
  assert sorted(np.flatnonzero(neurons[0] == 0)) == [3, 9]
  assert structured.head_scores(params, cfg)[1][1] == 0  # no value weights: magnitude agrees

  pruned, pruned_cfg = structured.prune_neurons(params, cfg, [30, 32, 32], scores=neurons)
  pruned, pruned_cfg = structured.prune_heads(pruned, pruned_cfg, [4, 2, 4], scores=heads)
  want_logits = Transformer(cfg).apply({"params": params}, ids)["logits"]
  got = Transformer(pruned_cfg).apply({"params": pruned}, ids)["logits"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want_logits), rtol=1e-5, atol=1e-5)


def test_scanned_stack_stays_scanned_when_layers_agree():
  cfg = TransformerConfig(**dict(GPT2, scan_layers=True))
  ids = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
  unrolled_cfg = dataclasses.replace(cfg, scan_layers=False)
  params = _zero_units(_params(unrolled_cfg, ids), unrolled_cfg, [[1]] * 3, [[2, 4]] * 3)
  want = Transformer(unrolled_cfg).apply({"params": params}, ids)["logits"]
  stacked = layers.stack_layers(params)

  pruned, pruned_cfg = structured.prune_heads(stacked, cfg, 3)
  pruned, pruned_cfg = structured.prune_neurons(pruned, pruned_cfg, 30)
  assert pruned_cfg.scan_layers and pruned["blocks"]["attn"]["out"]["kernel"].shape == (3, 12, 16)
  got = Transformer(pruned_cfg).apply({"params": pruned}, ids)["logits"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)

  _, varied_cfg = structured.prune_heads(stacked, cfg, [4, 3, 2])
  assert not varied_cfg.scan_layers and varied_cfg.layer_heads == (4, 3, 2)


def _pruned_llama():
  cfg = TransformerConfig(**LLAMA)
  params = _params(cfg, jnp.zeros((1, 4), jnp.int32))
  params, cfg = structured.prune_heads(params, cfg, [4, 2, 2])
  params, cfg = structured.prune_neurons(params, cfg, [32, 8, 20])
  return cfg, jax.tree.map(jnp.asarray, params)


def test_pruned_model_trains():
  cfg, params = _pruned_llama()
  model = Transformer(cfg)
  ids = jax.random.randint(jax.random.key(2), (4, 12), 0, cfg.vocab_size)
  opt = optax.adam(1e-2)

  def loss_fn(p):
    logits = model.apply({"params": p}, ids[:, :-1])["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  state, losses = opt.init(params), []
  for _ in range(8):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.1, losses
  assert params["block_1"]["attn"]["key"]["kernel"].shape == (16, 1 * cfg.head_dim)


def test_pruned_model_decodes_with_its_cache():
  # Grouped-query attention: layer 1 keeps one key/value head, layer 0 both.
  cfg = TransformerConfig(**LLAMA)
  params = _params(cfg, jnp.zeros((1, 4), jnp.int32))
  params, cfg = structured.prune_heads(params, cfg, [cfg.num_heads, 2, 2])
  params, cfg = structured.prune_neurons(params, cfg, [5, 32, 17])
  model = Transformer(cfg)
  ids = jax.random.randint(jax.random.key(3), (2, 5), 0, cfg.vocab_size)
  cached, _ = greedy_cached(model, params, ids, 4)
  # Full forward over prompt + generated tokens: its greedy choice at every step is the cached one.
  full = jnp.concatenate([ids, jnp.asarray(cached[:, :-1], ids.dtype)], axis=1)
  greedy = jnp.argmax(model.apply({"params": params}, full)["logits"][:, 4:], -1)
  np.testing.assert_array_equal(cached, np.asarray(greedy))
  # The on-device loop of generation/decode.py sizes its cache from the model.
  out = generate(model, params, [list(map(int, r)) for r in ids], 4, Sampling(temperature=0))
  np.testing.assert_array_equal(out.tokens, cached)
  cache = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), decode=True)["cache"]
  assert cache["block_0"]["attn"]["cached_key"].shape == (1, 8, 2, cfg.head_dim)
  assert cache["block_1"]["attn"]["cached_key"].shape == (1, 8, 1, cfg.head_dim)


@pytest.mark.parametrize("fields, message", [
    ({"layer_heads": (4, 4)}, "one entry per layer"),
    ({"layer_mlp_dims": (32, 0, 32)}, "entry ≤ 0"),
    ({"layer_heads": (4, 2, 4), "scan_layers": True}, "varies across layers"),
    ({"layer_heads": (4, 3, 4), "num_kv_heads": 2}, "whole key/value groups"),
])
def test_config_refuses_bad_per_layer_shapes(fields, message):
  with pytest.raises(ValueError, match=message):
    TransformerConfig(**dict(GPT2, **fields))


def test_uniform_per_layer_shapes_scan():
  cfg = TransformerConfig(**dict(GPT2, layer_heads=(2, 2, 2), scan_layers=True))
  params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  assert meta.unbox(params)["blocks"]["attn"]["query"]["kernel"].shape == (3, 16, 8)


@pytest.mark.parametrize("call, message", [
    (lambda p, c: structured.prune_heads(p, c, [4, 4, 3]), "not whole key/value groups"),
    (lambda p, c: structured.prune_heads(p, c, [4, 4, 6]), "between 1 and 2"),
    (lambda p, c: structured.prune_neurons(p, c, [8, 8]), "2 counts for 3 layers"),
    (lambda p, c: structured.prune_neurons(p, c, 1.5), "outside"),
    (lambda p, c: structured.prune_heads({"embed": p["embed"]}, c, 2), "no block_0/attn"),
])
def test_prune_refuses_bad_requests(call, message):
  cfg = TransformerConfig(**LLAMA)
  params = _params(cfg, jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(UserError, match=message):
    call(params, cfg)


def test_the_encoder_decoder_refuses_per_layer_heads_and_widths():
  """Its two stacks share one config: per-layer shapes would be silently ignored."""
  from reparam_jax.models.seq2seq import EncoderDecoder  # noqa: PLC0415
  cfg = TransformerConfig(vocab_size=20, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=16,
                          max_len=8, layer_heads=(2, 1))
  ids = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="encoder–decoder"):
    EncoderDecoder(cfg).init(jax.random.key(0), ids, ids)
