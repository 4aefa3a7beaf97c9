"""Starting a reparameterized run from a dense checkpoint (`Reparam.adopt_dense`), and
`delta` (W = W₀ + Δ) with L2 on θ as L2-SP: the penalty measures the distance from W₀."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from reparam_jax import reparam
from reparam_jax.config.base import base_config
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.regularizers import Regularizer
from reparam_jax.reparam import Reparam

MODEL = dict(num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, vocab_size=11, max_len=8,
             causal=True)
QV = r"block_\d+/attn/(query|value)/kernel"
KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"


def _params(rules=(), seed=0):
  model = Transformer(transformer_config(MODEL))
  if rules:
    model = reparam.wrap(model, ml_collections.ConfigDict(dict(rules=rules)))
  v = model.init(jax.random.key(seed), np.zeros((1, 8), np.int32), train=False)
  return nn.meta.unbox(v["params"])


def test_a_dense_checkpoint_becomes_lora_theta_at_the_start():
  dense = _params(seed=1)  # "the pretrained model"
  rules = ((QV, "lora(rank=2, alpha=4)"),)
  rp = Reparam.from_config(ml_collections.ConfigDict(dict(rules=rules)))
  adopted = rp.adopt_dense(dense, _params(rules), jax.random.key(0))
  q = adopted["block_1"]["attn"]["query"]["kernel"]
  np.testing.assert_array_equal(q["base"], dense["block_1"]["attn"]["query"]["kernel"])
  assert q["lora_a"].shape == (16, 2) and not np.any(q["lora_b"])
  # Weights no rule selects stay exactly the checkpoint's, and the view is the dense model.
  np.testing.assert_array_equal(adopted["block_0"]["attn"]["key"]["kernel"],
                                dense["block_0"]["attn"]["key"]["kernel"])
  view = rp.to_dense(adopted)
  for path in ("block_0/attn/value/kernel", "block_1/mlp/fc_in/kernel", "embed/token/embedding"):
    a, b = view, dense
    for k in path.split("/"):
      a, b = a[k], b[k]
    np.testing.assert_allclose(a, b, atol=1e-6)
  # θ already in the checkpoint (a LoRA run's) is kept as it is.
  again = rp.adopt_dense(adopted, _params(rules), jax.random.key(0))
  for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(adopted)):
    np.testing.assert_array_equal(x, y)


def test_delta_with_l2_on_theta_is_l2sp():
  dense = _params(seed=1)
  rules = ((KERNELS, "delta"),)
  rcfg = ml_collections.ConfigDict(dict(rules=rules))
  rp = Reparam.from_config(rcfg)
  theta = rp.adopt_dense(dense, _params(rules), jax.random.key(0))
  reg = base_config().reg
  reg.rules = ((KERNELS, "l2(1.0, on=theta)"),)
  l2sp = Regularizer(reg, rp.plan)
  total, _ = l2sp.penalty(theta)
  assert float(total) == 0.0  # at W = W₀, however large W₀ is
  rng = np.random.default_rng(0)
  moved, want = jax.tree.map(lambda x: x, theta), 0.0
  for b in ("block_0", "block_1"):
    d = rng.normal(size=(16, 32)).astype(np.float32)
    moved[b]["mlp"]["fc_in"]["kernel"]["delta"] = d
    want += 0.5 * float((d ** 2).sum())
  total, _ = l2sp.penalty(moved)
  np.testing.assert_allclose(float(total), want, rtol=1e-5)  # ½‖W − W₀‖²
  w = rp.to_dense(moved)["block_0"]["mlp"]["fc_in"]["kernel"]
  np.testing.assert_allclose(w, dense["block_0"]["mlp"]["fc_in"]["kernel"]
                             + moved["block_0"]["mlp"]["fc_in"]["kernel"]["delta"], atol=1e-6)
  # Only Δ trains and decays: W₀ is frozen.
  mask = rp.trainable_mask(moved)["block_0"]["mlp"]["fc_in"]["kernel"]
  assert mask["delta"] is True and mask["base"] is False


def test_trainable_count_of_a_lora_run_is_the_adapters():
  from reparam_jax.training import freezing

  rules = ((QV, "lora(rank=2, alpha=4)"), (r".*", "frozen"))
  rp = Reparam.from_config(ml_collections.ConfigDict(dict(rules=rules)))
  params = _params(rules)
  n = freezing.count_trainable(params, rp.trainable_mask(params))
  assert n == 2 * 2 * (16 * 2 + 2 * 16)  # 2 blocks × (query, value) × (A + B)
  assert freezing.count_trainable(params, None) == sum(x.size for x in jax.tree.leaves(params))
  # In bytes (what done.json's params/frozen_bytes subtracts from the total): float32 A, B.
  assert freezing.count_trainable(params, rp.trainable_mask(params), "nbytes") == 4 * n
