"""Block-by-block calibration (compression/calibration.py) on tiny decoders: each layer's
statistics are those of its input in the full model whose earlier blocks are already
compressed, for GPT-2- and Llama-style blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.compression import calibration
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.transformer import Transformer

STYLES = {
    "gpt2": dict(),
    "llama": dict(rope=True, norm="rms", mlp_gated=True, activation="silu", use_bias=False,
                  num_kv_heads=1, tie_embeddings=False),
}


def tiny(style):
  cfg = TransformerConfig(vocab_size=32, num_layers=3, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=12, **STYLES[style])
  model = Transformer(cfg)
  ids = np.random.default_rng(0).integers(0, 32, (6, 12)).astype(np.int32)
  params = model.init(jax.random.key(0), ids[:1])["params"]
  return model, nn.meta.unbox(params), ids


def dense_inputs(model, params, ids):
  """{module path: its input} of every Dense of the full model."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, calibration.Dense) and context.method_name == "__call__":
      seen["/".join(context.module.path)] = args[0].reshape(-1, args[0].shape[-1])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply({"params": params}, ids)
  return {k: np.asarray(v, np.float64) for k, v in seen.items()}


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_each_layer_sees_its_input_with_earlier_blocks_compressed(style):
  model, params, ids = tiny(style)
  seen_stats = {}

  def halve(path, w, stats):  # a "compression" whose effect on later inputs is visible
    seen_stats[path] = stats
    return w * 0.5

  selected = lambda p: "block_" in p  # noqa: E731
  new = calibration.compress_blockwise(
      model, params, {"ids_BxL": ids}, selected, halve,
      calibration.Calibration(n=6, length=12, chunk=4, samples=20), log=lambda *_: None)
  kernels = [p for p in seen_stats]
  expected_layers = {"attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc_in",
                     "mlp/fc_out"} | ({"mlp/fc_gate"} if style == "llama" else set())
  assert {p.split("/", 1)[1].rsplit("/", 1)[0] for p in kernels} == expected_layers
  assert len(kernels) == 3 * len(expected_layers)
  # The full model with the compressed weights: block i's layers read what block i
  # computes from the compressed blocks before it, and block i's own weights as they were.
  for i in range(3):
    mixed = {k: (new[k] if k < f"block_{i}" and k.startswith("block_") else v)
             for k, v in params.items()}
    inputs = dense_inputs(model, mixed, ids)
    for path in kernels:
      if not path.startswith(f"block_{i}/"):
        continue
      x = inputs[path.removesuffix("/kernel")]
      stats = seen_stats[path]
      np.testing.assert_allclose(stats.hessian_IxI, x.T @ x, rtol=2e-4, atol=1e-3)
      np.testing.assert_allclose(stats.abs_max_I, np.abs(x).max(0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(stats.abs_mean_I, np.abs(x).mean(0), rtol=1e-4, atol=1e-6)
      assert stats.count == ids.size
      assert 0 < len(stats.samples_MxI) <= 20 + 2
      nearest = np.abs(stats.samples_MxI[:, None, :] - x[None]).max(-1).min(1)
      assert nearest.max() < 1e-4  # each sample is one of the layer's input rows
  # Only the block kernels changed, each halved.
  flat_old = dict(jax.tree_util.tree_leaves_with_path(params))
  for path, leaf in jax.tree_util.tree_leaves_with_path(new):
    name = jax.tree_util.keystr(path)
    factor = 0.5 if "block_" in name and "kernel" in name else 1.0
    np.testing.assert_allclose(leaf, factor * flat_old[path], rtol=1e-6)
