"""InfoNCE between two views of each example, with in-batch negatives.

SimCSE (Gao et al. 2021): the two views are the same sentence encoded twice
with different dropout masks; the positive for row i of view 1 is row i of
view 2, every other row of view 2 is a negative.  Cosine similarity divided
by the temperature τ (0.05 in SimCSE) is the logit.  Symmetrised over both
directions, so neither view is privileged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def info_nce(z1_BxD: jax.Array, z2_BxD: jax.Array, temperature: float = 0.05,
             weights_B: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE loss and the top-1 retrieval accuracy of the positive."""
  def normalise(z):
    z = z.astype(jnp.float32)
    return z * jax.lax.rsqrt(jnp.maximum(jnp.square(z).sum(-1, keepdims=True), 1e-12))

  sim_BxB = normalise(z1_BxD) @ normalise(z2_BxD).T / temperature
  B = sim_BxB.shape[0]
  w = jnp.ones((B,), jnp.float32) if weights_B is None else weights_B.astype(jnp.float32)
  # Padding rows (weight 0) must not act as negatives either.
  sim_BxB = jnp.where((w[None, :] > 0) & (w[:, None] > 0), sim_BxB, -1e9)
  labels = jnp.arange(B)
  loss_B = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(sim_BxB, labels)
                  + optax.softmax_cross_entropy_with_integer_labels(sim_BxB.T, labels))
  count = jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(sim_BxB, -1) == labels).astype(jnp.float32)
  return (loss_B * w).sum() / count, {"contrastive_accuracy": (correct * w).sum() / count}
