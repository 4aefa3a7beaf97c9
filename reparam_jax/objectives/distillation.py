"""Knowledge distillation losses.

* `kd_loss`: Hinton et al. (2015): KL(softmax(t/T) ‖ softmax(s/T)) · T².  The
  T² keeps the gradient scale independent of T, so the weight β need not be
  retuned when T changes.  At T = 1 with a one-hot teacher it equals the
  cross-entropy against the teacher's argmax.
* `hidden_mse`: TinyBERT's (Jiao et al. 2020) hidden-state loss,
  MSE(h_s W, h_t) over real tokens, where the caller applies the learned
  projection W when student and teacher widths differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kd_loss(student_logits_BxC: jax.Array, teacher_logits_BxC: jax.Array, temperature: float,
            weights_B: jax.Array | None = None) -> jax.Array:
  """Mean over rows of T²·KL(p_teacher ‖ p_student) at temperature T."""
  t = jax.lax.stop_gradient(teacher_logits_BxC.astype(jnp.float32)) / temperature
  s = student_logits_BxC.astype(jnp.float32) / temperature
  log_pt, log_ps = jax.nn.log_softmax(t, -1), jax.nn.log_softmax(s, -1)
  kl_B = (jnp.exp(log_pt) * (log_pt - log_ps)).sum(-1)
  w = jnp.ones_like(kl_B) if weights_B is None else weights_B.astype(jnp.float32)
  return temperature ** 2 * (kl_B * w).sum() / jnp.maximum(w.sum(), 1.0)


def hidden_mse(student_BxLxD: jax.Array, teacher_BxLxD: jax.Array,
               mask_BxL: jax.Array) -> jax.Array:
  """Mean squared error per feature over the real (mask True) tokens."""
  diff = student_BxLxD.astype(jnp.float32) - jax.lax.stop_gradient(
      teacher_BxLxD.astype(jnp.float32))
  m = mask_BxL.astype(jnp.float32)
  per_token = jnp.square(diff).mean(-1)
  return (per_token * m).sum() / jnp.maximum(m.sum(), 1.0)
