"""Published architectures as `TransformerConfig` keyword presets.

Parameter counts (checked in tests with `jax.eval_shape`):
  gpt2_small  124,439,808   (Radford et al. 2019; HF `gpt2`)
  gpt2_medium 354,823,168
  bert_base   109,482,240   (Devlin et al. 2019, with pooler; HF `bert-base-uncased`)
  t5_small     60,506,624   (HF `t5-small`, tied)
  t5_v1_1_small 76,961,152  (HF `google/t5-v1_1-small`)
  albert_base  11,683,584   (Lan et al. 2020, with pooler, no MLM head; HF `AlbertModel`
                             of `albert-base-v2`; the paper's table rounds it to 12M)

The Llama family's presets are what the importer makes of each model's published
config.json, with transformers' own parameter counts (tests/hf/test_llama.py):
  smollm2_135m    134,515,008   (HF `HuggingFaceTB/SmolLM2-135M`, tied)
  smollm2_360m    361,821,120   (`HuggingFaceTB/SmolLM2-360M`, tied)
  qwen2_5_0_5b    494,032,768   (`Qwen/Qwen2.5-0.5B`, tied, q/k/v biases)
  llama3_2_1b   1,235,814,400   (`meta-llama/Llama-3.2-1B`, tied)
  llama3_1_8b   8,030,261,248   (`meta-llama/Llama-3.1-8B`)
  llama3_1_70b 70,553,706,496   (`meta-llama/Llama-3.1-70B`)
  gemma_2b      2,506,172,416   (`google/gemma-2b`, tied, one key/value head; hf/gemma.py,
                                 tests/hf/test_gemma.py)
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

# Llama-family decoders: pre-RMSNorm, SwiGLU MLP, RoPE, no biases, grouped-query attention.
_LLAMA = dict(causal=True, pre_norm=True, norm="rms", activation="silu", mlp_gated=True,
              rope=True, use_bias=False)
_SMOLLM2 = dict(_LLAMA, vocab_size=49152, max_len=8192, layer_norm_eps=1e-5,
                rope_base=100000.0, tie_embeddings=True)
_LLAMA3_1 = dict(_LLAMA, vocab_size=128256, max_len=131072, layer_norm_eps=1e-5,
                 rope_base=500000.0, rope_scaling="llama3", rope_factor=8.0,
                 rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                 rope_original_max_len=8192, tie_embeddings=False)

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
    # Llama family (hf/llama.py imports and exports their checkpoints).
    "smollm2_135m": dict(_SMOLLM2, num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576,
                         mlp_dim=1536),
    "smollm2_360m": dict(_SMOLLM2, num_layers=32, num_heads=15, num_kv_heads=5, embed_dim=960,
                         mlp_dim=2560),
    "qwen2_5_0_5b": dict(_LLAMA, use_bias=False, qkv_bias=True, vocab_size=151936,
                         max_len=32768, layer_norm_eps=1e-6, rope_base=1000000.0,
                         tie_embeddings=True, num_layers=24, num_heads=14, num_kv_heads=2,
                         embed_dim=896, mlp_dim=4864),
    "llama3_2_1b": dict(_LLAMA3_1, rope_factor=32.0, tie_embeddings=True, num_layers=16,
                        num_heads=32, num_kv_heads=8, embed_dim=2048, mlp_dim=8192),
    "llama3_1_8b": dict(_LLAMA3_1, num_layers=32, num_heads=32, num_kv_heads=8,
                        embed_dim=4096, mlp_dim=14336),
    "llama3_1_70b": dict(_LLAMA3_1, num_layers=80, num_heads=64, num_kv_heads=8,
                         embed_dim=8192, mlp_dim=28672),
    # Gemma (v1): the Llama layout with embeddings × √d and a tanh-GELU gated MLP
    # (hf/gemma.py); 8 heads of 256 = hidden_size, so no head_size of its own.
    "gemma_2b": dict(_LLAMA, activation="gelu", gelu_approximate=True, embed_scale=True,
                     vocab_size=256000, max_len=8192, layer_norm_eps=1e-6, rope_base=10000.0,
                     tie_embeddings=True, num_layers=18, num_heads=8, num_kv_heads=1,
                     embed_dim=2048, mlp_dim=16384),
}
