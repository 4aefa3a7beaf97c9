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

from reparam_jax.models.layers import Dense, Embed, LayerNorm, RMSNorm, materialize
from reparam_jax.models.stack import LayerTransform, remat_policy_name, rematerialised, run_blocks

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
  remat: Any = "none"  # backward-pass rematerialisation of each block: stack.REMAT_POLICIES
  scan_layers: bool = False  # nn.scan over a stacked `blocks` (models/stack.py)
  # Self-attention kernel: "xla", or "cudnn" for cuDNN's fused (flash) kernel on GPUs in
  # bf16/fp16, used where the mask is the causal one or none (no padding, bias or decode
  # cache); elsewhere, and on other backends, the XLA kernel with the same masking.
  attention: str = "xla"
  embed_proj_dim: int = 0  # > 0: factorised embedding [vocab, E] → E×embed projection (ALBERT)
  share_layers: bool = False  # cross-layer sharing: one block's params used by every layer
  layer_dims: tuple[int, ...] = ()  # width of each block; () = embed_dim everywhere
  # T5 and original-Transformer options (models/seq2seq.py; the defaults are GPT-2/BERT's).
  norm: str = "layer"  # "layer" (LayerNorm) or "rms" (T5's RMSNorm: scale only, no mean)
  activation: str = "gelu"  # "gelu" or "relu" (T5 v1.0, Vaswani et al. 2017)
  mlp_gated: bool = False  # act(x W_in) ⊙ (x W_gate): T5 v1.1's gated GELU (Shazeer 2020)
  head_size: int = 0  # width of one head; 0 = embed_dim // num_heads (T5's d_kv may differ)
  attention_scale: bool = True  # False: no 1/√head_size on the logits (T5 folds it into init)
  relative_buckets: int = 0  # > 0: T5 relative position bias with this many buckets
  relative_max_distance: int = 128  # distances beyond this share the last bucket
  sinusoidal: bool = False  # fixed sinusoidal positions (Vaswani et al.) instead of a table
  embed_scale: bool = False  # token embeddings × √embed_dim (Vaswani et al.)
  tied_logits_scale: bool = False  # tied output layer sees h · embed_dim^-½ (T5)
  num_decoder_layers: int = 0  # encoder–decoder: decoder depth; 0 = num_layers

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
    object.__setattr__(self, "remat", remat_policy_name(self.remat))
    if self.scan_layers and (self.share_layers or len(set(self.block_dims)) > 1):
      raise ValueError("scan_layers needs num_layers identical blocks; share_layers and "
                       "varying layer_dims are unrolled only")
    if self.norm not in ("layer", "rms"):
      raise ValueError(f"norm={self.norm!r}: use 'layer' or 'rms'")
    if self.attention not in ATTENTION_KERNELS:
      raise ValueError(f"attention={self.attention!r}: use one of {ATTENTION_KERNELS}")
    if self.activation not in ("gelu", "relu"):
      raise ValueError(f"activation={self.activation!r}: use 'gelu' or 'relu'")
    if sum([self.rope, self.relative_buckets > 0, self.sinusoidal]) > 1:
      raise ValueError("choose one position scheme: rope, relative_buckets or sinusoidal")

  @property
  def learned_positions(self) -> bool:
    return not (self.rope or self.relative_buckets or self.sinusoidal)

  @property
  def head_dim(self) -> int:
    return self.head_size or self.embed_dim // self.num_heads

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


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
  """The block's normalisation layer: LayerNorm, or RMSNorm (T5)."""
  cls = RMSNorm if cfg.norm == "rms" else LayerNorm
  return cls(cfg.layer_norm_eps, name=name, **_dtypes(cfg))


def sinusoid(positions_BxL: Array, width: int) -> Array:
  """Fixed position encodings (Vaswani et al. 2017): sin on the first half, cos on the second."""
  half = width // 2
  freq = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angle = positions_BxL[..., None].astype(jnp.float32) * freq
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def relative_bucket(relative_BxLxM: Array, bidirectional: bool, num_buckets: int,
                    max_distance: int) -> Array:
  """T5's bucket of a key-minus-query distance (Raffel et al. 2020, §2.1).

  Half the buckets hold exact small distances, the rest logarithmically wider
  ranges up to `max_distance`; a bidirectional (encoder) bias spends half of
  them on each direction, a causal one sees only keys behind the query.
  """
  bucket = jnp.zeros_like(relative_BxLxM)
  if bidirectional:
    num_buckets //= 2
    bucket = jnp.where(relative_BxLxM > 0, num_buckets, 0)
    distance = jnp.abs(relative_BxLxM)
  else:
    distance = jnp.maximum(-relative_BxLxM, 0)
  exact = num_buckets // 2
  log_ratio = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact)
               / jnp.log(max_distance / exact))
  far = exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32)
  far = jnp.minimum(far, num_buckets - 1)
  return bucket + jnp.where(distance < exact, distance, far)


