"""`model.scan_layers`: the scanned stack computes what the unrolled one does.

Parameters move between the layouts with pytree/layers.py; the same weights
give the same logits, gradients and generated tokens in both, for the
decoder, the encoder with heads and the encoder–decoder.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from reparam_jax.models import Transformer, transformer_config
from reparam_jax.models.heads import EncoderWithHeads
from reparam_jax.models.seq2seq import EncoderDecoder
from reparam_jax.pytree import layers
from tests.helpers import greedy_cached

BASE = dict(vocab_size=50, num_layers=3, num_heads=2, embed_dim=16, mlp_dim=32, max_len=16)


def _close(a, b, tol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _pair(make, cfg, *args, **kwargs):
  """Unrolled params and outputs, and the scanned model's on the stacked params."""
  unrolled = make(cfg)
  scanned = make(dataclasses.replace(cfg, scan_layers=True))
  params = unrolled.init(jax.random.key(0), *args, **kwargs)["params"]
  stacked = layers.stack_layers(params)
  # The stacked tree is exactly what the scanned model initialises (names, shapes, boxes).
  abstract = jax.eval_shape(scanned.init, jax.random.key(0), *args, **kwargs)["params"]
  assert jax.tree.structure(stacked) == jax.tree.structure(abstract)
  for a, b in zip(jax.tree.leaves(stacked, is_leaf=lambda x: isinstance(x, meta.AxisMetadata)),
                  jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))):
    assert a.value.shape == b.value.shape and tuple(a.names) == tuple(b.names)
  return unrolled, scanned, params, stacked


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_decoder_scanned_equals_unrolled(remat):
  cfg = transformer_config(dict(BASE, remat=remat, residual_dropout=0.1))
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  unrolled, scanned, params, stacked = _pair(Transformer, cfg, ids)
  assert meta.unbox(stacked)["blocks"]["attn"]["query"]["kernel"].shape == (3, 16, 16)
  assert "layers" == stacked["blocks"]["mlp"]["fc_in"]["kernel"].names[0]

  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, ids)["logits"] ** 2)

  l0, g0 = jax.value_and_grad(lambda p: loss(unrolled, p))(params)
  l1, g1 = jax.value_and_grad(lambda p: loss(scanned, p))(stacked)
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  _close(layers.stack_layers(meta.unbox(g0)), meta.unbox(g1))


def test_encoder_with_heads_scanned_equals_unrolled():
  cfg = transformer_config(dict(BASE, causal=False, pre_norm=False, pooler=True,
                                type_vocab_size=2, embed_norm=True, remat="full"))
  make = lambda c: EncoderWithHeads(c, heads=("classifier",))  # noqa: E731
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  mask = jnp.ones((2, 8), bool).at[1, 5:].set(False)
  unrolled, scanned, params, stacked = _pair(make, cfg, ids, mask)
  _close(unrolled.apply({"params": params}, ids, mask)["logits"],
         scanned.apply({"params": stacked}, ids, mask)["logits"])


def test_encoder_decoder_scanned_equals_unrolled():
  cfg = transformer_config(dict(BASE, preset="t5_small", head_size=8, num_decoder_layers=2,
                                remat="full"))
  src = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  tgt = jax.random.randint(jax.random.key(2), (2, 6), 0, 50)
  unrolled, scanned, params, stacked = _pair(EncoderDecoder, cfg, src, tgt)
  assert meta.unbox(stacked)["encoder"]["blocks"]["attn"]["query"]["kernel"].shape[0] == 3
  assert meta.unbox(stacked)["decoder"]["blocks"]["cross_attn"]["query"]["kernel"].shape[0] == 2
  _close(unrolled.apply({"params": params}, src, tgt)["logits"],
         scanned.apply({"params": stacked}, src, tgt)["logits"])


LLAMA = dict(preset="smollm2_135m", vocab_size=50, num_layers=3, num_heads=4, num_kv_heads=2,
             embed_dim=16, mlp_dim=24, max_len=16, sliding_window=3, rope_scaling="yarn",
             rope_factor=4.0, rope_original_max_len=4)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_decoding_with_a_scanned_cache(model):
  """Cached decoding (cache stacked on the layer axis) matches the unrolled model's; for a
  Llama-style stack too (grouped key/value heads in the stacked cache, a sliding window)."""
  cfg = transformer_config(BASE if model == "gpt2" else LLAMA)
  ids = jax.random.randint(jax.random.key(1), (2, 5), 0, 50)
  unrolled, scanned, params, stacked = _pair(Transformer, cfg, ids)

  t0, last0 = greedy_cached(unrolled, params, ids, 4)
  t1, last1 = greedy_cached(scanned, stacked, ids, 4)
  np.testing.assert_array_equal(t0, t1)
  _close(last0, last1, 1e-5)


def test_layouts_round_trip_and_convert_both_ways():
  cfg = transformer_config(BASE)
  ids = jnp.ones((1, 4), jnp.int32)
  params = meta.unbox(Transformer(cfg).init(jax.random.key(0), ids)["params"])
  host = jax.tree.map(np.asarray, params)
  stacked = layers.stack_layers(host)
  assert sorted(stacked) == ["blocks", "embed", "ln_final"]
  back = layers.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(host)
  _close(back, host, 0)
  # `like` converts to whichever layout the model has, and leaves a match alone.
  assert layers.like(host, stacked).keys() == stacked.keys()
  assert layers.like(stacked, host).keys() == host.keys()
  assert layers.like(host, host) is host


def test_stacking_refuses_a_gap_in_the_layers():
  tree = {"block_0": {"w": np.zeros(2)}, "block_2": {"w": np.zeros(2)}}
  with pytest.raises(ValueError, match="block_0 ... block_1"):
    layers.stack_layers(tree)


def test_scan_refuses_shared_or_varying_blocks():
  with pytest.raises(ValueError, match="scan_layers needs num_layers identical blocks"):
    transformer_config(dict(BASE, scan_layers=True, share_layers=True))
  with pytest.raises(ValueError, match="scan_layers needs num_layers identical blocks"):
    transformer_config(dict(BASE, scan_layers=True, layer_dims=(16, 8, 8)))


def test_remat_names():
  assert transformer_config(dict(BASE, remat=True)).remat == "full"
  assert transformer_config(dict(BASE, remat="False")).remat == "none"
  with pytest.raises(ValueError, match="model.remat='sometimes'"):
    transformer_config(dict(BASE, remat="sometimes"))
