"""The word-order task (data/word_order.py): labels are what the docstring says they are."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from reparam_jax.data import word_order
from reparam_jax.data.classification import load_classification
from reparam_jax.errors import UserError

LINES = [f"line {i} has some words here" for i in range(40)] + [
    "too short", "", "a a a a a",  # dropped: < 4 words; no second order
    "to be or not to be"]


def test_labels_half_shuffled_and_shuffles_are_true_permutations():
  sentences, labels = word_order.order_examples(LINES, seed=3)
  originals = [l for l in LINES if len(l.split()) >= 4 and len(set(l.split())) > 1]
  assert len(sentences) == len(originals) == 41
  assert labels.sum() == len(labels) // 2  # exactly half as written (label 1), rounded down
  for s, orig, y in zip(sentences, originals, labels):
    if y == 1:
      assert s == orig
    else:
      assert sorted(s.split()) == sorted(orig.split()) and s.split() != orig.split()


def test_deterministic_and_seed_dependent():
  a = word_order.order_examples(LINES, seed=3)
  b = word_order.order_examples(LINES, seed=3)
  c = word_order.order_examples(LINES, seed=4)
  assert a[0] == b[0] and np.array_equal(a[1], b[1])
  assert a[0] != c[0]


def test_real_splits_by_position(raw_data_dir, tfds_dir):
  data = ml_collections.ConfigDict({"name": "shakespeare_order", "raw_dir": raw_data_dir,
                                    "tfds_dir": tfds_dir})
  names, splits = load_classification(data)
  assert names == ("shuffled", "original")
  with open(f"{raw_data_dir}/tinyshakespeare/input.txt", encoding="utf-8") as f:
    text = f.read()
  cut = int(len(text) * 0.9)  # the LM builder's split by character position
  part = {"train": text[:cut], "validation": text[cut:]}
  for split, (sentences, labels, pairs) in splits.items():
    assert pairs is None
    bags = {tuple(sorted(l.split())) for l in part[split].split("\n")}
    assert all(tuple(sorted(s.split())) in bags for s in sentences), split
    assert abs(labels.mean() - 0.5) < 1e-3
    kept = [l for l in part[split].split("\n") if len(l.split()) >= 4 and len(set(l.split())) > 1]
    assert len(sentences) == len(kept)
  assert (len(splits["train"][0]), len(splits["validation"][0])) == (21729, 2407)
  # Deterministic: the same dataset again.
  again = load_classification(data)[1]
  assert again["validation"][0] == splits["validation"][0]


def test_unknown_dataset_is_a_user_error():
  with pytest.raises(UserError, match="data.name in shakespeare_order, sst2, got 'imdb'"):
    load_classification(ml_collections.ConfigDict({"name": "imdb"}))
