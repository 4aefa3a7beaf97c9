"""The ELBO of a Gaussian-latent VAE, its KL schedules, free bits and active units.

With q(z|x) = N(μ, diag σ²), p(z) = N(0, I) and a decoder p(x|z):

  −ELBO(x) = E_q[−log p(x|z)] + KL(q(z|x) ‖ p(z))
  KL       = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)          (closed form, per dimension j)

Training minimises  rec + β(t) · KL_fb  where

* β(t) anneals the KL weight from 0 (Bowman et al. 2016, linear) or repeats
  that ramp in cycles (Fu et al. 2019, cyclical), so the decoder learns to
  use z before the KL term can push q(z|x) onto the prior;
* KL_fb = Σ_j max(λ, E_batch[KL_j]) is Kingma et al. (2016)'s free bits with
  one group per latent dimension: a dimension whose batch-averaged KL is
  below λ nats costs a constant λ and gets no gradient, so the optimizer has
  no reason to collapse it to the prior.

Reported values are always the true KL and the true −ELBO (β = 1, no
clamping); the training objective is reported separately.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def reparameterize(mean_BxZ: Array, logvar_BxZ: Array, eps_BxZ: Array) -> Array:
  """z = μ + σ·ε: a sample of q(z|x) that is differentiable in μ and σ."""
  return mean_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ


def gaussian_kl(mean_BxZ: Array, logvar_BxZ: Array) -> Array:
  """KL(N(μ, σ²) ‖ N(0, 1)) per example and dimension, float32 [B, Z]."""
  mean, logvar = mean_BxZ.astype(jnp.float32), logvar_BxZ.astype(jnp.float32)
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def free_bits_kl(kl_BxZ: Array, free_bits: float, weights_B: Array | None = None) -> Array:
  """Σ_j max(λ, mean_b KL_bj): the per-dimension free-bits objective (a scalar)."""
  if weights_B is None:
    per_dim = kl_BxZ.mean(0)
  else:
    w = weights_B.astype(jnp.float32)
    per_dim = (kl_BxZ * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1.0)
  if free_bits <= 0:
    return per_dim.sum()
  return jnp.maximum(per_dim, free_bits).sum()


def kl_weight(step: Array | int, schedule: str, warmup_steps: int, num_steps: int,
              cycles: int = 4, ratio: float = 0.5, beta_max: float = 1.0) -> Array:
  """β(step) for schedule 'none' (constant β_max), 'linear' or 'cyclical'.

  linear:   β = β_max · min(1, step / warmup_steps)
  cyclical: num_steps split into `cycles` equal cycles; within each, β rises
            linearly over the first `ratio` of the cycle and stays at β_max
            for the rest (Fu et al. 2019 use 4 cycles, ratio 0.5).
  """
  step = jnp.asarray(step, jnp.float32)
  if schedule == "none":
    return jnp.asarray(beta_max, jnp.float32)
  if schedule == "linear":
    return beta_max * jnp.minimum(1.0, step / max(warmup_steps, 1))
  if schedule == "cyclical":
    period = max(num_steps / max(cycles, 1), 1.0)
    tau = jnp.mod(step, period) / period
    return beta_max * jnp.minimum(1.0, tau / max(ratio, 1e-6))
  raise ValueError(f"unknown KL schedule {schedule!r}; use 'none', 'linear' or 'cyclical'")


def active_units(mean_sum_Z: Any, mean_sq_sum_Z: Any, count: float,
                 threshold: float = 0.01) -> tuple[int, np.ndarray]:
  """Burda et al. (2016)'s activity A_j = Cov_x(E_q[z_j]) from sums over a data set.

  `mean_sum_Z` = Σ_x μ_j(x) and `mean_sq_sum_Z` = Σ_x μ_j(x)²; a unit is
  active when A_j > threshold.  Computed in float64 on the host: the
  variance is a difference of two large sums.
  """
  s1 = np.asarray(mean_sum_Z, np.float64)
  s2 = np.asarray(mean_sq_sum_Z, np.float64)
  n = max(float(count), 1.0)
  activity = np.maximum(s2 / n - np.square(s1 / n), 0.0)
  return int((activity > threshold).sum()), activity
