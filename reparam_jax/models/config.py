"""The Transformer's hyperparameters: one frozen dataclass shared by every model.

`transformer_config` (models/__init__.py) builds it from a config's `model`
section; the module docstrings of transformer.py (decoder / encoder) and
seq2seq.py (encoder–decoder) say what each option changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reparam_jax.models.stack import remat_policy_name

# `model.attention`: XLA's attention, or cuDNN's fused kernel where it applies (block.py).
ATTENTION_KERNELS = ("xla", "cudnn")
ACTIVATIONS = ("gelu", "relu", "silu")
ROPE_SCALINGS = ("", "linear", "llama3", "yarn")


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
  rope_base: float = 10000.0  # θ of `transformers`' rope_theta
  # RoPE scalings for longer contexts (models/rope.py): "", "linear", "llama3" or "yarn",
  # with `transformers`' parameters (factor, low/high_freq_factor, original length, β's).
  rope_scaling: str = ""
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 0
  rope_beta_fast: float = 32.0
  rope_beta_slow: float = 1.0
  rope_attention_factor: float = 0.0  # yarn: 0 = 0.1·ln(factor) + 1
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
  # Layers per iteration of the scanned stack's loop (nn.scan's `unroll`; models/stack.py):
  # the parameter layout is unchanged, the loop runs ceil(L / scan_unroll) times.
  scan_unroll: int = 1
  # Self-attention kernel: "xla", or "cudnn" for cuDNN's fused (flash) kernel on GPUs in
  # bf16/fp16, used where the mask is the causal one or none (no padding, bias or decode
  # cache); elsewhere, and on other backends, the XLA kernel with the same masking.
  attention: str = "xla"
  embed_proj_dim: int = 0  # > 0: factorised embedding [vocab, E] → E×embed projection (ALBERT)
  share_layers: bool = False  # cross-layer sharing: one block's params used by every layer
  layer_dims: tuple[int, ...] = ()  # width of each block; () = embed_dim everywhere
  # Structurally pruned models (compression/structured.py): query heads and MLP width of
  # each block; () = num_heads / mlp_dim everywhere.  Key/value heads keep the group size
  # num_heads // kv_heads (whole groups are removed), heads keep head_dim.
  layer_heads: tuple[int, ...] = ()
  layer_mlp_dims: tuple[int, ...] = ()
  # T5 and original-Transformer options (models/seq2seq.py; the defaults are GPT-2/BERT's).
  norm: str = "layer"  # "layer" (LayerNorm) or "rms" (T5's RMSNorm: scale only, no mean)
  activation: str = "gelu"  # "gelu", "relu" (T5 v1.0, Vaswani et al.) or "silu" (Llama)
  # act(x W_in) ⊙ (x W_gate): T5 v1.1's gated GELU, Llama's SwiGLU (Shazeer 2020)
  mlp_gated: bool = False
  head_size: int = 0  # width of one head; 0 = embed_dim // num_heads (T5's d_kv may differ)
  # Llama-family options (the defaults are GPT-2/BERT's): grouped-query attention with this
  # many key/value heads (0 = num_heads; 1 = multi-query), biases on the query/key/value
  # projections even without `use_bias` (Qwen 2), and attention to at most this many
  # previous positions (Mistral's sliding window; 0 = all).
  num_kv_heads: int = 0
  qkv_bias: bool = False
  sliding_window: int = 0
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
    if int(self.scan_unroll) < 1:
      raise ValueError(f"scan_unroll={self.scan_unroll}: use a layer count ≥ 1 "
                       "(1 = one layer per scan iteration)")
    object.__setattr__(self, "scan_unroll", int(self.scan_unroll))
    self._check_pruned_shapes()
    if self.norm not in ("layer", "rms"):
      raise ValueError(f"norm={self.norm!r}: use 'layer' or 'rms'")
    if self.attention not in ATTENTION_KERNELS:
      raise ValueError(f"attention={self.attention!r}: use one of {ATTENTION_KERNELS}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r}: use one of {ACTIVATIONS}")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"rope_scaling={self.rope_scaling!r}: use one of {ROPE_SCALINGS}")
    if self.rope_scaling in ("llama3", "yarn") and self.rope_original_max_len <= 0:
      raise ValueError(f"rope_scaling={self.rope_scaling!r} needs rope_original_max_len, the "
                       "context length the model was pre-trained at")
    if sum([self.rope, self.relative_buckets > 0, self.sinusoidal]) > 1:
      raise ValueError("choose one position scheme: rope, relative_buckets or sinusoidal")

  def _check_pruned_shapes(self) -> None:
    """`layer_heads` and `layer_mlp_dims`: one positive entry per layer, whole key/value
    groups, one shape for every layer of a scanned or shared stack."""
    for name in ("layer_heads", "layer_mlp_dims"):
      values = tuple(int(v) for v in getattr(self, name))
      object.__setattr__(self, name, values)
      if not values:
        continue
      if len(values) != self.num_layers:
        raise ValueError(f"{name}={values} needs one entry per layer ({self.num_layers})")
      if min(values) <= 0:
        raise ValueError(f"{name}={values} has an entry ≤ 0; keep at least one per layer")
      if (self.scan_layers or self.share_layers) and len(set(values)) > 1:
        raise ValueError(f"{name}={values} varies across layers: a scanned or shared stack "
                         "needs one shape; set scan_layers=False (share_layers=False)")
    if self.layer_heads and self.num_heads % self.kv_heads == 0:
      group = self.num_heads // self.kv_heads
      bad = [h for h in self.layer_heads if h % group]
      if bad:
        raise ValueError(f"layer_heads {bad} are not whole key/value groups of {group} query "
                         f"heads (num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads})")

  @property
  def learned_positions(self) -> bool:
    return not (self.rope or self.relative_buckets or self.sinusoidal)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

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
    return dataclasses.replace(self, embed_dim=width,
                               mlp_dim=self.mlp_dim * width // self.embed_dim, layer_dims=())

  @property
  def per_layer_shapes(self) -> bool:
    """Whether blocks differ from one another (width, heads or MLP width by layer)."""
    return bool(self.layer_dims or self.layer_heads or self.layer_mlp_dims)

  def block_config(self, i: int) -> TransformerConfig:
    """The config block i is built with: its width (`layer_dims`), its query and key/value
    heads (`layer_heads`, same head_dim and group size) and MLP width (`layer_mlp_dims`)."""
    cfg = self.at_width(self.block_dims[i])
    changes: dict[str, Any] = {}
    if self.layer_heads:
      heads = self.layer_heads[i]
      group = self.num_heads // self.kv_heads
      changes.update(num_heads=heads, head_size=cfg.head_dim,
                     num_kv_heads=heads // group if self.num_kv_heads else 0)
    if self.layer_mlp_dims:
      changes["mlp_dim"] = self.layer_mlp_dims[i]
    if not changes:
      return cfg
    return dataclasses.replace(cfg, layer_dims=(), layer_heads=(), layer_mlp_dims=(), **changes)

  @property
  def heads_by_layer(self) -> tuple[int, ...]:
    return self.layer_heads or (self.num_heads,) * self.num_layers

  @property
  def mlp_dims_by_layer(self) -> tuple[int, ...]:
    return self.layer_mlp_dims or (self.mlp_dim,) * self.num_layers
