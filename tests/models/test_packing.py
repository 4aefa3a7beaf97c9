"""Packed rows: with segment ids and per-document positions, each document computes
what it computes alone (causal and bidirectional, learned positions and RoPE)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from reparam_jax.models import Transformer, TransformerConfig


@pytest.mark.parametrize("causal,rope", [(True, False), (True, True), (False, False)])
def test_packed_row_equals_each_document_alone(causal: bool, rope: bool) -> None:
  cfg = TransformerConfig(vocab_size=31, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=16, causal=causal, rope=rope)
  model = Transformer(cfg)
  rng = np.random.default_rng(0)
  docs = [rng.integers(1, 31, n).astype(np.int32) for n in (5, 7, 3)]
  ids = np.zeros((1, 16), np.int32)
  seg = np.zeros((1, 16), np.int32)
  pos = np.zeros((1, 16), np.int32)
  start = 0
  for s, d in enumerate(docs, start=1):
    ids[0, start:start + len(d)] = d
    seg[0, start:start + len(d)] = s
    pos[0, start:start + len(d)] = np.arange(len(d))
    start += len(d)
  params = model.init(jax.random.key(0), ids)
  packed = model.apply(params, ids, segment_ids_BxL=seg, positions_BxL=pos)["hidden"][0]
  unmasked = model.apply(params, ids, positions_BxL=pos)["hidden"][0]
  start = 0
  for d in docs:
    alone = model.apply(params, d[None])["hidden"][0]
    np.testing.assert_allclose(packed[start:start + len(d)], alone, rtol=1e-5, atol=1e-5)
    start += len(d)
  # Without the segment ids the later documents see the earlier ones: the test can fail.
  assert not np.allclose(unmasked[5:12], packed[5:12], atol=1e-3)
