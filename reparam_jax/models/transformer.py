"""The Transformer: one block shared by a decoder LM (GPT-2) and an encoder (BERT).

Parameter tree (plain, so reparameterization rules can target it by path):

  embed/token/embedding            [vocab, embed]
  embed/position/embedding         [max_len, embed]     (absent with RoPE)
  embed/token_type/embedding       [type_vocab, embed]  (encoder)
  embed/ln/{scale,bias}            (encoder, post-LN)
  block_{i}/ln_attn, block_{i}/ln_mlp
  block_{i}/attn/{query,key,value}/{kernel [embed, heads*kv], bias}
  block_{i}/attn/out/{kernel [heads*kv, embed], bias}
  block_{i}/mlp/{fc_in [embed, mlp], fc_out [mlp, embed]}/{kernel,bias}
  ln_final                         (pre-LN models)
  pooler/{kernel,bias}             (encoder with pooler)

Projection options (ALBERT, Lan et al. 2020; all off by default):

  embed_proj_dim=E   tables are [vocab, E] (and [max_len, E], [types, E], LN over
                     E), then `embed/projection/{kernel [E, embed], bias}`; a tied
                     output layer maps embed → E with the projection's transpose
                     and attends to the [vocab, E] table
  share_layers       one `block_shared/...` applied num_layers times
  layer_dims=(d_0, …) block i runs at width d_i; where the width changes,
                     `proj_{i}/{kernel [d_{i-1}, d_i], bias}` maps the residual
                     stream into block i (d_{-1} = embed); see docs/tasks.md

Projection kernels are 2-D `[d_in, d_out]` matrices (heads fused into the
output axis, split after the matmul) so every linear map is a matrix a
reparameterization can factor; the fused axis is sharded along `heads`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reparam_jax.models.layers import Dense, Embed, LayerNorm, materialize

Array = jax.Array
constrain = nn.with_logical_constraint


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int
  causal: bool = True
  pre_norm: bool = True  # False: BERT's post-LayerNorm
  rope: bool = False  # rotary position embeddings instead of learned ones
  rope_base: float = 10000.0
  type_vocab_size: int = 0  # > 0 adds token-type (segment) embeddings
  embed_norm: bool = False  # LayerNorm after the embedding sum (BERT)
  pooler: bool = False  # tanh(Dense(h[:, 0])) (BERT)
  tie_embeddings: bool = True
  use_bias: bool = True
  gelu_approximate: bool = True  # GPT-2 uses the tanh form, BERT the exact erf
  layer_norm_eps: float = 1e-5
  embed_dropout: float = 0.0
  attention_dropout: float = 0.0
  residual_dropout: float = 0.0
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise each block in the backward pass
  embed_proj_dim: int = 0  # > 0: factorised embedding [vocab, E] → E×embed projection (ALBERT)
  share_layers: bool = False  # cross-layer sharing: one block's params used by every layer
  layer_dims: tuple[int, ...] = ()  # width of each block; () = embed_dim everywhere

  def __post_init__(self):
    # Config files and overrides may hand a list; keep the dataclass hashable.
    object.__setattr__(self, "layer_dims", tuple(int(d) for d in self.layer_dims))
    if self.layer_dims:
      if len(self.layer_dims) != self.num_layers:
        raise ValueError(f"layer_dims {self.layer_dims} needs one width per layer "
                         f"({self.num_layers})")
      bad = [d for d in self.layer_dims if d <= 0 or d % self.num_heads]
      if bad:
        raise ValueError(f"layer_dims {bad} must be positive multiples of num_heads "
                         f"({self.num_heads})")
      if self.share_layers and len(set(self.layer_dims)) > 1:
        raise ValueError("share_layers needs one width for all layers; layer_dims varies")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def block_dims(self) -> tuple[int, ...]:
    return self.layer_dims or (self.embed_dim,) * self.num_layers

  def at_width(self, width: int) -> "TransformerConfig":
    """The config of a block running at `width`: same heads (narrower), same MLP ratio."""
    if width == self.embed_dim:
      return self
    return dataclasses.replace(self, embed_dim=width, mlp_dim=self.mlp_dim * width // self.embed_dim,
                               layer_dims=())


def _dtypes(cfg: TransformerConfig) -> dict[str, Any]:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def rotary(x_BxLxHxK: Array, positions_BxL: Array, base: float) -> Array:
  """Rotary position embedding (Su et al. 2021), rotating halves of each head."""
  half = x_BxLxHxK.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions_BxL[..., None, None].astype(jnp.float32) * freq  # B,L,1,half
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


class Attention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, mask_Bx1xLxM: Array | None, positions_BxL: Array,
               train: bool, decode: bool = False, cache_index: Array | None = None) -> Array:
    cfg = self.cfg
    B, L, _ = x_BxLxD.shape
    H, K = cfg.num_heads, cfg.head_dim

    def project(name: str) -> Array:
      y = Dense(H * K, ("embed", "heads"), cfg.use_bias, name=name, **_dtypes(cfg))(x_BxLxD)
      return constrain(y.reshape(B, L, H, K), ("batch", "length", "heads", "kv"))

    q, k, v = project("query"), project("key"), project("value")
    if cfg.rope:
      q, k = rotary(q, positions_BxL, cfg.rope_base), rotary(k, positions_BxL, cfg.rope_base)
    if decode:
      k, v = self._cached(k, v, cache_index)

    if cfg.attention_dropout > 0.0 and train:
      # The fused kernel has no dropout on the probabilities; spell it out.
      logits = jnp.einsum("blhk,bmhk->bhlm", q, k) / jnp.sqrt(K).astype(q.dtype)
      if mask_Bx1xLxM is not None:
        logits = jnp.where(mask_Bx1xLxM, logits, jnp.finfo(logits.dtype).min)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
      probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=False)
      out = jnp.einsum("bhlm,bmhk->blhk", probs, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask_Bx1xLxM)
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


class Mlp(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    cfg = self.cfg
    h = Dense(cfg.mlp_dim, ("embed", "mlp"), cfg.use_bias, name="fc_in", **_dtypes(cfg))(x_BxLxD)
    h = constrain(nn.gelu(h, approximate=cfg.gelu_approximate), ("batch", "length", "mlp"))
    init = nn.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    return Dense(cfg.embed_dim, ("mlp", "embed"), cfg.use_bias, kernel_init=init, name="fc_out",
                 **_dtypes(cfg))(h)


class Block(nn.Module):
  """Attention + MLP with residuals; pre-LN (GPT-2) or post-LN (BERT)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, positions: Array, train: bool,
               decode: bool = False, cache_index: Array | None = None) -> Array:
    cfg = self.cfg
    norm = lambda name: LayerNorm(cfg.layer_norm_eps, name=name, **_dtypes(cfg))  # noqa: E731
    drop = lambda y: nn.Dropout(cfg.residual_dropout)(y, deterministic=not train)  # noqa: E731
    attn, mlp = Attention(cfg, name="attn"), Mlp(cfg, name="mlp")
    if cfg.pre_norm:
      x = x + drop(attn(norm("ln_attn")(x), mask, positions, train, decode, cache_index))
      x = x + drop(mlp(norm("ln_mlp")(x)))
    else:
      x = norm("ln_attn")(x + drop(attn(x, mask, positions, train, decode, cache_index)))
      x = norm("ln_mlp")(x + drop(mlp(x)))
    return constrain(x, ("batch", "length", "embed"))