def relative_bias(table: Embed, cfg: TransformerConfig, bidirectional: bool,
                  query_pos_BxL: Array, key_pos_BxM: Array) -> Array:
  """T5's learned bias per (bucket, head), [B, H, L, M], added to the attention logits.

  `table` ([buckets, heads]) is one per stack, shared by all its layers (T5 keeps it in block 0).
  """
  relative = key_pos_BxM[:, None, :] - query_pos_BxL[:, :, None]
  buckets = relative_bucket(relative, bidirectional, cfg.relative_buckets,
                            cfg.relative_max_distance)
  return jnp.transpose(table(buckets), (0, 3, 1, 2))


def rotary(x_BxLxHxK: Array, positions_BxL: Array, base: float) -> Array:
  """Rotary position embedding (Su et al. 2021), rotating halves of each head."""
  half = x_BxLxHxK.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions_BxL[..., None, None].astype(jnp.float32) * freq  # B,L,1,half
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


ATTENTION_KERNELS = ("xla", "cudnn")


def _attention_kernel(cfg: TransformerConfig, q: Array, bias: Array | None,
                      mask: Array | None) -> str | None:
  """`jax.nn.dot_product_attention`'s implementation: cuDNN where it applies, else XLA's."""
  fused = (cfg.attention == "cudnn" and jax.default_backend() == "gpu" and bias is None
           and mask is None and q.dtype in (jnp.bfloat16, jnp.float16))
  return "cudnn" if fused else None


class Attention(nn.Module):
  """Multi-head attention; `cross=True` takes keys and values from `memory` (the encoder)."""

  cfg: TransformerConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x_BxLxD: Array, mask_Bx1xLxM: Array | None, positions_BxL: Array,
               train: bool, decode: bool = False, cache_index: Array | None = None,
               bias_BxHxLxM: Array | None = None, memory_BxMxD: Array | None = None) -> Array:
    cfg = self.cfg
    B, L, _ = x_BxLxD.shape
    H, K = cfg.num_heads, cfg.head_dim

    def project(name: str, src_BxLxD: Array) -> Array:
      y = Dense(H * K, ("embed", "heads"), cfg.use_bias, name=name, **_dtypes(cfg))(src_BxLxD)
      return constrain(y.reshape(*src_BxLxD.shape[:2], H, K), ("batch", "length", "heads", "kv"))

    q = project("query", x_BxLxD)
    if self.cross:
      k, v = self._memory_keys(project, memory_BxMxD, decode)
    else:
      k, v = project("key", x_BxLxD), project("value", x_BxLxD)
      if cfg.rope:
        q, k = rotary(q, positions_BxL, cfg.rope_base), rotary(k, positions_BxL, cfg.rope_base)
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
      out = jax.nn.dot_product_attention(
          q, k, v, bias=bias, mask=mask_Bx1xLxM, is_causal=is_causal,
          scale=None if cfg.attention_scale else 1.0,
          implementation=_attention_kernel(cfg, q, bias, mask_Bx1xLxM))
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
    act = nn.relu if cfg.activation == "relu" else (
        lambda y: nn.gelu(y, approximate=cfg.gelu_approximate))
    h = act(Dense(cfg.mlp_dim, ("embed", "mlp"), cfg.use_bias, name="fc_in", **_dtypes(cfg))(x_BxLxD))
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


