"""Masked language modelling (Devlin et al. 2019): cross-entropy on masked positions only.

The data pipeline (`reparam_jax/data/masking.py`) picks the positions and
corrupts the input; the model predicts the original token at each gathered
position.  Padding slots of the fixed-size position list carry weight 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def mlm_loss(logits_BxPxV: jax.Array, targets_BxP: jax.Array,
             weights_BxP: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over the real masked positions, and their accuracy."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxPxV.astype(jnp.float32), targets_BxP)
  w = weights_BxP.astype(jnp.float32)
  count = jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(logits_BxPxV, -1) == targets_BxP).astype(jnp.float32)
  return (losses * w).sum() / count, {"mlm_accuracy": (correct * w).sum() / count}


def mlm_sums(logits_BxPxV: jax.Array, targets_BxP: jax.Array,
             weights_BxP: jax.Array) -> dict[str, jax.Array]:
  """Summed loss, correct predictions and count, for exact eval over a split."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxPxV.astype(jnp.float32), targets_BxP)
  w = weights_BxP.astype(jnp.float32)
  correct = (jnp.argmax(logits_BxPxV, -1) == targets_BxP).astype(jnp.float32)
  return {"mlm_loss_sum": (losses * w).sum(), "mlm_correct": (correct * w).sum(),
          "mlm_count": w.sum()}
