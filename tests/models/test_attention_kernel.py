"""`model.attention`: the cuDNN option computes the same attention as XLA's.

Off a GPU the "cudnn" setting keeps XLA's kernel but takes the causal-mode
path (no [L, L] mask handed down, `is_causal` instead), so these tests check
that path's masking everywhere; bench/gpu_train.py compares the two kernels
on a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.models import Transformer, transformer_config
from reparam_jax.models.seq2seq import EncoderDecoder

_TINY = dict(vocab_size=50, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=16)


def _logits_and_grads(attention: str, **extra):
  model = Transformer(transformer_config(dict(_TINY, causal=True, attention=attention, **extra)))
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  params = model.init(jax.random.key(0), ids)["params"]

  def loss(p):
    out = model.apply({"params": p}, ids, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.mean(out["logits"] ** 2), out["logits"]
  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return logits, grads


@pytest.mark.parametrize("extra", [{}, {"attention_dropout": 0.1}, {"scan_layers": True}],
                         ids=["fused", "dropout", "scanned"])
def test_cudnn_setting_masks_like_xla(extra):
  (l0, g0), (l1, g1) = _logits_and_grads("xla", **extra), _logits_and_grads("cudnn", **extra)
  np.testing.assert_allclose(np.asarray(l0), np.asarray(l1), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_cudnn_setting_is_causal():
  """Changing a later token leaves earlier positions' logits alone."""
  model = Transformer(transformer_config(dict(_TINY, causal=True, attention="cudnn")))
  ids = jax.random.randint(jax.random.key(1), (1, 8), 0, 50)
  params = model.init(jax.random.key(0), ids)
  changed = ids.at[0, 5].set((ids[0, 5] + 1) % 50)
  a, b = model.apply(params, ids)["logits"], model.apply(params, changed)["logits"]
  np.testing.assert_array_equal(np.asarray(a[0, :5]), np.asarray(b[0, :5]))
  assert not np.allclose(np.asarray(a[0, 5:]), np.asarray(b[0, 5:]))


def test_encoder_decoder_encoder_stays_bidirectional():
  """The shared config says causal, yet the encoder of an encoder–decoder sees every token."""
  cfg = transformer_config(dict(_TINY, causal=True, attention="cudnn"))
  model = EncoderDecoder(cfg)
  src = jax.random.randint(jax.random.key(1), (1, 8), 0, 50)
  params = model.init(jax.random.key(0), src, src)
  memory = model.apply(params, src, method=EncoderDecoder.encode)
  changed = src.at[0, 7].set((src[0, 7] + 1) % 50)
  memory2 = model.apply(params, changed, method=EncoderDecoder.encode)
  assert not np.allclose(np.asarray(memory[0, 0]), np.asarray(memory2[0, 0]))


def test_unknown_kernel_is_refused():
  with pytest.raises(ValueError, match="attention="):
    transformer_config(dict(_TINY, attention="flash"))
