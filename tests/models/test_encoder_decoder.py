"""The encoder–decoder: cached decoding equals teacher forcing, padding, options, paths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.models import PRESETS, TransformerConfig
from reparam_jax.models.seq2seq import EncoderDecoder, init_cache
from reparam_jax.models.transformer import relative_bucket
from reparam_jax.pytree.paths import dict_leaves

TINY = dict(vocab_size=40, max_len=32, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64)
VARIANTS = {
    "t5": dict(PRESETS["t5_small"], **TINY, head_size=6, relative_buckets=8,
               relative_max_distance=16),
    "t5_v1_1": dict(PRESETS["t5_v1_1_small"], **TINY, head_size=8, relative_buckets=8,
                    relative_max_distance=16, num_decoder_layers=3),
    "vaswani": dict(PRESETS["transformer_base"], **TINY),
    "learned_pre_ln": dict(TINY, pre_norm=True),
}


def _model(name: str) -> tuple[EncoderDecoder, dict]:
  model = EncoderDecoder(TransformerConfig(**VARIANTS[name]))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                      jnp.zeros((1, 4), jnp.int32))["params"]
  # Non-trivial norms and biases, so a wrong wiring cannot hide behind ones and zeros.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return model, jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_decoding_equals_teacher_forcing(name):
  model, params = _model(name)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(1, 40, (2, 9)), jnp.int32)
  mask = jnp.asarray([[True] * 9, [True] * 6 + [False] * 3])
  targets = jnp.asarray(rng.integers(1, 40, (2, 7)), jnp.int32)
  full = model.apply({"params": params}, inputs, targets, inputs_mask_BxS=mask)["logits"]

  memory = model.apply({"params": params}, inputs, mask, method=EncoderDecoder.encode)
  cache = init_cache(model, params, 2, 7, memory, mask)
  steps = []
  for t in range(7):
    out, upd = model.apply({"params": params, "cache": cache}, targets[:, t:t + 1],
                           memory if t == 0 else None, mask, decode=True,
                           method=EncoderDecoder.decode, mutable=["cache"])
    cache = upd["cache"]
    steps.append(out["logits"][:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["t5", "vaswani"])
def test_encoder_padding_changes_nothing(name):
  model, params = _model(name)
  rng = np.random.default_rng(1)
  inputs = jnp.asarray(rng.integers(1, 40, (1, 5)), jnp.int32)
  targets = jnp.asarray(rng.integers(1, 40, (1, 6)), jnp.int32)
  plain = model.apply({"params": params}, inputs, targets)["logits"]
  padded = jnp.concatenate([inputs, jnp.full((1, 4), 3, jnp.int32)], axis=1)
  mask = jnp.arange(9)[None] < 5
  out = model.apply({"params": params}, padded, targets, inputs_mask_BxS=mask)["logits"]
  np.testing.assert_allclose(out, plain, atol=1e-5, rtol=1e-5)


def test_decoder_is_causal_and_reads_the_encoder():
  model, params = _model("t5")
  inputs = jnp.arange(1, 9)[None].astype(jnp.int32)
  targets = jnp.arange(2, 8)[None].astype(jnp.int32)
  base = model.apply({"params": params}, inputs, targets)["logits"]
  later = model.apply({"params": params}, inputs, targets.at[0, 4].set(30))["logits"]
  np.testing.assert_array_equal(base[:, :4], later[:, :4])  # the past never sees the future
  other = model.apply({"params": params}, inputs.at[0, 7].set(30), targets)["logits"]
  assert np.abs(np.asarray(other - base)).max(axis=-1).min() > 1e-4  # every step sees the input


def test_relative_buckets_follow_the_t5_rule():
  rel = jnp.arange(-300, 301)[None, None]
  uni = np.asarray(relative_bucket(rel, False, 32, 128))[0, 0]
  bi = np.asarray(relative_bucket(rel, True, 32, 128))[0, 0]
  at = lambda d: 300 + d  # noqa: E731
  # Causal: keys ahead share bucket 0; distances 0..15 exact; log-spaced after; 128+ the last.
  assert uni[at(5)] == 0 and uni[at(-7)] == 7 and uni[at(-15)] == 15
  assert uni[at(-16)] == 16 and uni[at(-64)] == 26 and uni[at(-127)] == 31
  assert uni[at(-128)] == 31 and uni[at(-300)] == 31
  assert np.all(np.diff(uni[:at(0) + 1][::-1]) >= 0)  # monotone in the distance
  # Bidirectional: 16 buckets each way, keys ahead offset by 16, 0..7 exact.
  assert bi[at(0)] == 0 and bi[at(-3)] == 3 and bi[at(3)] == 19
  assert bi[at(-300)] == 15 and bi[at(300)] == 31


def test_cross_attention_kernels_are_addressable_by_path():
  model, params = _model("t5_v1_1")
  paths = {p for p, _ in dict_leaves(params)}
  assert "decoder/block_2/cross_attn/query/kernel" in paths
  assert "encoder/rel_bias/embedding" in paths and "lm_head/kernel" in paths
  assert not any("cross_attn" in p for p in paths if p.startswith("encoder/"))


def test_preset_sizes_match_published_t5():
  for name, expected in [("t5_small", 60_506_624), ("t5_v1_1_small", 76_961_152)]:
    model = EncoderDecoder(TransformerConfig(**PRESETS[name]))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                            jnp.zeros((1, 4), jnp.int32))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expected, name


def test_config_rejects_two_position_schemes():
  with pytest.raises(ValueError, match="one position scheme"):
    TransformerConfig(**dict(TINY, rope=True, sinusoidal=True))
  with pytest.raises(ValueError, match="norm="):
    dataclasses.replace(TransformerConfig(**TINY), norm="batch")


@pytest.mark.parametrize("name", ["t5", "vaswani", "learned_pre_ln"])
def test_a_packed_row_computes_each_example_alone(name):
  """Two examples packed into one row (inputs and targets each with segment ids, as
  data/span_corruption.py's first-fit rows are): each example's logits are those it gets
  alone, for relative, sinusoidal and learned positions."""
  model, params = _model(name)
  rng = np.random.default_rng(2)
  examples = [(rng.integers(1, 40, 5), rng.integers(1, 40, 4)),
              (rng.integers(1, 40, 7), rng.integers(1, 40, 3))]
  S, T = 14, 9  # room for both, and padding after them
  inputs, targets = np.zeros((1, S), np.int32), np.zeros((1, T), np.int32)
  seg_in, seg_tgt = np.zeros((1, S), np.int32), np.zeros((1, T), np.int32)
  i = t = 0
  for k, (x, y) in enumerate(examples, start=1):
    inputs[0, i:i + len(x)], seg_in[0, i:i + len(x)] = x, k
    targets[0, t:t + len(y)], seg_tgt[0, t:t + len(y)] = y, k
    i, t = i + len(x), t + len(y)
  packed = model.apply({"params": params}, inputs, targets, inputs_mask_BxS=seg_in > 0,
                       inputs_segment_ids_BxS=seg_in, targets_segment_ids_BxT=seg_tgt)["logits"]
  unsegmented = model.apply({"params": params}, inputs, targets,
                            inputs_mask_BxS=seg_in > 0)["logits"]
  t = 0
  for x, y in examples:
    alone = model.apply({"params": params}, x[None].astype(np.int32),
                        y[None].astype(np.int32))["logits"][0]
    np.testing.assert_allclose(packed[0, t:t + len(y)], alone, atol=2e-5, rtol=2e-5)
    t += len(y)
  # Without the segment ids the second example reads the first: the test can fail.
  assert not np.allclose(unsegmented[0, 4:7], packed[0, 4:7], atol=1e-3)
