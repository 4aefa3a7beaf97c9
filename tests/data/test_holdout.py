"""The held-out split carved from the training data for tuning (data/classification.py):
disjoint from what trains, the same whatever the seed, and the split that is evaluated."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from reparam_jax.config.base import base_config
from reparam_jax.data import lm_text
from reparam_jax.data.classification import holdout_indices, load_classification
from reparam_jax.errors import UserError
from tests.helpers import tiny_labelled_corpus


def _data(folder, **overrides) -> ml_collections.ConfigDict:
  data = base_config().data
  data.update({k.split(".", 1)[1]: v
               for k, v in tiny_labelled_corpus(folder, train=200, dev=50).items()})
  data.update(overrides)
  return data


def test_holdout_is_disjoint_from_train_and_replaces_the_evaluated_split(tmp_path) -> None:
  _, plain = load_classification(_data(tmp_path))
  _, carved = load_classification(_data(tmp_path, holdout_examples=30))
  _, tuned = load_classification(_data(tmp_path, holdout_examples=30, evaluate_on="holdout"))
  train, train_labels, _ = plain["train"]
  assert len(carved["train"][0]) == len(tuned["train"][0]) == 170
  # Without evaluate_on the reported split is still the one evaluated.
  assert carved["validation"][0] == plain["validation"][0]
  assert tuned["validation"][0] != plain["validation"][0]
  assert len(tuned["validation"][0]) == 30
  keep, held = holdout_indices(200, 30)
  assert not set(keep) & set(held) and sorted([*keep, *held]) == list(range(200))
  # The held-out examples are the training examples at those indices, labels included,
  # and what trains is the rest, in the source's order.
  assert tuned["validation"][0] == [train[i] for i in held]
  np.testing.assert_array_equal(tuned["validation"][1], train_labels[held])
  assert tuned["train"][0] == [train[i] for i in keep]
  np.testing.assert_array_equal(tuned["train"][1], train_labels[keep])


def test_the_split_does_not_depend_on_the_seed_and_is_not_a_prefix(tmp_path) -> None:
  a = load_classification(_data(tmp_path, holdout_examples=30, evaluate_on="holdout"))[1]
  data = _data(tmp_path, holdout_examples=30, evaluate_on="holdout")
  data.unlock()
  data.seed = 5  # not read: only the fixed HOLDOUT_SEED decides
  b = load_classification(data)[1]
  assert a["validation"][0] == b["validation"][0] and a["train"][0] == b["train"][0]
  _, held = holdout_indices(200, 30)
  assert held.tolist() != list(range(30)) and held.tolist() != list(range(170, 200))
  # More held out keeps the earlier ones (a prefix of one permutation).
  assert set(holdout_indices(200, 30)[1]) <= set(holdout_indices(200, 60)[1])


@pytest.mark.parametrize("overrides,message", [
    ({"evaluate_on": "holdout"}, "data.holdout_examples=0"),
    ({"holdout_examples": 200, "evaluate_on": "holdout"}, "leaves no training examples"),
    ({"holdout_examples": -1}, "non-negative integer"),
    ({"evaluate_on": "test"}, "data.evaluate_on='test'"),
])
def test_bad_combinations_are_one_line_errors(tmp_path, overrides, message) -> None:
  with pytest.raises(UserError, match=message) as e:
    load_classification(_data(tmp_path, **overrides))
  assert "\n" not in str(e.value)


def test_a_builtin_dataset_gets_the_same_holdout(raw_data_dir, tfds_dir) -> None:
  data = base_config().data
  data.update(name="shakespeare_order", raw_dir=raw_data_dir, tfds_dir=tfds_dir,
              holdout_examples=500, evaluate_on="holdout")
  _, tuned = load_classification(data)
  data.update(holdout_examples=0, evaluate_on="validation")
  _, plain = load_classification(data)
  _, held = holdout_indices(len(plain["train"][0]), 500)
  assert tuned["validation"][0] == [plain["train"][0][i] for i in held]
  assert len(tuned["train"][0]) == len(plain["train"][0]) - 500
  assert len(tuned["validation"][0]) == 500 and "validation" in plain


def test_lm_text_holds_out_the_end_of_the_training_text(raw_data_dir, tfds_dir) -> None:
  data = base_config().data
  data.update(raw_dir=raw_data_dir, tfds_dir=tfds_dir)
  plain = lm_text.load_splits(data)
  data.update(holdout_examples=1000)
  carved = lm_text.load_splits(data)
  assert carved["train"] == plain["train"][:-1000]
  assert carved["validation"] == plain["validation"]  # still the reported split
  data.update(evaluate_on="holdout")
  tuned = lm_text.load_splits(data)
  assert tuned["train"] == carved["train"] and tuned["validation"] == plain["train"][-1000:]
  data.update(holdout_examples=len(plain["train"]))
  with pytest.raises(UserError, match="leaves no training text"):
    lm_text.load_splits(data)
