"""Sequence classification: cross-entropy on the head's logits, and exact eval counts.

Eval sums the confusion matrix over batches (`confusion_counts`), so
accuracy and per-class precision/recall/F1 computed from it afterwards are
exact over the split, whatever the batch size or number of hosts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits_BxC: jax.Array, labels_B: jax.Array,
                        weights_B: jax.Array | None = None,
                        label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy (optionally label-smoothed) and accuracy over weighted rows."""
  logits = logits_BxC.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels_B, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  losses = optax.softmax_cross_entropy(logits, targets)
  w = jnp.ones_like(losses) if weights_B is None else weights_B.astype(jnp.float32)
  count = jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(logits, -1) == labels_B).astype(jnp.float32)
  return (losses * w).sum() / count, {"accuracy": (correct * w).sum() / count}


def confusion_counts(logits_BxC: jax.Array, labels_B: jax.Array,
                     weights_B: jax.Array) -> jax.Array:
  """`[C, C]` counts: row = true class, column = predicted class (weighted rows only)."""
  num_classes = logits_BxC.shape[-1]
  pred = jax.nn.one_hot(jnp.argmax(logits_BxC, -1), num_classes)
  true = jax.nn.one_hot(labels_B, num_classes) * weights_B.astype(jnp.float32)[:, None]
  return true.T @ pred
