"""One Transformer block: attention (+ cross-attention) and MLP with residuals.

Shared by every model (decoder, encoder, encoder–decoder, text VAE); how the
blocks are stacked (unrolled, scanned, shared, rematerialised) is
models/stack.py's business, the embeddings and heads models/transformer.py's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.layers import Dense, LayerNorm, RMSNorm
from reparam_jax.models.rope import rotary

Array = jax.Array
constrain = nn.with_logical_constraint


def _dtypes(cfg: TransformerConfig) -> dict[str, Any]:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
  """The block's normalisation layer: LayerNorm, or RMSNorm (T5)."""
  cls = RMSNorm if cfg.norm == "rms" else LayerNorm
  return cls(cfg.layer_norm_eps, name=name, **_dtypes(cfg))


def _attention_kernel(cfg: TransformerConfig, q: Array, bias: Array | None,
                      mask: Array | None) -> str | None:
  """`jax.nn.dot_product_attention`'s implementation: cuDNN where it applies, else XLA's."""
  fused = (cfg.attention == "cudnn" and jax.default_backend() == "gpu" and bias is None
           and mask is None and q.dtype in (jnp.bfloat16, jnp.float16))
  return "cudnn" if fused else None


def _large_negative(dtype: Any) -> Array:
  """What masked scores become: jax.nn.dot_product_attention's own fill, finite so that a
  row with every key masked (padding) gets finite probabilities, not NaN."""
  return jnp.asarray(-0.7 * jnp.finfo(dtype).max, dtype)


class Attention(nn.Module):
  """Multi-head attention; `cross=True` takes keys and values from `memory` (the encoder).

  With `num_kv_heads` < `num_heads` (grouped-query attention, Ainslie et al. 2023) the
  key and value projections have `num_kv_heads` heads, each shared by a group of
  consecutive query heads, and the decode cache holds those heads only.
  """

  cfg: TransformerConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x_BxLxD: Array, mask_Bx1xLxM: Array | None, positions_BxL: Array,
               train: bool, decode: bool = False, cache_index: Array | None = None,
               bias_BxHxLxM: Array | None = None, memory_BxMxD: Array | None = None) -> Array:
    cfg = self.cfg
    B, L, _ = x_BxLxD.shape
    H, K = cfg.num_heads, cfg.head_dim

    def project(name: str, src_BxLxD: Array, heads: int = H) -> Array:
      y = Dense(heads * K, ("embed", "heads"), cfg.use_bias or cfg.qkv_bias, name=name,
                **_dtypes(cfg))(src_BxLxD)
      return constrain(y.reshape(*src_BxLxD.shape[:2], heads, K),
                       ("batch", "length", "heads", "kv"))

    q = project("query", x_BxLxD)
    if self.cross:
      k, v = self._memory_keys(project, memory_BxMxD, decode)
    else:
      k, v = project("key", x_BxLxD, cfg.kv_heads), project("value", x_BxLxD, cfg.kv_heads)
      if cfg.rope:
        q, k = rotary(q, positions_BxL, cfg), rotary(k, positions_BxL, cfg)
      if decode:
        k, v = self._cached(k, v, cache_index)

    scale = 1.0 / K ** 0.5 if cfg.attention_scale else 1.0
    # With the cuDNN kernel a causal model hands no mask when it would be the
    # plain causal one (see Transformer): the kernel masks by itself.
    is_causal = (cfg.attention == "cudnn" and cfg.causal and mask_Bx1xLxM is None
                 and not self.cross and not decode)
    if is_causal and cfg.attention_dropout > 0.0 and train:
      mask_Bx1xLxM = jnp.tril(jnp.ones((L, L), bool))[None, None]
    if cfg.attention_dropout > 0.0 and train:
      # The fused kernel has no dropout on the probabilities; spell it out.
      if k.shape[2] != H:  # grouped-query attention: each key/value head serves a group
        k, v = jnp.repeat(k, H // k.shape[2], axis=2), jnp.repeat(v, H // v.shape[2], axis=2)
      logits = jnp.einsum("blhk,bmhk->bhlm", q, k) * jnp.asarray(scale, q.dtype)
      if bias_BxHxLxM is not None:
        logits = logits + bias_BxHxLxM.astype(logits.dtype)
      if mask_Bx1xLxM is not None:
        logits = jnp.where(mask_Bx1xLxM, logits, jnp.finfo(logits.dtype).min)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
      probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=False)
      out = jnp.einsum("bhlm,bmhk->blhk", probs, v)
    else:
      bias = None if bias_BxHxLxM is None else bias_BxHxLxM.astype(q.dtype)
      kernel = _attention_kernel(cfg, q, bias, mask_Bx1xLxM)
      if kernel is None and mask_Bx1xLxM is not None:
        # XLA's kernel gets the mask as an additive bias: a boolean mask is broadcast
        # (with its fill value) to the full [B, H, L, M] scores, and under remat in a
        # scanned stack JAX hoists those loop-invariant arrays out of the scan and keeps
        # them for the backward pass (2.5 GiB a device for Llama-3.1-70B at 2048
        # tokens, bench/aot_compile.py); the bias stays [B, 1, L, M].
        masked = jnp.where(mask_Bx1xLxM, jnp.zeros((), q.dtype), _large_negative(q.dtype))
        bias = masked if bias is None else bias + masked
        mask_Bx1xLxM = None
      out = jax.nn.dot_product_attention(
          q, k, v, bias=bias, mask=mask_Bx1xLxM, is_causal=is_causal,
          scale=None if cfg.attention_scale else 1.0, implementation=kernel)
    out = constrain(out, ("batch", "length", "heads", "kv")).reshape(B, L, H * K)
    init = nn.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    return Dense(cfg.embed_dim, ("heads", "embed"), cfg.use_bias, kernel_init=init, name="out",
                 **_dtypes(cfg))(out)

  def _cached(self, k_BxLxHxK: Array, v_BxLxHxK: Array, index: Array) -> tuple[Array, Array]:
    """Keys and values of every cache slot so far, this call's written at `index`.

    The cache (collection 'cache') is sized by the `init` call that creates it:
    its input length is the number of slots (prompt + new tokens).  That call
    only creates it and attends to its own keys.
    """
    initialized = self.has_variable("cache", "cached_key")
    axes = ("batch", "length", "heads", "kv")  # sharded like the activations
    key = self.variable("cache", "cached_key", jnp.zeros, k_BxLxHxK.shape, k_BxLxHxK.dtype)
    value = self.variable("cache", "cached_value", jnp.zeros, v_BxLxHxK.shape, v_BxLxHxK.dtype)
    if not initialized:
      return k_BxLxHxK, v_BxLxHxK
    start = (0, index, 0, 0)
    key.value = constrain(jax.lax.dynamic_update_slice(key.value, k_BxLxHxK, start), axes)
    value.value = constrain(jax.lax.dynamic_update_slice(value.value, v_BxLxHxK, start), axes)
    return key.value, value.value

  def _memory_keys(self, project: Any, memory_BxMxD: Array | None, decode: bool
                   ) -> tuple[Array, Array]:
    """Cross-attention keys and values of the encoder output.

    Decoding computes them once: the call that passes `memory` stores them in
    the cache, and the steps after it pass `memory=None` and read them back.
    """
    if memory_BxMxD is None:
      if not (decode and self.has_variable("cache", "memory_key")):
        raise ValueError("cross-attention needs the encoder output (memory) or a filled cache")
      return self.get_variable("cache", "memory_key"), self.get_variable("cache", "memory_value")
    k, v = project("key", memory_BxMxD), project("value", memory_BxMxD)
    if decode:
      self.put_variable("cache", "memory_key", k)
      self.put_variable("cache", "memory_value", v)
    return k, v


