"""FLOP accounting against hand counts, and the peak table."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from reparam_jax import reparam
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.perf import flops, peaks

# L=2, D=8, H=2 (head dim 4), M=16, V=11, context T=5, tied output layer.
CFG = TransformerConfig(vocab_size=11, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=16,
                        max_len=5)
T = 5


def abstract_params(model: nn.Module):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32)))[
      "params"]


def test_dense_hand_count():
  # Per layer: q, k, v, out 4·8·8 = 256; fc_in + fc_out 2·8·16 = 256.  Two
  # layers 1024, tied output layer 8·11 = 88: N = 1112.
  # 6N = 6672; attention 12·L·H·Q·T = 12·2·8·5 = 960.
  count = flops.model_flops(CFG, T)
  assert count.matmul_params == 1112
  assert count.attention_flops == 960
  assert count.per_token == 6672 + 960
  halved = flops.model_flops(CFG, T, causal_halved=True)
  assert halved.per_token == 6672 + 480


def test_params_tree_matches_hand_count():
  # The tree count sees biases, norms and the position table but must ignore them.
  count = flops.model_flops(CFG, T, abstract_params(Transformer(CFG)))
  assert count.matmul_params == 1112


def test_untied_head_counts_lm_head_kernel():
  cfg = TransformerConfig(**{**CFG.__dict__, "tie_embeddings": False})
  assert flops.model_flops(cfg, T, abstract_params(Transformer(cfg))).matmul_params == 1112


def test_encoder_without_head_and_with_pooler():
  # No logits layer; the pooler runs once per sequence and is left out.
  cfg = TransformerConfig(**{**CFG.__dict__, "causal": False, "pooler": True})
  assert flops.model_flops(cfg, T).matmul_params == 1024
  assert flops.model_flops(cfg, T, abstract_params(Transformer(cfg))).matmul_params == 1024


def test_lowrank_counts_executed_factored_matmuls():
  # rank 2: an 8×8 kernel costs 2·(8+8) = 32 MACs, 8×16 and 16×8 cost 2·24 = 48.
  # Per layer 4·32 + 2·48 = 224; two layers 448; head 88 → N = 536.
  rc = ml_collections.ConfigDict(dict(rules=((r"block_\d+/(attn|mlp)/\w+/kernel",
                                              "lowrank(rank=2)"),)))
  wrapped = reparam.wrap(Transformer(CFG), rc)
  params = nn.meta.unbox(abstract_params(wrapped))
  count = flops.model_flops(CFG, T, params, rc)
  assert count.matmul_params == 536
  assert count.per_token == 6 * 536 + 960


def test_mfu_arithmetic():
  assert flops.mfu(1e6, 2e3, 4e9) == pytest.approx(0.5)
  assert flops.achieved_flops_per_device(1e6, 2e3) == pytest.approx(2e9)


@pytest.mark.parametrize("kind,name", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"), ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H200", "NVIDIA H200"), ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
    ("TPU v4", "TPU v4"), ("TPU v5 lite", "TPU v5e"), ("TPU v5p", "TPU v5p"),
    ("TPU v6 lite", "TPU v6e")])
def test_published_peaks(kind, name):
  assert peaks.published_peak(kind)[0] == name


def test_cpu_peak_is_measured_or_overridden():
  assert peaks.published_peak("cpu") is None
  value, source = peaks.device_peak_flops(override=123.0)
  assert (value, source) == (123.0, "config.perf.peak_flops")
  measured = peaks.measure_matmul_flops(n=128, repeats=2)
  assert 1e7 < measured < 1e14  # some real number of FLOP/s, not a placeholder


def test_shared_block_counts_once_per_layer_it_runs_in():
  # One `block_shared` runs L = 2 times: the same matmuls as two separate blocks.
  cfg = TransformerConfig(**{**CFG.__dict__, "share_layers": True})
  params = abstract_params(Transformer(cfg))
  assert "block_shared" in params
  assert flops.model_flops(cfg, T, params).matmul_params == 1112


def test_layer_dims_attention_uses_each_layers_width():
  # Widths 8 and 4 (2 heads of 4 and of 2): 12·T·(8 + 4) = 12·5·12 = 720, not 12·L·8·T = 960.
  cfg = TransformerConfig(**{**CFG.__dict__, "layer_dims": (8, 4)})
  assert flops.model_flops(cfg, T, abstract_params(Transformer(cfg))).attention_flops == 720


def test_mlm_head_counts_its_transform_and_tied_decoder_on_masked_positions():
  # Encoder N = 1024 (no causal output layer).  The MLM head runs on P = 2 of T = 5
  # positions: its 8×8 transform and the tied 8×11 decoder, (64 + 88)·2/5 = 60.8.
  # The NSP and classifier heads see one pooled token per sequence: not per-token FLOPs.
  from reparam_jax.models.heads import EncoderWithHeads
  cfg = TransformerConfig(**{**CFG.__dict__, "causal": False})
  model = EncoderWithHeads(cfg, heads=("mlm", "nsp", "classifier"))
  ids = jnp.zeros((1, T), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, jnp.ones((1, T), bool),
                                             jnp.zeros((1, T), jnp.int32),
                                             jnp.zeros((1, 2), jnp.int32)))["params"]
  count = flops.model_flops(cfg, T, params, mlm_positions=2)
  assert count.matmul_params == pytest.approx(1024 + 60.8)
  assert count.per_token == round(6 * 1084.8) + 960
