"""The encoder–decoder Transformer (Vaswani et al. 2017; T5, Raffel et al. 2020).

Two stacks of the one `Block` of block.py: an encoder (bidirectional
self-attention) and a decoder (causal self-attention, then cross-attention
over the encoder output), sharing one token table.

Parameter tree (T5 names in brackets):

  embed/token/embedding                [vocab, embed]          (shared)
  encoder/position/embedding           [max_len, embed]        (learned positions only)
  encoder/rel_bias/embedding           [buckets, heads]        (relative_buckets > 0)
  encoder/block_{i}/ln_attn, attn/{query,key,value,out}/kernel, ln_mlp, mlp/{fc_in,fc_gate,fc_out}
  encoder/ln_final                                             (pre-LN)
  decoder/... the same, and in each block
  decoder/block_{i}/ln_cross, cross_attn/{query,key,value,out}/kernel   [EncDecAttention]
  decoder/ln_final
  lm_head/kernel                       [embed, vocab]          (untied)

`mlp/fc_in` is the activated projection (T5's `wi`/`wi_0`) and `mlp/fc_gate`
the gate it is multiplied by (`wi_1`, T5 v1.1).  Every kernel keeps the
logical axes of the decoder-only model, so sharding rules and reparam rules
apply unchanged (`decoder/block_\\d+/cross_attn/query/kernel` names one).

Presets: `t5` (v1.0: ReLU, tied, relative buckets, RMSNorm, no biases, no
logit scaling), `t5_v1_1` (gated GELU, untied) and `vaswani` (post-LN,
sinusoidal positions, biases, √d embedding scale), in PRESETS of presets.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reparam_jax.models.block import BLOCKS, _dtypes, make_norm
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.layers import Dense, Embed
from reparam_jax.models.stack import LayerTransform, run_blocks
from reparam_jax.models.transformer import (Embeddings, cache_mask, relative_bias, same_segment,
                                            sinusoid)

Array = jax.Array
constrain = nn.with_logical_constraint


class Stack(nn.Module):
  """Positions → blocks → final norm: the encoder (`decoder=False`) or the decoder."""

  cfg: TransformerConfig
  num_layers: int
  decoder: bool
  layer_transform: LayerTransform | None = None  # see models/stack.py

  @nn.compact
  def __call__(self, x_BxLxD: Array, padding_mask_BxL: Array | None, train: bool,
               decode: bool = False, memory_BxMxD: Array | None = None,
               memory_mask_BxM: Array | None = None, segment_ids_BxL: Array | None = None,
               memory_segment_ids_BxM: Array | None = None) -> Array:
    """`segment_ids_BxL` (1, 2, ... per packed example, 0 on padding): a token attends
    to its own segment only, positions restart in each, and with
    `memory_segment_ids_BxM` cross-attention reads only its own example's memory."""
    # Attention reads cfg.causal for the cuDNN kernel's causal mode; the stack's
    # role decides it here, whatever the shared config says.
    cfg = dataclasses.replace(self.cfg, causal=self.decoder)
    B, L, _ = x_BxLxD.shape
    mask = None
    if self.decoder:
      mask = jnp.tril(jnp.ones((L, L), bool))[None, None]
    if padding_mask_BxL is not None:
      pad = padding_mask_BxL[:, None, None, :].astype(bool)
      mask = pad if mask is None else mask & pad
    if segment_ids_BxL is not None:
      if decode:
        raise ValueError("segment_ids_BxL is for training on packed rows, not decode=True")
      same = same_segment(segment_ids_BxL, segment_ids_BxL)
      mask = same if mask is None else mask & same
    cache_index = None
    if decode:
      mask, cache_index = cache_mask(self, mask, padding_mask_BxL, B, L)
    start = 0 if cache_index is None else cache_index
    if segment_ids_BxL is not None:
      positions_BxL = segment_positions(segment_ids_BxL)
    else:
      positions_BxL = jnp.broadcast_to(start + jnp.arange(L), (B, L))
    if cfg.learned_positions:
      x_BxLxD = x_BxLxD + Embed(cfg.max_len, cfg.embed_dim, ("length", "embed"), name="position",
                                **_dtypes(cfg))(positions_BxL)
    elif cfg.sinusoidal:
      x_BxLxD = x_BxLxD + sinusoid(positions_BxL, cfg.embed_dim).astype(x_BxLxD.dtype)
    dropout = nn.Dropout(cfg.residual_dropout)
    x = dropout(x_BxLxD, deterministic=not train)

    bias = None
    if cfg.relative_buckets:
      slots = mask.shape[-1] if mask is not None else L
      key_pos_BxM = (positions_BxL if segment_ids_BxL is not None
                     else jnp.broadcast_to(jnp.arange(slots), (B, slots)))
      table = Embed(cfg.relative_buckets, cfg.num_heads, (None, "heads"), name="rel_bias",
                    **_dtypes(cfg))
      bias = relative_bias(table, cfg, not self.decoder, positions_BxL, key_pos_BxM)
    memory_mask = None
    if memory_mask_BxM is not None:
      memory_mask = memory_mask_BxM[:, None, None, :].astype(bool)
    if memory_segment_ids_BxM is not None and segment_ids_BxL is not None:
      own = same_segment(segment_ids_BxL, memory_segment_ids_BxM)
      memory_mask = own if memory_mask is None else memory_mask & own

    x = run_blocks(BLOCKS, cfg, self.num_layers, x, mask, positions_BxL, train, decode,
                   cache_index, bias, memory_BxMxD, memory_mask, cross=self.decoder,
                   layer_transform=self.layer_transform, owner_path=self.scope.path)
    if cfg.pre_norm:
      x = make_norm(cfg, "ln_final")(x)
    return dropout(x, deterministic=not train)