class Mlp(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    cfg = self.cfg
    act = {"relu": nn.relu, "silu": nn.silu,
           "gelu": lambda y: nn.gelu(y, approximate=cfg.gelu_approximate)}[cfg.activation]
    h = act(Dense(cfg.mlp_dim, ("embed", "mlp"), cfg.use_bias, name="fc_in",
                  **_dtypes(cfg))(x_BxLxD))
    if cfg.mlp_gated:
      h = h * Dense(cfg.mlp_dim, ("embed", "mlp"), cfg.use_bias, name="fc_gate",
                    **_dtypes(cfg))(x_BxLxD)
    h = constrain(h, ("batch", "length", "mlp"))
    init = nn.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    return Dense(cfg.embed_dim, ("mlp", "embed"), cfg.use_bias, kernel_init=init, name="fc_out",
                 **_dtypes(cfg))(h)


class Block(nn.Module):
  """Attention (+ cross-attention) + MLP with residuals; pre-LN (GPT-2, T5) or post-LN (BERT).

  A decoder block of the encoder–decoder (`cross=True`) attends to the encoder
  output `memory` between its self-attention and its MLP (Vaswani et al. 2017).
  """

  cfg: TransformerConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, positions: Array, train: bool,
               decode: bool = False, cache_index: Array | None = None,
               bias: Array | None = None, memory: Array | None = None,
               memory_mask: Array | None = None) -> Array:
    cfg = self.cfg
    drop = lambda y: nn.Dropout(cfg.residual_dropout)(y, deterministic=not train)  # noqa: E731
    sublayers = [("ln_attn", lambda h: Attention(cfg, name="attn")(
        h, mask, positions, train, decode, cache_index, bias))]
    if self.cross:
      sublayers.append(("ln_cross", lambda h: Attention(cfg, cross=True, name="cross_attn")(
          h, memory_mask, positions, train, decode, memory_BxMxD=memory)))
    sublayers.append(("ln_mlp", Mlp(cfg, name="mlp")))
    for norm_name, sublayer in sublayers:
      if cfg.pre_norm:
        x = x + drop(sublayer(make_norm(cfg, norm_name)(x)))
      else:
        x = make_norm(cfg, norm_name)(x + drop(sublayer(x)))
    return constrain(x, ("batch", "length", "embed"))


class ScannedBlock(Block):
  """A `Block` in `nn.scan`'s carry form, (x, broadcast inputs) → (x, None), for
  models/stack.py; `train` and `decode` are fields (static for the scan)."""

  train: bool = False
  decode: bool = False

  def __call__(self, x: Array, mask: Array | None, positions: Array,
               cache_index: Array | None = None, bias: Array | None = None,
               memory: Array | None = None, memory_mask: Array | None = None
               ) -> tuple[Array, None]:
    return super().__call__(x, mask, positions, self.train, self.decode, cache_index, bias,
                            memory, memory_mask), None


BLOCKS = (Block, ScannedBlock)
