"""Per-example adapter selection: a stack of adapters, one index per batch row, one program."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import AdapterBank, LoRAKernel, Reparam
from reparam_jax.reparam.adapters import extract_adapter, row_index, stack_adapters
from reparam_jax.reparam.adapters.select import RowKernel

CFG = TransformerConfig(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                        max_len=8)
IDS_4x8 = (jnp.arange(32, dtype=jnp.int32).reshape(4, 8) * 7) % 32
RC = ml_collections.ConfigDict({"rules": ((r"block_\d+/(attn|mlp)/\w+/kernel",
                                            "lora(rank=2, alpha=4)"),)})
NAMES = ("math", "code", "chat")


def setup():
  model = Transformer(CFG)
  dense = nn.meta.unbox(model.init(jax.random.key(0), IDS_4x8)["params"])
  rp = Reparam.from_config(RC)
  params = rp.from_dense(dense)
  bank = AdapterBank.create(params, rp)
  for i, name in enumerate(NAMES):
    ad = {p: 0.3 * jax.random.normal(jax.random.key(10 * i + j), v.shape)
          for j, (p, v) in enumerate(sorted(extract_adapter(params, rp).items()))}
    bank = bank.add(name, ad)
  return model, rp, params, bank


def test_each_row_uses_its_adapter_in_one_compiled_program():
  model, rp, params, bank = setup()
  stacked, rp_s = stack_adapters(bank, NAMES, params)
  assert stacked["block_0"]["attn"]["query"]["kernel"]["lora_a"].shape == (3, 16, 2)
  wrapped, wrapped_s = rp.wrap(model), rp_s.wrap(model)
  traces = []

  @jax.jit
  def run(p, idx, ids):
    traces.append(1)
    return wrapped_s.apply({"params": p, **row_index(idx)}, ids)["logits"]

  index = np.array([0, 2, 1, 0])
  y = np.asarray(run(stacked, index, IDS_4x8))
  for row, i in enumerate(index):
    alone = wrapped.apply({"params": bank.switch(NAMES[i]).params(params)},
                          IDS_4x8[row:row + 1])["logits"]
    np.testing.assert_allclose(y[row], np.asarray(alone)[0], atol=1e-5)
  # Rows 0 and 3 share adapter 0 but not inputs; rows really differ by adapter.
  other = np.asarray(run(stacked, np.array([1, 1, 1, 1]), IDS_4x8))
  assert np.abs(other[0] - y[0]).max() > 1e-3
  np.testing.assert_allclose(other[2], y[2], atol=1e-6)  # row 2 used adapter 1 both times
  assert len(traces) == 1  # a new mix of adapters does not recompile


def test_flattened_rows_follow_their_example():
  k = jax.random.split(jax.random.key(0), 4)
  base = jax.random.normal(k[0], (6, 5))
  a_NxIxR, b_NxRxO = jax.random.normal(k[1], (3, 6, 2)), jax.random.normal(k[2], (3, 2, 5))
  node = Reparam.from_config({"rules": (("w", "lora(rank=2, alpha=2)"),)}).plan.rules[0].node
  kern = RowKernel({"lora_a": a_NxIxR, "lora_b": b_NxRxO}, {"base": base}, None,
                   node=node).select_rows(jnp.array([2, 0]))
  x_BxLxI = jax.random.normal(k[3], (2, 4, 6))
  y = kern.left_matmul(x_BxLxI)
  y_flat = kern.left_matmul(x_BxLxI.reshape(8, 6))  # rows flattened [B·L, d_in]
  np.testing.assert_allclose(y_flat.reshape(2, 4, 5), y, atol=1e-6)
  for b, i in enumerate([2, 0]):  # numpy: x (W0 + s A_i B_i)
    w = np.asarray(base) + np.asarray(a_NxIxR[i]) @ np.asarray(b_NxRxO[i])
    np.testing.assert_allclose(y[b], np.asarray(x_BxLxI[b]) @ w, rtol=1e-5, atol=1e-5)
  ref = LoRAKernel(base, a_NxIxR[2], b_NxRxO[2], 1.0).left_matmul(x_BxLxI[0])
  np.testing.assert_allclose(y[0], ref, atol=1e-6)


def test_multi_task_gradient_reaches_only_the_adapters_used():
  model, _rp, params, bank = setup()
  stacked, rp_s = stack_adapters(bank, NAMES, params)
  wrapped_s = rp_s.wrap(model)

  def loss(p):
    y = wrapped_s.apply({"params": p, **row_index(jnp.array([0, 0, 2, 2]))}, IDS_4x8)
    return jnp.mean(y["logits"] ** 2)

  g = jax.grad(loss)(stacked)["block_1"]["mlp"]["fc_in"]["kernel"]
  norms = np.abs(np.asarray(g["lora_a"])).sum((1, 2))
  assert norms[0] > 0 and norms[2] > 0 and norms[1] == 0
  assert not np.asarray(g["base"]).any()  # the base stays frozen
  mask = rp_s.trainable_mask(stacked)["block_1"]["mlp"]["fc_in"]["kernel"]
  assert mask == {"base": False, "lora_a": True, "lora_b": True}


def test_stack_errors():
  model, _rp, params, bank = setup()
  with pytest.raises(UserError, match="unknown adapter 'nope'; known: math, code, chat"):
    stack_adapters(bank, ["math", "nope"], params)
  stacked, rp_s = stack_adapters(bank, NAMES, params)
  with pytest.raises(UserError, match="pass the per-row index"):
    rp_s.wrap(model).apply({"params": stacked}, IDS_4x8)
  with pytest.raises(UserError, match="index has 3 rows but the layer input has 4"):
    rp_s.wrap(model).apply({"params": stacked, **row_index([0, 1, 2])}, IDS_4x8)
