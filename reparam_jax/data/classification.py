"""Which sentence-classification dataset `config.data.name` names, for the classify task.

`sst2` (GLUE SST-2 sentiment, data/sst2.py) or `shakespeare_order` (Tiny
Shakespeare lines as written vs word-shuffled, data/word_order.py).  Each gives
its class names and `{split: (sentences, labels)}` for `train` and `validation`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from reparam_jax.data import sst2, word_order
from reparam_jax.errors import UserError

Splits = dict[str, tuple[list[str], np.ndarray]]

DATASETS = {
    "sst2": (sst2.LABEL_NAMES, sst2.load_sst2),
    word_order.NAME: (word_order.LABEL_NAMES, word_order.load_shakespeare_order),
}


def load_classification(data: ml_collections.ConfigDict) -> tuple[tuple[str, ...], Splits]:
  """(class names, splits) of the dataset `data.name`."""
  if data.name not in DATASETS:
    raise UserError(f"the classify task reads data.name in {', '.join(sorted(DATASETS))}, "
                    f"got {data.name!r}")
  names, load = DATASETS[data.name]
  return names, load(data)
