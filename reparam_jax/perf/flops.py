"""Model FLOPs per token, achieved FLOP/s and MFU of a Transformer train step.

Convention (PaLM, Chowdhery et al. 2022, appendix B), per *trained* token:

    model_flops_per_token = 6·N + 12·L·H·Q·T

* N — parameters that take part in a per-token matmul, counted as
  executed: a factored kernel `U Vᵀ` contributes `r·(d_in + d_out)`, not
  `d_in·d_out` (each transform says, `stats.matmul_flops_by_path`); a block
  shared across layers (`share_layers`) counts once per layer it runs in.
  N includes the output projection onto the vocabulary (the tied embedding
  table used as `x @ Eᵀ`, or an untied `lm_head`), and an MLM head (its
  transform and the tied decoder onto the vocabulary) at the share of
  positions it runs on, P masked positions of T.  It excludes embedding
  lookups (gathers), biases, norms and what sees one token per sequence (the
  BERT pooler, the NSP and classifier heads).  6 = 2 FLOPs per multiply-add ×
  (forward + 2 backward).  N may be fractional (an MLM head's P/T).
* 12·L·H·Q·T — attention scores `QKᵀ` and the weighted sum `PV`, 2·2·T·H·Q
  forward per token and layer, ×3 for training; H·Q = heads × head dim (the
  layer's width, which `layer_dims` sets per layer), T the training context
  length.
* Causal masking is **not** halved by default (PaLM's choice: the masked
  half is computed by most kernels anyway).  `causal_halved=True` uses
  6·L·H·Q·T instead, for kernels that really skip the masked blocks.

Model FLOPs exclude rematerialisation (that would be *hardware* FLOPs) and
the optimizer, norms, softmax and other element-wise work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reparam_jax.models.config import TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.stats import matmul_flops_by_path

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Training FLOPs per token, split into their two terms."""

  matmul_params: float  # N (effective, as executed; fractional with an MLM head)
  attention_flops: int  # 12·L·H·Q·T (or 6·… when halved)
  causal_halved: bool

  @property
  def per_token(self) -> int:
    return round(6 * self.matmul_params) + self.attention_flops


def _output_head_params(cfg: TransformerConfig) -> int:
  # A tied table is a gather on the way in (no FLOPs) and a matmul on the
  # way out; an untied `lm_head` kernel is already an ordinary 2-D weight.
  return cfg.embed_dim * cfg.vocab_size if cfg.causal and cfg.tie_embeddings else 0


def analytic_matmul_params(cfg: TransformerConfig) -> int:
  """N of a dense Transformer from its config alone (no parameters needed)."""
  d, m = cfg.embed_dim, cfg.mlp_dim
  per_layer = 4 * d * d + 2 * d * m  # q, k, v, out; fc_in, fc_out
  head = cfg.embed_dim * cfg.vocab_size if cfg.causal else 0
  return cfg.num_layers * per_layer + head


# Heads that see one pooled token per sequence: no per-token FLOPs.
_PER_SEQUENCE = ("pooler", "nsp_head", "classifier")


def matmul_params_from_tree(params: PyTree, reparam_cfg: Any, cfg: TransformerConfig,
                            seq_len: int = 0, mlm_positions: int = 0) -> float:
  """N counted from the (θ) params tree, factored kernels as executed.

  `mlm_positions`: P, the positions per sequence an MLM head runs on (of `seq_len`).
  """
  rp = Reparam.from_config(reparam_cfg if reparam_cfg is not None else {"rules": ()})
  mlm_share = mlm_positions / seq_len if mlm_positions and seq_len else 1.0
  flops = 0.0  # per token, 2·MACs
  for path, f in matmul_flops_by_path(params, rp.plan).items():
    top = path.split("/")[0]
    if top in _PER_SEQUENCE:
      continue
    if top == "block_shared":  # one set of weights, run by every layer
      f *= cfg.num_layers
    elif top == "mlm_head":
      f *= mlm_share
    flops += f
  decoder = cfg.embed_dim * cfg.vocab_size * mlm_share if "mlm_head" in params else 0.0
  return flops / 2 + _output_head_params(cfg) + decoder


def model_flops(cfg: TransformerConfig, seq_len: int, params: PyTree | None = None,
                reparam_cfg: Any = None, causal_halved: bool = False,
                mlm_positions: int = 0) -> FlopCount:
  """Training FLOPs per token of `cfg` at context `seq_len` (see module doc).

  With `params` (concrete or `jax.eval_shape`d θ) N is counted from the tree,
  so reparameterized weights count what they execute; without, N is the
  dense model's.
  """
  n = (analytic_matmul_params(cfg) if params is None
       else matmul_params_from_tree(params, reparam_cfg, cfg, seq_len, mlm_positions))
  hq_all_layers = sum(cfg.block_dims)  # H·Q of each layer is its width
  attn = (6 if causal_halved else 12) * hq_all_layers * seq_len
  return FlopCount(matmul_params=n, attention_flops=attn, causal_halved=causal_halved)


def achieved_flops_per_device(flops_per_token: float, tokens_per_sec_per_device: float) -> float:
  return flops_per_token * tokens_per_sec_per_device


def mfu(flops_per_token: float, tokens_per_sec_per_device: float, peak_flops: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
  if peak_flops <= 0:
    return float("nan")
  return achieved_flops_per_device(flops_per_token, tokens_per_sec_per_device) / peak_flops
