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

Structurally pruned models (docs/structured_pruning.md): `layer_heads` and
`layer_mlp_dims` give block i its own number of heads (the fused heads axis of
its query/key/value/out kernels is heads_i*kv) and MLP width.

Projection kernels are 2-D `[d_in, d_out]` matrices (heads fused into the
output axis, split after the matmul) so every linear map is a matrix a
reparameterization can factor; the fused axis is sharded along `heads`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from reparam_jax.models.block import BLOCKS, Block, _dtypes, make_norm
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.layers import Dense, Embed, LayerNorm, materialize
from reparam_jax.models.stack import LayerTransform, rematerialised, run_blocks

Array = jax.Array
constrain = nn.with_logical_constraint


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
  `segment_ids_BxL` marks the documents packed into one row (1, 2, ...; 0 is
  padding): a token attends only to tokens of its own segment, so a packed
  row computes what each document alone would (with `positions_BxL`
  restarting at 0 in each document).

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
               segment_ids_BxL: Array | None = None, train: bool = False,
               decode: bool = False) -> dict[str, Array]:
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
    plain_causal = (cfg.attention == "cudnn" and padding_mask_BxL is None
                    and segment_ids_BxL is None and not decode and not cfg.sliding_window)
    if cfg.causal and not plain_causal:
      mask = causal_mask(jnp.arange(L), jnp.arange(L), cfg.sliding_window)[None, None]
    if padding_mask_BxL is not None:
      pad = padding_mask_BxL[:, None, None, :].astype(bool)
      mask = pad if mask is None else mask & pad
    if segment_ids_BxL is not None:
      if decode:
        raise ValueError("segment_ids_BxL is for training on packed rows, not decode=True")
      same = same_segment(segment_ids_BxL, segment_ids_BxL)
      mask = same if mask is None else mask & same
    if decode:
      if not cfg.causal:
        raise ValueError("decode=True needs a causal (decoder) model")
      mask, cache_index = cache_mask(self, mask, padding_mask_BxL, B, L, cfg.sliding_window)

    embed = Embeddings(cfg, name="embed")
    x = embed(ids_BxL, positions_BxL, token_types_BxL, train)
    if cfg.share_layers or cfg.layer_dims:
      x, width = self._unshared_blocks(x, mask, positions_BxL, train, decode, cache_index)
    else:
      per_layer = ([cfg.block_config(i) for i in range(cfg.num_layers)]
                   if cfg.per_layer_shapes else None)
      x = run_blocks(BLOCKS, cfg, cfg.num_layers, x, mask, positions_BxL, train, decode,
                     cache_index, layer_transform=self.layer_transform,
                     owner_path=self.scope.path, block_configs=per_layer)
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
      shared = block_cls(cfg.block_config(0), name="block_shared")
    width = cfg.embed_dim
    for i, dim in enumerate(cfg.block_dims):
      if dim != width:
        x = Dense(dim, ("embed", None), cfg.use_bias, name=f"proj_{i}", **_dtypes(cfg))(x)
        x, width = constrain(x, ("batch", "length", "embed")), dim
      block = shared if cfg.share_layers else block_cls(cfg.block_config(i), name=f"block_{i}")
      x = block(x, mask, positions_BxL, train, decode, cache_index)
    return x, width


def same_segment(query_segments_BxL: Array, key_segments_BxM: Array) -> Array:
  """[B, 1, L, M]: True where a query and a key belong to the same packed document."""
  return query_segments_BxL[:, None, :, None] == key_segments_BxM[:, None, None, :]


def causal_mask(query_slots_L: Array, key_slots_M: Array, window: int = 0) -> Array:
  """[L, M]: True where a query may see a key: keys at or before it, and with `window`
  > 0 only the `window` latest of those (Mistral's sliding window, counted as
  `transformers` counts it: query − key < window)."""
  seen = key_slots_M[None, :] <= query_slots_L[:, None]
  if window:
    seen &= query_slots_L[:, None] - key_slots_M[None, :] < window
  return seen


def cache_mask(owner: nn.Module, mask: Array | None, padding_mask_BxL: Array | None, B: int,
               L: int, window: int = 0) -> tuple[Array | None, Array]:
  """The attention mask over cache slots [B, 1, L, slots], and where this call writes.

  A query in slot i sees slot j ≤ i (within `window` slots, if set) unless j held
  padding (`cache/valid`).
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
  causal_LxM = causal_mask(start + jnp.arange(L), jnp.arange(valid.value.shape[1]), window)
  return causal_LxM[None, None] & valid.value[:, None, None, :], start
