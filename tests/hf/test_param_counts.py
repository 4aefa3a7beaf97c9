"""The published GPT-2 small / BERT-base sizes map onto the presets' parameter counts.

The Hugging Face models are built on torch's `meta` device (shapes, no
memory) and their tensors passed as zero-stride numpy arrays, so the real
mapping code runs on the full-size trees without allocating them.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reparam_jax.hf import importer  # noqa: E402
from reparam_jax.models import PRESETS, TransformerConfig  # noqa: E402


def _shape_only_state(model) -> dict[str, np.ndarray]:
  zero = np.zeros((), np.float32)
  return {k: np.broadcast_to(zero, tuple(v.shape)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,expected", [("gpt2_small", 124_439_808),
                                           ("bert_base", 109_482_240)])
def test_full_size_counts(name, expected):
  if name == "gpt2_small":
    config, cls = transformers.GPT2Config(), transformers.GPT2LMHeadModel
  else:
    config, cls = transformers.BertConfig(), transformers.BertModel
  with torch.device("meta"):
    model = cls(config)
  params, cfg, heads = importer.import_tensors(config.to_dict(), _shape_only_state(model),
                                                 name)
  assert heads == {}
  n = sum(int(np.prod(x.shape)) for x in _leaves(params))
  assert n == expected
  # The derived architecture is the preset, up to the dropout rates Hugging Face trains with.
  preset = TransformerConfig(**PRESETS[name])
  for field in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len",
                "causal", "pre_norm", "type_vocab_size", "embed_norm", "pooler",
                "tie_embeddings", "gelu_approximate", "layer_norm_eps"):
    assert getattr(cfg, field) == getattr(preset, field), field


def _leaves(tree):
  for v in tree.values():
    yield from (_leaves(v) if isinstance(v, dict) else [v])
