"""ALBERT options: factorised embedding, cross-layer sharing, the albert_base preset."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.models import PRESETS, Transformer, TransformerConfig

TINY = dict(vocab_size=37, num_layers=3, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12)


def _shapes(cfg: TransformerConfig) -> dict:
  model = Transformer(cfg)
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                               jnp.zeros((1, 8), jnp.int32)))
  return jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract["params"]))


def _count(shapes: dict) -> int:
  return sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))


def test_albert_base_matches_published_count():
  # Lan et al. (2020) and HF `AlbertModel` (albert-base-v2): 11.68M with the
  # pooler and without the MLM head.  We count it exactly; allow the 1% the
  # rounded published figure leaves.
  n = _count(_shapes(TransformerConfig(**PRESETS["albert_base"])))
  assert abs(n - 11.68e6) / 11.68e6 < 0.01, n
  assert n == 11_683_584


def test_shared_layers_store_one_block():
  shapes = _shapes(TransformerConfig(**TINY, share_layers=True))
  assert not any(k.startswith("block_") and k != "block_shared" for k in shapes)
  unshared = _shapes(TransformerConfig(**TINY))
  assert shapes["block_shared"] == unshared["block_0"]
  assert _count(unshared) - _count(shapes) == 2 * _count(unshared["block_0"])


def test_shared_layers_apply_the_block_num_layers_times():
  cfg = TransformerConfig(**TINY, share_layers=True)
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 37)
  variables = Transformer(cfg).init({"params": jax.random.key(0)}, ids)
  out3 = Transformer(cfg).apply(variables, ids)["logits"]
  # The same parameters under one layer give a different function: the block
  # really is applied three times.
  out1 = Transformer(dataclasses.replace(cfg, num_layers=1)).apply(variables, ids)["logits"]
  assert not np.allclose(out3, out1, atol=1e-4)


def test_factorised_embedding_shapes_and_tied_output():
  cfg = TransformerConfig(**TINY, embed_proj_dim=4)
  shapes = _shapes(cfg)
  assert shapes["embed"]["token"]["embedding"] == (37, 4)
  assert shapes["embed"]["position"]["embedding"] == (12, 4)
  assert shapes["embed"]["projection"]["kernel"] == (4, 16)
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 37)
  model = Transformer(cfg)
  variables = model.init({"params": jax.random.key(0)}, ids)
  out = model.apply(variables, ids)
  assert out["logits"].shape == (2, 8, 37) and out["hidden"].shape == (2, 8, 16)
  # Tied logits are hidden · Pᵀ · Eᵀ (projection transposed, then the table).
  p = nn.meta.unbox(variables["params"])
  h = out["hidden"]
  expect = h @ p["embed"]["projection"]["kernel"].T @ p["embed"]["token"]["embedding"].T
  np.testing.assert_allclose(out["logits"], expect, rtol=1e-4, atol=1e-4)


def test_defaults_leave_the_tree_unchanged():
  shapes = _shapes(TransformerConfig(**TINY))
  assert sorted(shapes) == ["block_0", "block_1", "block_2", "embed", "ln_final"]
  assert "projection" not in shapes["embed"]


@pytest.mark.parametrize("bad", [dict(layer_dims=(16, 8)), dict(layer_dims=(16, 8, 5)),
                                 dict(layer_dims=(16, 8, 8), share_layers=True)])
def test_invalid_projection_configs_are_rejected(bad):
  with pytest.raises(ValueError):
    TransformerConfig(**dict(TINY, **bad))
