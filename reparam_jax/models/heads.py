"""Task heads on the Transformer encoder, and the encoder-with-heads model.

`EncoderWithHeads` keeps the backbone's parameters at the top level of the
tree (`embed/...`, `block_{i}/...`, `pooler/...`, exactly the tree of a bare
`Transformer`) and adds each head as one more top-level key:

  mlm_head/{transform/{kernel,bias}, ln/{scale,bias}, bias [vocab]}
  nsp_head/out/{kernel,bias}
  classifier/{ln/{scale,bias}, out/{kernel,bias}}
  classifier/feature_proj/{kernel,bias}  (with a feature projection, see below)

so reparameterization rules written for the LM (`block_\\d+/mlp/...`) apply
unchanged, and fine-tuning from a pre-training checkpoint loads every key
the two trees share (the backbone) and initialises the new head.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.layers import Dense, LayerNorm, materialize
from reparam_jax.models.stack import LayerTransform
from reparam_jax.models.transformer import Transformer

Array = jax.Array


class MlmHead(nn.Module):
  """BERT's LM head: Dense → GELU → LayerNorm, then logits against the tied
  token embedding table plus a per-token bias."""

  layer_norm_eps: float = 1e-12
  gelu_approximate: bool = False

  @nn.compact
  def __call__(self, hidden_BxPxD: Array, table_VxD: Array) -> Array:
    d = hidden_BxPxD.shape[-1]
    h = Dense(d, ("embed", "mlp"), name="transform")(hidden_BxPxD)
    h = LayerNorm(self.layer_norm_eps, name="ln")(nn.gelu(h, approximate=self.gelu_approximate))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      (table_VxD.shape[0],), jnp.float32)
    return jnp.einsum("bpd,vd->bpv", h, table_VxD.astype(h.dtype)) + bias


class NspHead(nn.Module):
  """Two logits (1 = segment B follows A) from the pooled representation."""

  @nn.compact
  def __call__(self, pooled_BxD: Array) -> Array:
    return Dense(2, ("embed", None), name="out")(pooled_BxD)


class ClassifierHead(nn.Module):
  """LayerNorm → Dropout → Linear on the pooled representation (the seeds' head).

  `feature_proj_dim > 0` first maps the pretrained features linearly to that
  many dimensions (`feature_proj`, the seeds' "feature projection" for
  fine-tuning): the classifier then sees a low-dimensional view, which with
  a frozen backbone (`finetune.freeze='all_but_head'`) is a learned
  linear-projection probe.
  """

  num_classes: int
  dropout: float = 0.1
  layer_norm_eps: float = 1e-12
  norm: bool = True  # False: Dropout → Linear only (Hugging Face BertForSequenceClassification)
  feature_proj_dim: int = 0  # > 0: Linear(D → feature_proj_dim) before the classifier

  @nn.compact
  def __call__(self, pooled_BxD: Array, train: bool) -> Array:
    if self.feature_proj_dim:
      pooled_BxD = Dense(self.feature_proj_dim, ("embed", None), name="feature_proj")(pooled_BxD)
    h = LayerNorm(self.layer_norm_eps, name="ln")(pooled_BxD) if self.norm else pooled_BxD
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    return Dense(self.num_classes, ("embed", None), name="out")(h)


def pool(hidden_BxLxD: Array, padding_mask_BxL: Array | None, pooled_BxD: Array | None,
         mode: str) -> Array:
  """`cls`: the backbone's pooler output (or the first token); `mean`: masked mean."""
  if mode == "cls":
    return hidden_BxLxD[:, 0] if pooled_BxD is None else pooled_BxD
  if mode == "mean":
    if padding_mask_BxL is None:
      return hidden_BxLxD.mean(1)
    m = padding_mask_BxL.astype(hidden_BxLxD.dtype)[..., None]
    return (hidden_BxLxD * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  raise ValueError(f"unknown pooling {mode!r}; use 'cls' or 'mean'")


class EncoderWithHeads(nn.Module):
  """A non-causal `Transformer` plus the heads named in `heads`.

  Returns the backbone's dict (`hidden`, `pooled` when the backbone has a
  pooler) plus `sentence` (the pooled representation the heads read),
  `mlm_logits` [B, P, V] when `mlm_positions_BxP` is given, `nsp_logits`
  [B, 2] and `logits` [B, C] for the classifier.  Inputs are positional so
  a task's `init_args()` can pass them all.
  """

  cfg: TransformerConfig
  heads: Sequence[str] = ("classifier",)  # any of "mlm", "nsp", "classifier"
  num_classes: int = 2
  classifier_dropout: float = 0.1
  pooling: str = "cls"
  classifier_norm: bool = True  # the classifier's LayerNorm (absent in imported HF models)
  classifier_feature_proj_dim: int = 0  # > 0: project features to this width first
  layer_transform: LayerTransform | None = None  # see models/stack.py

  def setup(self):
    self.backbone = Transformer(self.cfg, layer_transform=self.layer_transform)
    nn.share_scope(self, self.backbone)  # backbone params at the top level
    eps = self.cfg.layer_norm_eps
    if "mlm" in self.heads:
      self.mlm_head = MlmHead(eps, self.cfg.gelu_approximate)
    if "nsp" in self.heads:
      self.nsp_head = NspHead()
    if "classifier" in self.heads:
      self.classifier = ClassifierHead(self.num_classes, self.classifier_dropout, eps,
                                       self.classifier_norm, self.classifier_feature_proj_dim)

  def __call__(self, ids_BxL: Array, padding_mask_BxL: Array | None = None,
               token_types_BxL: Array | None = None, mlm_positions_BxP: Array | None = None,
               *, train: bool = False) -> dict[str, Array]:
    out = dict(self.backbone(ids_BxL, padding_mask_BxL=padding_mask_BxL,
                             token_types_BxL=token_types_BxL, train=train))
    out["sentence"] = pool(out["hidden"], padding_mask_BxL, out.get("pooled"), self.pooling)
    if "mlm" in self.heads and mlm_positions_BxP is not None:
      gathered = jnp.take_along_axis(out["hidden"], mlm_positions_BxP[..., None], axis=1)
      table = materialize(nn.meta.unbox(self.variables["params"]["embed"]["token"]["embedding"]))
      out["mlm_logits"] = self.mlm_head(gathered, table)
    if "nsp" in self.heads:
      out["nsp_logits"] = self.nsp_head(out["sentence"])
    if "classifier" in self.heads:
      out["logits"] = self.classifier(out["sentence"], train)
    return out
