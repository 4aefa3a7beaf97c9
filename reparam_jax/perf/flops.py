"""Model FLOPs per token, achieved FLOP/s and MFU of a Transformer train step.

Convention (PaLM, Chowdhery et al. 2022, appendix B), per *trained* token:

    model_flops_per_token = 6·N + 12·L·H·Q·T

* N — parameters that take part in a per-token matmul, counted as
  executed: a factored kernel `U Vᵀ` contributes `r·(d_in + d_out)`, not
  `d_in·d_out` (from `Reparam.report_rows`, which asks each
  transform).  N includes the output projection onto the vocabulary (the
  tied embedding table used as `x @ Eᵀ`, or an untied `lm_head`) and excludes
  embedding lookups (gathers), biases, norms and the BERT pooler (it sees one
  token per sequence).  6 = 2 FLOPs per multiply-add × (forward + 2 backward).
* 12·L·H·Q·T — attention scores `QKᵀ` and the weighted sum `PV`, 2·2·T·H·Q
  forward per token and layer, ×3 for training; H·Q = heads × head dim, T the
  training context length.
* Causal masking is **not** halved by default (PaLM's choice: the masked
  half is computed by most kernels anyway).  `causal_halved=True` uses
  6·L·H·Q·T instead, for kernels that really skip the masked blocks.

Model FLOPs exclude rematerialisation (that would be *hardware* FLOPs) and
the optimizer, norms, softmax and other element-wise work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reparam_jax.models.transformer import TransformerConfig
from reparam_jax.reparam import Reparam

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Training FLOPs per token, split into their two terms."""

  matmul_params: int  # N (effective, as executed)
  attention_flops: int  # 12·L·H·Q·T (or 6·… when halved)
  causal_halved: bool

  @property
  def per_token(self) -> int:
    return 6 * self.matmul_params + self.attention_flops


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


def matmul_params_from_tree(params: PyTree, reparam_cfg: Any, cfg: TransformerConfig) -> int:
  """N counted from the (θ) params tree, factored kernels as executed."""
  rp = Reparam.from_config(reparam_cfg if reparam_cfg is not None else {"rules": ()})
  total = rp.report_rows(params)[-1]
  # report_rows counts matmul FLOPs per token (2·MACs) of every 2-D
  # non-embedding weight; the pooler is one of them but runs once per sequence.
  pooler = 2 * cfg.embed_dim * cfg.embed_dim if cfg.pooler else 0
  return (int(total["flops"]) - pooler) // 2 + _output_head_params(cfg)


def model_flops(cfg: TransformerConfig, seq_len: int, params: PyTree | None = None,
                reparam_cfg: Any = None, causal_halved: bool = False) -> FlopCount:
  """Training FLOPs per token of `cfg` at context `seq_len` (see module doc).

  With `params` (concrete or `jax.eval_shape`d θ) N is counted from the tree,
  so reparameterized weights count what they execute; without, N is the
  dense model's.
  """
  n = (analytic_matmul_params(cfg) if params is None
       else matmul_params_from_tree(params, reparam_cfg, cfg))
  hq = cfg.num_heads * cfg.head_dim
  attn = (6 if causal_halved else 12) * cfg.num_layers * hq * seq_len
  return FlopCount(matmul_params=n, attention_flops=attn, causal_halved=causal_halved)


def achieved_flops_per_device(flops_per_token: float, tokens_per_sec_per_device: float) -> float:
  return flops_per_token * tokens_per_sec_per_device


def mfu(flops_per_token: float, tokens_per_sec_per_device: float, peak_flops: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
  if peak_flops <= 0:
    return float("nan")
  return achieved_flops_per_device(flops_per_token, tokens_per_sec_per_device) / peak_flops
