"""Greedy decoding of an imported GPT-2 equals `transformers`' greedy `generate`, token for token."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_refs  # noqa: E402

from reparam_jax.generation import decode  # noqa: E402
from reparam_jax.hf import importer  # noqa: E402

SIZES = {
    "tiny": dict(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=99),
    "odd": dict(n_embd=48, n_layer=3, n_head=3, n_inner=80, n_positions=40, vocab_size=131,
                activation_function="gelu", layer_norm_epsilon=1e-6),
    "untied": dict(n_embd=64, n_layer=4, n_head=4, n_positions=48, vocab_size=257,
                   tie_word_embeddings=False),
}


@pytest.mark.parametrize("size", list(SIZES))
def test_greedy_tokens_equal_transformers_generate(tmp_path, size):
  sizes = SIZES[size]
  model = hf_refs.gpt2(**sizes)
  # At its init scale a random GPT-2 repeats one token whatever the prompt, which would
  # leave the cache little to get wrong; matrices drawn from N(0, 0.5²) give varied
  # sequences whose top-two logits differ by ≫ the float error.
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0.0, 0.5)
  folder = hf_refs.save_model(model, str(tmp_path / "hf"), True)
  params, cfg, heads, _ = importer.import_folder(folder)
  ours = importer.build_model(cfg, heads)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, sizes["vocab_size"], n).tolist() for n in (5, 1, 11)]
  new = 16
  got = decode.generate(ours, params, prompts, new, decode.Sampling(temperature=0.0))
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      ref = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                             dtype=torch.long),
                           max_new_tokens=new, do_sample=False, pad_token_id=0)
    assert got.tokens[row].tolist() == ref[0, len(prompt):].tolist(), f"prompt {row}"
  assert max(len(set(row)) for row in got.tokens.tolist()) >= 4  # not one repeated token
