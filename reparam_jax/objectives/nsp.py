"""Next-sentence prediction (Devlin et al. 2019): is segment B the true successor of A?

Labels follow BERT and Hugging Face's `BertForPreTraining`: 0 (`IS_NEXT`) =
B follows A in the corpus, 1 (`IS_RANDOM`) = B is a random segment, so an
imported or exported `cls.seq_relationship` head means the same thing here and
in `transformers` (the pair construction lives in `reparam_jax/data/text_pairs.py`).
Rows with weight 0 (padding rows of an eval batch) do not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IS_NEXT, IS_RANDOM = 0, 1  # BERT's (and transformers') NSP label convention


def is_next_probability(logits_Bx2: jax.Array) -> jax.Array:
  """P(B follows A) from an NSP head's two logits."""
  return jax.nn.softmax(logits_Bx2.astype(jnp.float32), axis=-1)[..., IS_NEXT]


def nsp_loss(logits_Bx2: jax.Array, labels_B: jax.Array,
             weights_B: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_Bx2.astype(jnp.float32),
                                                           labels_B)
  w = jnp.ones_like(losses) if weights_B is None else weights_B.astype(jnp.float32)
  count = jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(logits_Bx2, -1) == labels_B).astype(jnp.float32)
  return (losses * w).sum() / count, {"nsp_accuracy": (correct * w).sum() / count}
