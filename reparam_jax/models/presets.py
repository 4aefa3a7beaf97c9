"""Published architectures as `TransformerConfig` keyword presets.

Parameter counts (checked in tests with `jax.eval_shape`):
  gpt2_small  124,439,808   (Radford et al. 2019; HF `gpt2`)
  gpt2_medium 354,823,168
  bert_base   109,482,240   (Devlin et al. 2019, with pooler; HF `bert-base-uncased`)
  albert_base  11,683,584   (Lan et al. 2020, with pooler, no MLM head; HF `AlbertModel`
                             of `albert-base-v2`; the paper's table rounds it to 12M)
"""

from __future__ import annotations

from typing import Any

_GPT2 = dict(vocab_size=50257, max_len=1024, causal=True, pre_norm=True, tie_embeddings=True,
             gelu_approximate=True, layer_norm_eps=1e-5)
_BERT = dict(vocab_size=30522, max_len=512, causal=False, pre_norm=False, type_vocab_size=2,
             embed_norm=True, pooler=True, gelu_approximate=False, layer_norm_eps=1e-12)

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
}
