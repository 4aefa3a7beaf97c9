"""A second binary classification task from Tiny Shakespeare: is this line in its word order?

Built for the incremental-learning experiment (docs/incremental.md), which needs
a task unrelated to SST-2 sentiment from data the project already has.  Each
line of Tiny Shakespeare with at least `MIN_WORDS` whitespace-separated words is
shown once, either as written (label 1, "original") or with its words randomly
permuted (label 0, "shuffled").  Words keep their attached punctuation.  The
splits are the LM builder's (`tfds_datasets.TinyShakespeareLM`: the first 90% of
the characters are train, the rest validation), cut into lines, as
`data/lines.py` does.  Within each split exactly half the lines (rounded down)
are shuffled, chosen by a fixed seed, so the data never depends on
`config.seed`; a permutation that reproduces the line (e.g. repeated words) is
redrawn, and a line no permutation can change is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

from reparam_jax.data import raw_files, tfds_builders
from reparam_jax.data.pipeline import prepare_once

NAME = "shakespeare_order"
LABEL_NAMES = ("shuffled", "original")
MIN_WORDS = 4
SEED = 20  # issue 20; fixed so every run sees the same dataset
SPLITS = ("train", "validation")


def order_examples(lines: Sequence[str], seed: int) -> tuple[list[str], np.ndarray]:
  """(sentences, labels) for `lines`: half of the eligible lines shuffled (label 0)."""
  words = [line.split() for line in lines]
  # A line whose words are all equal has no second order: nothing to classify.
  words = [w for w in words if len(w) >= MIN_WORDS and len(set(w)) > 1]
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(len(words)) % 2).astype(np.int32)  # 50/50
  sentences = []
  for w, label in zip(words, labels):
    if label == 0:
      shuffled = w
      while shuffled == w:  # a permutation equal to the original would be mislabelled
        shuffled = [w[i] for i in rng.permutation(len(w))]
      w = shuffled
    sentences.append(" ".join(w))
  return sentences, labels


def load_shakespeare_order(data: ml_collections.ConfigDict
                           ) -> dict[str, tuple[list[str], np.ndarray]]:
  """`{split: (sentences, labels)}` for `train` and `validation` (see the module docstring)."""
  builder = prepare_once(tfds_builders.load_builder, "tiny_shakespeare",
                         raw_dir=raw_files.raw_dir_from(data.raw_dir),
                         tfds_dir=data.tfds_dir or None)
  source = builder.as_data_source()
  out = {}
  for i, split in enumerate(SPLITS):
    text = source[split][0]["text"]
    text = text.decode("utf-8") if isinstance(text, bytes) else text
    out[split] = order_examples(text.split("\n"), seed=SEED * 10 + i)
  return out
