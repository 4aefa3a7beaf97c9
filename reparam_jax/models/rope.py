"""Rotary position embeddings (Su et al. 2021) and the context-extending scalings
of today's decoders, as `transformers` implements them (modeling_rope_utils.py):

  ""        θ_i = base^(-2i/d)                                  (Llama 2, Mistral, Qwen 2)
  "linear"  θ_i / factor: positions interpolated (Chen et al. 2023)
  "llama3"  long wavelengths / factor, short ones kept, a smooth ramp between (Llama 3.1)
  "yarn"    per-frequency blend of interpolation and extrapolation, and cos/sin scaled
            by an attention factor 0.1·ln(factor) + 1 (Peng et al. 2023)

The frequencies depend only on the config, so they are computed once in numpy
(float64, then float32) and enter the program as constants.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def frequencies(cfg: Any) -> tuple[np.ndarray, float]:
  """(θ [head_dim // 2] float32, factor on cos and sin) of `cfg`'s RoPE."""
  dim = cfg.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
  theta = 1.0 / cfg.rope_base ** exponents
  kind, factor = cfg.rope_scaling, cfg.rope_factor
  attention = 1.0
  if kind == "linear":
    theta = theta / factor
  elif kind == "llama3":
    theta = _llama3(theta, factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                    cfg.rope_original_max_len)
  elif kind == "yarn":
    theta, attention = _yarn(cfg, dim, factor)
  return theta.astype(np.float32), attention


def _llama3(theta: np.ndarray, factor: float, low: float, high: float, original: int
            ) -> np.ndarray:
  wavelength = 2 * math.pi / theta
  scaled = np.where(wavelength > original / low, theta / factor, theta)
  smooth = (original / wavelength - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelength >= original / high) & (wavelength <= original / low)
  return np.where(medium, smoothed, scaled)


def _yarn(cfg: Any, dim: int, factor: float) -> tuple[np.ndarray, float]:
  base, original = cfg.rope_base, cfg.rope_original_max_len
  attention = cfg.rope_attention_factor or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

  def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low = max(math.floor(dim_of(cfg.rope_beta_fast)), 0)
  high = min(math.ceil(dim_of(cfg.rope_beta_slow)), dim - 1)
  high = high + 0.001 if low == high else high
  ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
  extrapolated = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate
  theta = extrapolated / factor * (1 - keep) + extrapolated * keep
  return theta, attention


def rotary(x_BxLxHxK: Array, positions_BxL: Array, cfg: Any) -> Array:
  """x with each head's halves rotated by position × θ (the halves layout of
  GPT-NeoX and Llama in `transformers`)."""
  theta, attention = frequencies(cfg)
  angle = positions_BxL[..., None, None].astype(jnp.float32) * theta  # B,L,1,K/2
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  if attention != 1.0:
    sin, cos = sin * attention, cos * attention
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)