class Embeddings(nn.Module):
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    width = cfg.embed_proj_dim or cfg.embed_dim
    self.token = Embed(cfg.vocab_size, width, ("vocab", "embed"), **_dtypes(cfg))
    if not cfg.rope:
      self.position = Embed(cfg.max_len, width, ("length", "embed"), **_dtypes(cfg))
    if cfg.type_vocab_size:
      self.token_type = Embed(cfg.type_vocab_size, width, (None, "embed"), **_dtypes(cfg))
    if cfg.embed_norm:
      self.ln = LayerNorm(cfg.layer_norm_eps, **_dtypes(cfg))
    self.dropout = nn.Dropout(cfg.embed_dropout)
    if cfg.embed_proj_dim:
      self.projection = Dense(cfg.embed_dim, (None, "embed"), True, **_dtypes(cfg))

  def __call__(self, ids_BxL: Array, positions_BxL: Array, types_BxL: Array | None,
               train: bool) -> Array:
    x = self.token(ids_BxL)
    if not self.cfg.rope:
      x = x + self.position(positions_BxL)
    if self.cfg.type_vocab_size:
      x = x + self.token_type(jnp.zeros_like(ids_BxL) if types_BxL is None else types_BxL)
    if self.cfg.embed_norm:
      x = self.ln(x)
    x = self.dropout(x, deterministic=not train)
    if self.cfg.embed_proj_dim:
      x = self.projection(x)
    return constrain(x, ("batch", "length", "embed"))

  def attend(self, x_BxLxD: Array) -> Array:
    if self.cfg.embed_proj_dim:
      # Tied output of a factorised embedding: back to E through the
      # projection's transpose (no bias), then the [vocab, E] table.
      kernel = materialize(nn.meta.unbox(self.projection.get_variable("params", "kernel")))
      kernel = kernel.astype(self.cfg.dtype)
      x_BxLxD = jnp.einsum("...d,ed->...e", x_BxLxD.astype(kernel.dtype), kernel)
    return self.token.attend(x_BxLxD)


