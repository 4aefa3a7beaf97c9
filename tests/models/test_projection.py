"""Projection layers between blocks (`layer_dims`): widths, forward, gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.models import Transformer, TransformerConfig, transformer_config

BASE = dict(vocab_size=29, num_layers=4, num_heads=2, embed_dim=16, mlp_dim=64, max_len=10)


def _init(cfg, B=2, L=10):
  model = Transformer(cfg)
  ids = jax.random.randint(jax.random.key(3), (B, L), 0, cfg.vocab_size)
  variables = model.init({"params": jax.random.key(0)}, ids)
  return model, nn.meta.unbox(variables["params"]), ids


def test_blocks_after_a_projection_run_at_the_smaller_width():
  cfg = TransformerConfig(**BASE, layer_dims=(16, 16, 8, 8))
  model, params, ids = _init(cfg)
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert shapes["block_1"]["attn"]["query"]["kernel"] == (16, 16)
  assert "proj_1" not in shapes and "proj_3" not in shapes
  assert shapes["proj_2"]["kernel"] == (16, 8)
  assert shapes["block_2"]["attn"]["query"]["kernel"] == (8, 8)  # 2 heads of 4
  assert shapes["block_3"]["mlp"]["fc_in"]["kernel"] == (8, 32)  # MLP ratio kept (4x)
  assert shapes["ln_final"]["scale"] == (8,)
  assert shapes["proj_out"]["kernel"] == (8, 16)  # back to the tied table's width
  out = model.apply({"params": params}, ids)
  assert out["hidden"].shape == (2, 10, 8) and out["logits"].shape == (2, 10, 29)
  assert np.isfinite(out["logits"]).all()


def test_projection_into_the_first_block_and_causality():
  cfg = TransformerConfig(**BASE, layer_dims=(8, 8, 4, 4))
  model, params, ids = _init(cfg)
  assert params["proj_0"]["kernel"].shape == (16, 8) and params["proj_2"]["kernel"].shape == (8, 4)
  out = model.apply({"params": params}, ids)["logits"]
  changed = model.apply({"params": params}, ids.at[:, 6].set((ids[:, 6] + 1) % 29))["logits"]
  np.testing.assert_allclose(out[:, :6], changed[:, :6], atol=1e-5)


def test_projected_encoder_pools_at_the_final_width():
  cfg = TransformerConfig(**BASE, causal=False, pre_norm=False, pooler=True,
                          layer_dims=(16, 8, 8, 8))
  model, params, ids = _init(cfg)
  out = model.apply({"params": params}, ids)
  assert out["pooled"].shape == (2, 8) and "logits" not in out


def test_gradients_reach_every_projection():
  cfg = TransformerConfig(**BASE, layer_dims=(16, 8, 8, 4), embed_proj_dim=6)
  model, params, ids = _init(cfg)
  grads = jax.grad(lambda p: model.apply({"params": p}, ids)["logits"].std())(params)
  for name in ("proj_1", "proj_3", "proj_out"):
    assert float(jnp.abs(grads[name]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["embed"]["projection"]["kernel"]).sum()) > 0


def test_layer_dims_from_a_config_section():
  # What `--config.model.layer_dims=(16,16,8,8)` produces: a tuple (or list) field.
  cfg = transformer_config(dict(BASE, layer_dims=[16, 16, 8, 8], share_layers=False))
  assert cfg.layer_dims == (16, 16, 8, 8) and hash(cfg)


def test_classifier_feature_projection_head():
  from reparam_jax.models.heads import EncoderWithHeads
  cfg = TransformerConfig(**dict(BASE, causal=False, pre_norm=False, pooler=True))
  model = EncoderWithHeads(cfg, heads=("classifier",), num_classes=3,
                           classifier_feature_proj_dim=4)
  ids = jax.random.randint(jax.random.key(3), (2, 10), 0, 29)
  params = nn.meta.unbox(model.init({"params": jax.random.key(0)}, ids)["params"])
  assert params["classifier"]["feature_proj"]["kernel"].shape == (16, 4)
  assert params["classifier"]["ln"]["scale"].shape == (4,)
  assert model.apply({"params": params}, ids)["logits"].shape == (2, 3)
  plain = nn.meta.unbox(EncoderWithHeads(cfg, num_classes=3).init(
      {"params": jax.random.key(0)}, ids)["params"])
  assert "feature_proj" not in plain["classifier"]
