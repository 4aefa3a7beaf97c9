"""Masked-LM corruption, NSP pairs, input packing, and the MLM objective."""

import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.data.masking import mask_tokens, max_predictions_for
from reparam_jax.data.pipeline import train_loader
from reparam_jax.data.text_pairs import NspPairs, Specials, pack
from reparam_jax.objectives.mlm import mlm_loss
from reparam_jax.objectives.nsp import nsp_loss
from tests.tasks.encoder_helpers import VOCAB, init_params, tiny_encoder, train_few_steps

SP = Specials(pad=0, cls=4, sep=5, mask=6, never_mask=(0, 1, 2, 3, 4, 5, 6), vocab_size=VOCAB)


def _masked_batch(n=4000, seq_len=32, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    rec = pack(rng.integers(7, VOCAB, size=rng.integers(1, 40)), None, seq_len, SP)
    maskable = rec["padding_mask"] & ~np.isin(rec["ids"], SP.never_mask)
    out = mask_tokens(rec["ids"], maskable, rng, mask_id=SP.mask, random_ids=SP.random_ids(),
                      max_predictions=max_predictions_for(seq_len, 0.15))
    rows.append((rec, maskable, out))
  return rows


def test_masking_proportions_and_special_tokens_never_masked():
  rows = _masked_batch()
  chosen = maskable_total = n_mask = n_random = n_kept = 0
  for rec, maskable, out in rows:
    pos = out["mlm_positions"][out["mlm_weights"] > 0]
    assert maskable[pos].all(), "a special token or padding was selected"
    np.testing.assert_array_equal(out["mlm_targets"][:len(pos)], rec["ids"][pos])
    unselected = np.ones(len(rec["ids"]), bool)
    unselected[pos] = False
    np.testing.assert_array_equal(out["ids"][unselected], rec["ids"][unselected])
    new = out["ids"][pos]
    n_mask += (new == SP.mask).sum()
    changed = (new != SP.mask) & (new != rec["ids"][pos])
    n_random += changed.sum()
    assert not np.isin(new[changed], SP.never_mask).any()
    n_kept += (new == rec["ids"][pos]).sum()
    chosen += len(pos)
    maskable_total += maskable.sum()
  assert chosen / maskable_total == pytest.approx(0.15, abs=0.01)
  # 80/10/10; a random replacement equal to the original counts as kept (p = 1/33).
  assert n_mask / chosen == pytest.approx(0.8, abs=0.02)
  assert n_random / chosen == pytest.approx(0.1 * (1 - 1 / 33), abs=0.015)
  assert n_kept / chosen == pytest.approx(0.1 + 0.1 / 33, abs=0.015)


def test_masking_caps_predictions_and_handles_nothing_maskable():
  rng = np.random.default_rng(0)
  ids = np.arange(7, 39, dtype=np.int32)
  out = mask_tokens(ids, np.ones(32, bool), rng, mask_id=6, random_ids=SP.random_ids(),
                    max_predictions=3)
  assert out["mlm_weights"].sum() == 3
  out = mask_tokens(ids, np.zeros(32, bool), rng, mask_id=6, random_ids=SP.random_ids(),
                    max_predictions=3)
  assert out["mlm_weights"].sum() == 0
  np.testing.assert_array_equal(out["ids"], ids)


def test_pack_truncates_longest_first_and_sets_segments():
  rec = pack(np.arange(10, 30), np.arange(30, 34), 12, SP)
  assert rec["ids"].tolist() == [4, 10, 11, 12, 13, 14, 5, 30, 31, 32, 33, 5]
  assert rec["token_types"].tolist() == [0] * 7 + [1] * 5
  assert rec["padding_mask"].all()
  single = pack(np.array([9, 9]), None, 6, SP)
  assert single["ids"].tolist() == [4, 9, 9, 5, 0, 0]
  assert single["padding_mask"].tolist() == [True] * 4 + [False] * 2


def test_nsp_pairs_half_true_next_and_negatives_from_other_documents():
  docs = [[np.array([100 * d + s]) for s in range(1 + d % 4)] for d in range(60)]
  pairs = NspPairs(docs)
  assert len(pairs) == sum(len(d) - 1 for d in docs)
  rng = np.random.default_rng(1)
  labels = []
  for k in range(len(pairs)):
    for _ in range(40):
      a, b, label = pairs.pair(k, rng)
      # BERT's and transformers' convention: 0 = IsNext, 1 = NotNext (random).
      if label == 0:
        assert b[0] == a[0] + 1  # the next segment of the same document
      else:
        assert label == 1 and b[0] // 100 != a[0] // 100  # from another document
      labels.append(label)
  assert np.mean(labels) == pytest.approx(0.5, abs=0.02)


def test_masking_in_the_pipeline_is_resumable():
  """`random_map` masks are a function of (seed, position): a restored iterator repeats them."""
  rng0 = np.random.default_rng(0)
  tokens = [rng0.integers(7, VOCAB, size=8) for _ in range(50)]

  def build(k, rng):
    rec = pack(tokens[int(k)], None, 12, SP)
    maskable = rec["padding_mask"] & ~np.isin(rec["ids"], SP.never_mask)
    return mask_tokens(rec["ids"], maskable, rng, mask_id=SP.mask, random_ids=SP.random_ids(),
                       max_predictions=2)

  it = train_loader(range(50), 8, seed=3, random_transform=build)
  for _ in range(9):  # past one epoch: masks must differ between epochs of a record
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  again = train_loader(range(50), 8, seed=3, random_transform=build)
  again.set_state(state)
  for want in expected:
    got = next(again)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_mlm_and_nsp_losses_match_hand_computation():
  logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
  loss, m = mlm_loss(logits, jnp.array([[0, 1]]), jnp.array([[1.0, 0.0]]))
  assert float(loss) == pytest.approx(-np.log(0.7), rel=1e-5)  # weight-0 slot ignored
  assert float(m["mlm_accuracy"]) == 1.0
  loss, m = nsp_loss(jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]])), jnp.array([1, 0]))
  assert float(loss) == pytest.approx(-(np.log(0.75) + np.log(0.5)) / 2, rel=1e-5)


def test_mlm_and_nsp_heads_train():
  model = tiny_encoder(heads=("mlm", "nsp"), pooling="cls")
  rng = np.random.default_rng(0)
  ids = rng.integers(7, VOCAB, size=(8, 12)).astype(np.int32)
  mask = np.ones((8, 12), bool)
  types = np.zeros((8, 12), np.int32)
  positions = np.tile(np.arange(1, 4, dtype=np.int32), (8, 1))
  targets = np.take_along_axis(ids, positions, 1)
  corrupted = ids.copy()
  np.put_along_axis(corrupted, positions, SP.mask, 1)
  nsp = rng.integers(0, 2, size=8).astype(np.int32)
  params = init_params(model, corrupted, mask, types, positions)
  assert set(params) >= {"mlm_head", "nsp_head", "embed", "block_0"}
  out = model.apply({"params": params}, corrupted, mask, types, positions)
  assert out["mlm_logits"].shape == (8, 3, VOCAB) and out["nsp_logits"].shape == (8, 2)

  def loss_fn(p, key):
    o = model.apply({"params": p}, corrupted, mask, types, positions, train=True,
                    rngs={"dropout": key})
    return (mlm_loss(o["mlm_logits"], targets, jnp.ones((8, 3)))[0]
            + nsp_loss(o["nsp_logits"], nsp)[0])

  before, after = train_few_steps(loss_fn, params)
  assert after < 0.7 * before