class EncoderDecoder(nn.Module):
  """inputs → encoder → memory; decoder inputs + memory → decoder → logits.

  `__call__` is teacher forcing.  Generation (generation/seq2seq.py) calls
  `encode` once, then `decode` with `decode=True`: the first decode call
  passes the memory (its cross-attention keys and values go into the cache),
  later ones pass `memory=None` and one new position each.
  """

  cfg: TransformerConfig
  layer_transform: LayerTransform | None = None  # see models/stack.py

  def setup(self):
    cfg = self.cfg
    if cfg.layer_heads or cfg.layer_mlp_dims:  # the two stacks would not know whose layers
      raise ValueError("layer_heads / layer_mlp_dims (structured pruning) are for decoders "
                       "and encoders; the encoder–decoder has one head count and MLP width")
    self.embed = Embeddings(cfg, positions=False)
    self.encoder = Stack(cfg, cfg.num_layers, decoder=False, layer_transform=self.layer_transform)
    self.decoder = Stack(cfg, cfg.num_decoder_layers or cfg.num_layers, decoder=True,
                         layer_transform=self.layer_transform)
    if not cfg.tie_embeddings:
      self.lm_head = Dense(cfg.vocab_size, ("embed", "vocab"), False, **_dtypes(cfg))

  def __call__(self, inputs_BxS: Array, decoder_inputs_BxT: Array, *,
               inputs_mask_BxS: Array | None = None, inputs_segment_ids_BxS: Array | None = None,
               targets_segment_ids_BxT: Array | None = None,
               train: bool = False) -> dict[str, Array]:
    """Teacher forcing.  Packed rows (several examples per row, data/span_corruption.py's
    `pack`) pass both segment-id arrays: example k's targets see only example k's inputs,
    so each example's logits are those it would get alone in a row."""
    memory = self.encode(inputs_BxS, inputs_mask_BxS, train=train,
                         segment_ids_BxS=inputs_segment_ids_BxS)
    return self.decode(decoder_inputs_BxT, memory, inputs_mask_BxS, train=train,
                       segment_ids_BxT=targets_segment_ids_BxT,
                       memory_segment_ids_BxS=inputs_segment_ids_BxS)

  def encode(self, inputs_BxS: Array, inputs_mask_BxS: Array | None = None, *,
             train: bool = False, segment_ids_BxS: Array | None = None) -> Array:
    self._check_length(inputs_BxS, "inputs")
    x = self.embed(constrain(inputs_BxS, ("batch", "length")), None, None, train)
    return self.encoder(x, inputs_mask_BxS, train, segment_ids_BxL=segment_ids_BxS)

  def decode(self, decoder_inputs_BxT: Array, memory_BxSxD: Array | None,
             inputs_mask_BxS: Array | None, *, train: bool = False, decode: bool = False,
             segment_ids_BxT: Array | None = None,
             memory_segment_ids_BxS: Array | None = None) -> dict[str, Array]:
    cfg = self.cfg
    if not decode:
      self._check_length(decoder_inputs_BxT, "decoder inputs")
    x = self.embed(constrain(decoder_inputs_BxT, ("batch", "length")), None, None, train)
    # Padding of the targets needs no key mask: causal attention never looks
    # past a real token to padding that follows it, and padded targets have zero weight.
    h = self.decoder(x, None, train, decode, memory_BxSxD, inputs_mask_BxS,
                     segment_ids_BxL=segment_ids_BxT,
                     memory_segment_ids_BxM=memory_segment_ids_BxS)
    if cfg.tie_embeddings:
      if cfg.tied_logits_scale:
        h = h * jnp.asarray(cfg.embed_dim ** -0.5, h.dtype)
      logits = self.embed.attend(h)
    else:
      logits = self.lm_head(h)
    return {"hidden": h, "logits": constrain(logits, ("batch", "length", "vocab"))}

  def _check_length(self, ids_BxL: Array, what: str) -> None:
    if self.cfg.learned_positions and ids_BxL.shape[1] > self.cfg.max_len:
      raise ValueError(f"{what} length {ids_BxL.shape[1]} exceeds the model's max_len "
                       f"{self.cfg.max_len}")


def segment_positions(segment_ids_BxL: Array) -> Array:
  """Each token's position within its segment (0 at every segment's first token)."""
  L = segment_ids_BxL.shape[1]
  index_BxL = jnp.broadcast_to(jnp.arange(L), segment_ids_BxL.shape)
  starts_BxL = jnp.concatenate([jnp.ones_like(segment_ids_BxL[:, :1], bool),
                                segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]], axis=1)
  return index_BxL - jax.lax.cummax(jnp.where(starts_BxL, index_BxL, 0), axis=1)


def init_cache(model: EncoderDecoder, params: Any, batch: int, target_slots: int,
               memory_BxSxD: Array, inputs_mask_BxS: Array | None) -> Any:
  """An empty decoder cache of `target_slots` positions for `batch` rows (abstract init)."""
  ids = jnp.zeros((batch, target_slots), jnp.int32)

  def sized(p: Any) -> Any:
    _, variables = model.apply({"params": p}, ids, memory_BxSxD, inputs_mask_BxS, decode=True,
                               method=EncoderDecoder.decode, mutable=["cache"])
    return variables["cache"]

  shapes = jax.eval_shape(sized, params)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
