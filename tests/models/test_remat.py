"""`model.remat`: the same loss and gradients as without rematerialisation."""

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.models import Transformer, transformer_config


def _loss_and_grads(remat: bool):
  model = Transformer(transformer_config(dict(
      vocab_size=50, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=16,
      causal=True, remat=remat, residual_dropout=0.1)))
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  params = model.init(jax.random.key(0), ids)["params"]

  def loss(p):
    out = model.apply({"params": p}, ids, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.mean(out["logits"] ** 2)
  return jax.value_and_grad(loss)(params)


def test_remat_changes_nothing_but_memory():
  (l0, g0), (l1, g1) = _loss_and_grads(False), _loss_and_grads(True)
  # Remat recomputes the same operations, but XLA may fuse the two programs
  # differently, and float32 sums in another order differ in the last bits (seen:
  # 1 ulp on jax 0.10.2 on one CPU, bit-equal on others): equal within rounding.
  np.testing.assert_allclose(float(l1), float(l0), rtol=4 * np.finfo(np.float32).eps)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