class Transformer(nn.Module):
  """Embeddings → blocks → (final LN) → outputs.

  Returns a dict with `hidden` [B, L, D], `logits` [B, L, V] when the model
  is causal (tied or untied output layer), and `pooled` [B, D] with a pooler.
  `padding_mask_BxL` is True on real tokens; padded keys are never attended.

  `decode=True` (causal models; generation/decode.py) keeps keys and values in
  the 'cache' collection: the `init` call sizes it (its input length is the
  number of slots), then each call appends its L tokens at the next free slots
  and attends to every slot filled so far that is not padding.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, ids_BxL: Array, *, padding_mask_BxL: Array | None = None,
               token_types_BxL: Array | None = None, positions_BxL: Array | None = None,
               train: bool = False, decode: bool = False) -> dict[str, Array]:
    cfg = self.cfg
    B, L = ids_BxL.shape
    if L > cfg.max_len and not decode:
      raise ValueError(f"sequence length {L} exceeds the model's max_len {cfg.max_len}")
    ids_BxL = constrain(ids_BxL, ("batch", "length"))
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask, cache_index = None, None
    if cfg.causal:
      mask = jnp.tril(jnp.ones((L, L), bool))[None, None]
    if padding_mask_BxL is not None:
      pad = padding_mask_BxL[:, None, None, :].astype(bool)
      mask = pad if mask is None else mask & pad
    if decode:
      mask, cache_index = self._cache_mask(mask, padding_mask_BxL, B, L)

    embed = Embeddings(cfg, name="embed")
    x = embed(ids_BxL, positions_BxL, token_types_BxL, train)
    # Decoding never differentiates: no remat there.  train and decode are Python flags (static).
    block_cls = nn.remat(Block, static_argnums=(4, 5)) if cfg.remat and not decode else Block
    if cfg.share_layers:
      shared = block_cls(cfg.at_width(cfg.block_dims[0]), name="block_shared")
    width = cfg.embed_dim
    for i, dim in enumerate(cfg.block_dims):
      if dim != width:
        x = Dense(dim, ("embed", None), cfg.use_bias, name=f"proj_{i}", **_dtypes(cfg))(x)
        x, width = constrain(x, ("batch", "length", "embed")), dim
      block = shared if cfg.share_layers else block_cls(cfg.at_width(dim), name=f"block_{i}")
      x = block(x, mask, positions_BxL, train, decode, cache_index)
    if cfg.pre_norm:
      x = LayerNorm(cfg.layer_norm_eps, name="ln_final", **_dtypes(cfg))(x)

    out = {"hidden": x}
    if cfg.causal:
      if cfg.tie_embeddings:
        y = x
        if width != cfg.embed_dim:  # narrower top blocks: back to the embedding width
          y = Dense(cfg.embed_dim, (None, "embed"), cfg.use_bias, name="proj_out",
                    **_dtypes(cfg))(y)
        logits = embed.attend(y)
      else:
        logits = Dense(cfg.vocab_size, ("embed", "vocab"), False, name="lm_head",
                       **_dtypes(cfg))(x)
      out["logits"] = constrain(logits, ("batch", "length", "vocab"))
    if cfg.pooler:
      pooled = Dense(width, ("embed", None), True, name="pooler", **_dtypes(cfg))(x[:, 0])
      out["pooled"] = jnp.tanh(pooled)
    return out

  def _cache_mask(self, mask: Array | None, padding_mask_BxL: Array | None, B: int, L: int
                  ) -> tuple[Array | None, Array | None]:
    """The attention mask over cache slots [B, 1, L, slots], and where this call writes.

    A query in slot i sees slot j ≤ i unless j held padding (`cache/valid`).
    """
    if not self.cfg.causal:
      raise ValueError("decode=True needs a causal (decoder) model")
    initialized = self.has_variable("cache", "index")
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    valid = self.variable("cache", "valid", lambda: jnp.zeros((B, L), bool))
    if not initialized:  # the call that sizes the cache: plain causal attention
      return mask, jnp.zeros((), jnp.int32)
    start = index.value
    new_BxL = jnp.ones((B, L), bool) if padding_mask_BxL is None else padding_mask_BxL.astype(bool)
    valid.value = jax.lax.dynamic_update_slice(valid.value, new_BxL, (0, start))
    index.value = start + L
    slots = jnp.arange(valid.value.shape[1])
    causal_LxM = slots[None, :] <= (start + jnp.arange(L))[:, None]
    return causal_LxM[None, None] & valid.value[:, None, None, :], start
