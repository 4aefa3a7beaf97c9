"""Published architectures as `TransformerConfig` keyword presets.

Parameter counts (checked in tests with `jax.eval_shape`):
  gpt2_small  124,439,808   (Radford et al. 2019; HF `gpt2`)
  gpt2_medium 354,823,168
  bert_base   109,482,240   (Devlin et al. 2019, with pooler; HF `bert-base-uncased`)
  t5_small     60,506,624   (HF `t5-small`, tied)
  t5_v1_1_small 76,961,152  (HF `google/t5-v1_1-small`)
  albert_base  11,683,584   (Lan et al. 2020, with pooler, no MLM head; HF `AlbertModel`
                             of `albert-base-v2`; the paper's table rounds it to 12M)
"""

from __future__ import annotations

from typing import Any

_GPT2 = dict(vocab_size=50257, max_len=1024, causal=True, pre_norm=True, tie_embeddings=True,
             gelu_approximate=True, layer_norm_eps=1e-5)
_BERT = dict(vocab_size=30522, max_len=512, causal=False, pre_norm=False, type_vocab_size=2,
             embed_norm=True, pooler=True, gelu_approximate=False, layer_norm_eps=1e-12)

# T5 (Raffel et al. 2020; HF `t5-small`): pre-RMSNorm, no biases, relative position
# buckets, unscaled attention logits, ReLU MLP, tied output scaled by d^-½.
_T5 = dict(vocab_size=32128, max_len=512, pre_norm=True, norm="rms", use_bias=False,
           relative_buckets=32, relative_max_distance=128, attention_scale=False,
           layer_norm_eps=1e-6, activation="relu", tie_embeddings=True, tied_logits_scale=True)
# T5 v1.1 (HF `google/t5-v1_1-small`): gated GELU (tanh form), untied output layer.
_T5_V1_1 = dict(_T5, activation="gelu", gelu_approximate=True, mlp_gated=True,
                tie_embeddings=False, tied_logits_scale=False)

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2_small": dict(_GPT2, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    "gpt2_medium": dict(_GPT2, num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096),
    "bert_base": dict(_BERT, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    "bert_tiny": dict(_BERT, num_layers=2, num_heads=2, embed_dim=128, mlp_dim=512),
    # ALBERT: factorised embedding (E=128) and one block shared by all 12 layers;
    # v2 uses the tanh GELU.
    "albert_base": dict(_BERT, vocab_size=30000, embed_proj_dim=128, share_layers=True,
                        gelu_approximate=True, num_layers=12, num_heads=12, embed_dim=768,
                        mlp_dim=3072),
    # Encoder–decoders (models/seq2seq.py).
    "t5_small": dict(_T5, num_layers=6, num_heads=8, embed_dim=512, mlp_dim=2048, head_size=64),
    "t5_v1_1_small": dict(_T5_V1_1, num_layers=8, num_heads=6, embed_dim=512, mlp_dim=1024,
                          head_size=64),
    # The original Transformer base (Vaswani et al. 2017): post-LN, sinusoidal positions,
    # embeddings × √d, ReLU, biases, one table for both embeddings and the output layer.
    "transformer_base": dict(vocab_size=37000, max_len=512, pre_norm=False, sinusoidal=True,
                             embed_scale=True, activation="relu", use_bias=True,
                             tie_embeddings=True, layer_norm_eps=1e-6, num_layers=6,
                             num_heads=8, embed_dim=512, mlp_dim=2048),
}