class Embeddings(nn.Module):
  """Token (+ position, + token-type) embeddings.

  `positions=False` leaves positions to the caller: the encoder–decoder adds
  them per stack and shares only the token table.
  """

  cfg: TransformerConfig
  positions: bool = True

  def setup(self):
    cfg = self.cfg
    width = cfg.embed_proj_dim or cfg.embed_dim
    self.token = Embed(cfg.vocab_size, width, ("vocab", "embed"), **_dtypes(cfg))
    if self.positions and cfg.learned_positions:
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
    if self.cfg.embed_scale:
      x = x * jnp.asarray(x.shape[-1] ** 0.5, x.dtype)
    if self.positions and self.cfg.learned_positions:
      x = x + self.position(positions_BxL)
    elif self.positions and self.cfg.sinusoidal:
      x = x + sinusoid(positions_BxL, x.shape[-1]).astype(x.dtype)
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
  layer_transform: LayerTransform | None = None  # see models/stack.py

  @nn.compact
  def __call__(self, ids_BxL: Array, *, padding_mask_BxL: Array | None = None,
               token_types_BxL: Array | None = None, positions_BxL: Array | None = None,
               train: bool = False, decode: bool = False) -> dict[str, Array]:
    cfg = self.cfg
    B, L = ids_BxL.shape
    if L > cfg.max_len and not decode:
      raise ValueError(f"sequence length {L} exceeds the model's max_len {cfg.max_len}")
    if cfg.relative_buckets:
      raise ValueError("relative_buckets (T5 position bias) is implemented for the "
                       "encoder–decoder (models/seq2seq.py) only")
    ids_BxL = constrain(ids_BxL, ("batch", "length"))
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask, cache_index = None, None
    # With the cuDNN kernel a plain causal mask is not built: attention passes
    # is_causal instead (the kernel's own causal mode, no [L, L] mask in memory).
    plain_causal = cfg.attention == "cudnn" and padding_mask_BxL is None and not decode
    if cfg.causal and not plain_causal:
      mask = jnp.tril(jnp.ones((L, L), bool))[None, None]
    if padding_mask_BxL is not None:
      pad = padding_mask_BxL[:, None, None, :].astype(bool)
      mask = pad if mask is None else mask & pad
    if decode:
      if not cfg.causal:
        raise ValueError("decode=True needs a causal (decoder) model")
      mask, cache_index = cache_mask(self, mask, padding_mask_BxL, B, L)

    embed = Embeddings(cfg, name="embed")
    x = embed(ids_BxL, positions_BxL, token_types_BxL, train)
    if cfg.share_layers or cfg.layer_dims:
      x, width = self._unshared_blocks(x, mask, positions_BxL, train, decode, cache_index)
    else:
      x = run_blocks(BLOCKS, cfg, cfg.num_layers, x, mask, positions_BxL, train, decode,
                     cache_index, layer_transform=self.layer_transform)
      width = cfg.embed_dim
    if cfg.pre_norm:
      x = make_norm(cfg, "ln_final")(x)

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

  def _unshared_blocks(self, x: Array, mask: Array | None, positions_BxL: Array, train: bool,
                       decode: bool, cache_index: Array | None) -> tuple[Array, int]:
    """ALBERT's stacks: one block shared by every layer, or blocks of varying width."""
    cfg = self.cfg
    block_cls = rematerialised(Block, cfg, decode)
    if cfg.share_layers:
      shared = block_cls(cfg.at_width(cfg.block_dims[0]), name="block_shared")
    width = cfg.embed_dim
    for i, dim in enumerate(cfg.block_dims):
      if dim != width:
        x = Dense(dim, ("embed", None), cfg.use_bias, name=f"proj_{i}", **_dtypes(cfg))(x)
        x, width = constrain(x, ("batch", "length", "embed")), dim
      block = shared if cfg.share_layers else block_cls(cfg.at_width(dim), name=f"block_{i}")
      x = block(x, mask, positions_BxL, train, decode, cache_index)
    return x, width


def cache_mask(owner: nn.Module, mask: Array | None, padding_mask_BxL: Array | None, B: int,
               L: int) -> tuple[Array | None, Array]:
  """The attention mask over cache slots [B, 1, L, slots], and where this call writes.

  A query in slot i sees slot j ≤ i unless j held padding (`cache/valid`).
  `owner` is the module that owns the cache's `index` and `valid` variables.
  """
  initialized = owner.has_variable("cache", "index")
  index = owner.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
  valid = owner.variable("cache", "valid", lambda: jnp.zeros((B, L), bool))
  if not initialized:  # the call that sizes the cache: plain causal attention
    return mask, jnp.zeros((), jnp.int32)
  start = index.value
  new_BxL = jnp.ones((B, L), bool) if padding_mask_BxL is None else padding_mask_BxL.astype(bool)
  valid.value = jax.lax.dynamic_update_slice(valid.value, new_BxL, (0, start))
  index.value = start + L
  slots = jnp.arange(valid.value.shape[1])
  causal_LxM = slots[None, :] <= (start + jnp.arange(L))[:, None]
  return causal_LxM[None, None] & valid.value[:, None, None, :], start
