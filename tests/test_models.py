"""The Transformer: shapes, masking, published parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.models import PRESETS, Transformer, TransformerConfig

TINY = dict(vocab_size=37, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12)


def _count(cfg: TransformerConfig) -> int:
  model = Transformer(cfg)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                             jnp.zeros((1, 8), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))


@pytest.mark.parametrize("preset,expected", [
    ("gpt2_small", 124_439_808), ("bert_base", 109_482_240),
    # transformers' counts of the published models (tests/hf/test_llama.py checks them)
    ("smollm2_135m", 134_515_008), ("smollm2_360m", 361_821_120),
    ("qwen2_5_0_5b", 494_032_768), ("llama3_2_1b", 1_235_814_400),
    ("llama3_1_8b", 8_030_261_248), ("llama3_1_70b", 70_553_706_496)])
def test_published_parameter_counts(preset, expected):
  assert _count(TransformerConfig(**PRESETS[preset])) == expected


def _init(cfg, L=12, B=3):
  model = Transformer(cfg)
  ids = jax.random.randint(jax.random.key(1), (B, L), 0, cfg.vocab_size)
  return model, model.init({"params": jax.random.key(0)}, ids), ids


@pytest.mark.parametrize("rope", [False, True])
def test_decoder_shapes_and_causality(rope):
  cfg = TransformerConfig(**TINY, rope=rope)
  model, variables, ids = _init(cfg)
  out = model.apply(variables, ids)
  assert out["logits"].shape == (3, 12, 37) and out["hidden"].shape == (3, 12, 16)
  # Changing a future token must not change earlier logits.
  changed = ids.at[:, 7].set((ids[:, 7] + 1) % 37)
  out2 = model.apply(variables, changed)
  np.testing.assert_allclose(out["logits"][:, :7], out2["logits"][:, :7], atol=1e-6)
  assert not np.allclose(out["logits"][:, 7:], out2["logits"][:, 7:])


def test_encoder_shapes_and_padding_mask():
  cfg = TransformerConfig(**TINY, causal=False, pre_norm=False, type_vocab_size=2,
                          embed_norm=True, pooler=True)
  model, variables, ids = _init(cfg)
  pad = jnp.arange(12)[None, :] < 9  # last 3 positions are padding
  out = model.apply(variables, ids, padding_mask_BxL=jnp.broadcast_to(pad, ids.shape),
                    token_types_BxL=jnp.zeros_like(ids))
  assert out["hidden"].shape == (3, 12, 16) and out["pooled"].shape == (3, 16)
  assert "logits" not in out
  # Padded keys are never attended: their content does not matter.
  other = ids.at[:, 9:].set(0)
  out2 = model.apply(variables, other, padding_mask_BxL=jnp.broadcast_to(pad, ids.shape))
  np.testing.assert_allclose(out["hidden"][:, :9], out2["hidden"][:, :9], atol=1e-5)


def test_parameters_and_activations_carry_logical_axes():
  cfg = TransformerConfig(**TINY)
  _, variables, _ = _init(cfg)
  names = jax.tree.map(lambda p: p.names, variables["params"],
                       is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert names["block_0"]["attn"]["query"]["kernel"] == ("embed", "heads")
  assert names["block_0"]["attn"]["out"]["kernel"] == ("heads", "embed")
  assert names["block_0"]["mlp"]["fc_in"]["kernel"] == ("embed", "mlp")
  assert names["embed"]["token"]["embedding"] == ("vocab", "embed")
  leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)


def test_bf16_compute_keeps_fp32_params():
  cfg = TransformerConfig(**TINY, dtype="bfloat16")
  model, variables, ids = _init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.meta.unbox(variables)))
  out = model.apply(variables, ids)
  assert out["logits"].dtype == jnp.bfloat16


def test_dropout_active_only_in_training():
  cfg = TransformerConfig(**TINY, residual_dropout=0.5, attention_dropout=0.5, embed_dropout=0.1)
  model, variables, ids = _init(cfg)
  a = model.apply(variables, ids, train=False)["logits"]
  b = model.apply(variables, ids, train=False)["logits"]
  np.testing.assert_array_equal(a, b)
  c = model.apply(variables, ids, train=True, rngs={"dropout": jax.random.key(3)})["logits"]
  assert not np.allclose(a, c)


def test_dense_with_bias_matches_plain_formula_and_gradients():
  """The CPU path folds the bias into the dot ([x, 1] @ [W; b]); values and grads must not move."""
  from reparam_jax.models.layers import Dense
  layer = Dense(24, ("embed", "mlp"))
  x = jax.random.normal(jax.random.key(0), (3, 5, 16))
  params = layer.init(jax.random.key(1), x)["params"]
  params = {"kernel": params["kernel"].unbox(),
            "bias": jax.random.normal(jax.random.key(2), (24,))}

  def loss(p, x, fn):
    return jnp.sum(jnp.tanh(fn(p, x)) ** 2)

  ours = lambda p, x: layer.apply({"params": p}, x)  # noqa: E731
  plain = lambda p, x: jnp.einsum("bli,io->blo", x, p["kernel"]) + p["bias"]  # noqa: E731
  np.testing.assert_allclose(ours(params, x), plain(params, x), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(loss, argnums=(0, 1))(params, x, ours)
  g_plain = jax.grad(loss, argnums=(0, 1))(params, x, plain)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows_by_dot", [True, False])
def test_layer_norm_vjp_matches_autodiff_of_the_formula(monkeypatch, rows_by_dot):
  """The hand-written LayerNorm backward (both row-sum paths) against autodiff of the forward."""
  from reparam_jax.models import layers
  monkeypatch.setattr(layers, "_sum_rows_by_dot", lambda: rows_by_dot)
  k = jax.random.split(jax.random.key(0), 4)
  x = 3.0 * jax.random.normal(k[0], (3, 5, 16)) + 1.0
  scale, bias = 1.0 + jax.random.normal(k[1], (16,)), jax.random.normal(k[2], (16,))
  w = jax.random.normal(k[3], (3, 5, 16))  # a non-uniform cotangent

  def plain(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

  ours = lambda x, s, b: layers.layer_norm(x, s, b, 1e-5)  # noqa: E731
  np.testing.assert_allclose(ours(x, scale, bias), plain(x, scale, bias), rtol=1e-5, atol=1e-5)
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)) * w)  # noqa: E731
  g_ours = jax.grad(loss(ours), argnums=(0, 1, 2))(x, scale, bias)
  g_plain = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
  for a, b in zip(g_ours, g_plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [
    dict(num_kv_heads=1, rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=4),
    dict(num_kv_heads=2, sliding_window=3, rope_scaling="yarn", rope_factor=4.0,
         rope_original_max_len=4, qkv_bias=True, use_bias=False)])
def test_llama_decoder_decodes_through_its_cache_as_it_runs_whole(options):
  """Grouped-query heads (the cache holds only the key/value heads), a sliding window
  over the cache slots, scaled RoPE: one token at a time equals the whole sequence."""
  from tests.helpers import greedy_cached  # noqa: PLC0415
  cfg = TransformerConfig(**dict(TINY, num_heads=4, norm="rms", activation="silu",
                                 mlp_gated=True, rope=True, **options))
  model, variables, ids = _init(cfg, L=4, B=2)
  tokens, last = greedy_cached(model, variables["params"], ids, 6)
  whole = model.apply(variables, jnp.concatenate([ids, jnp.asarray(tokens[:, :-1])], 1))
  np.testing.assert_allclose(last[:, -1], whole["logits"][:, -1], atol=1e-5)
  steps = model.apply(variables, jnp.concatenate([ids, jnp.asarray(tokens)], 1))["logits"]
  np.testing.assert_array_equal(np.argmax(steps[:, 3:-1], -1), tokens)
  cache = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), decode=True)["cache"]
  assert cache["block_0"]["attn"]["cached_key"].shape == (1, 8, cfg.kv_heads, cfg.head_dim)
  if cfg.sliding_window:  # a token beyond the window changes nothing
    far = whole["logits"][:, -1]
    moved = model.apply(variables, jnp.concatenate([ids, jnp.asarray(tokens[:, :-1])], 1)
                        .at[:, 0].add(1))["logits"][:, -1]
    np.testing.assert_allclose(far, moved, atol=1e-6)
