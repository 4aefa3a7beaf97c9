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


# Beam search of an imported T5 against `transformers`' beam search.  A vocabulary of 12 makes
# EOS likely enough that hypotheses end at many lengths, where the length penalty, the
# stopping rule and which candidates may finish decide the winner.
T5_VOCAB, BEAMS, NEW = 12, 3, 8


def _t5_folder(tmp_path) -> tuple:
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=T5_VOCAB, d_model=16, d_kv=8, num_heads=2, d_ff=32,
                                 num_layers=2, dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  # Matrices drawn from N(0, 1): varied, confident log-probs (init scale is nearly uniform,
  # where float error could flip a ranking).
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0.0, 1.0, generator=g)
  return model, hf_refs.save_model(model, str(tmp_path / "hf"), True)


def test_t5_beam_search_equals_transformers_generate(tmp_path):
  from reparam_jax.generation import seq2seq

  model, folder = _t5_folder(tmp_path)
  params, cfg, heads, _ = importer.import_folder(folder)
  ours = importer.build_model(cfg, heads, encoder_decoder=True)
  rng = np.random.default_rng(0)
  inputs = [rng.integers(2, T5_VOCAB, n).tolist() for n in rng.integers(3, 9, 12)]
  # Three inputs (found by a search over 200) where transformers' default stopping rule and
  # early_stopping="never" give different outputs for length_penalty ≥ 1.
  inputs += [[5, 3, 2, 5], [11, 11, 3, 8, 8, 5, 2, 7], [3, 2, 6, 4]]
  ids = np.zeros((len(inputs), 8), np.int64)  # right-padded with T5's pad id, masked
  for row, src in enumerate(inputs):
    ids[row, :len(src)] = src
  mask = (np.arange(8) < np.array([len(s) for s in inputs])[:, None]).astype(np.int64)
  outputs = {}
  for alpha in (0.0, 0.6, 1.0, 2.0):
    for early_stopping in (False, True, "never"):
      got = seq2seq.generate(ours, params, inputs, NEW, start_id=0, eos_id=1, pad_id=0,
                             beam=seq2seq.Beam(BEAMS, alpha, early_stopping))
      with torch.no_grad():
        ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                             num_beams=BEAMS, length_penalty=alpha,
                             early_stopping=early_stopping, max_new_tokens=NEW,
                             do_sample=False, decoder_start_token_id=0, eos_token_id=1,
                             pad_token_id=0)
      case = f"length_penalty={alpha}, early_stopping={early_stopping!r}"
      rows = []
      for row in range(len(inputs)):
        expected = ref[row, 1:].tolist()  # after the decoder start token; EOS fills the rest
        expected = expected[:expected.index(1) + 1] if 1 in expected else expected
        assert got.tokens[row, :got.lengths[row]].tolist() == expected, f"{case}, input {row}"
        assert (got.tokens[row, got.lengths[row]:] == 0).all()
        rows.append(tuple(expected))
      outputs[alpha, early_stopping] = rows
  lengths = {len(r) for r in outputs[0.0, False]}
  assert min(lengths) < NEW and max(lengths) == NEW  # ends by EOS and at the length limit
  # The three stopping rules pick different outputs here: a mix-up would show.
  assert any(outputs[a, False] != outputs[a, "never"] for a in (0.6, 1.0, 2.0))
  assert any(outputs[a, False] != outputs[a, True] for a in (0.0, 0.6, 1.0, 2.0))


def test_sample_from_a_t5_folder_equals_transformers_greedy_generate(tmp_path, raw_data_dir):
  """`sample` on a T5 folder holding only `spiece.model`: the prompt encoded with the
  folder's tokenizer (EOS appended, as transformers' T5 tokenizer does), decoding from the
  config's decoder start token to its EOS, gives transformers' greedy tokens."""
  import io  # noqa: PLC0415

  import sentencepiece  # noqa: PLC0415

  from reparam_jax import sample  # noqa: PLC0415
  from reparam_jax.data.tokenizers import load_tokenizer  # noqa: PLC0415
  from reparam_jax.tasks.seq2seq import Vocabulary  # noqa: PLC0415

  with open(f"{raw_data_dir}/tinyshakespeare/input.txt", encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n")[:4000] if line.strip()]
  spm = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=spm, minloglevel=2, model_type="unigram",
      vocab_size=300, normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1)
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=300 + 100 + 12, d_model=32, d_kv=8, num_heads=4,
                                 d_ff=48, num_layers=2, dropout_rate=0.0,
                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():  # varied, confident outputs (see _t5_folder)
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0.0, 1.0, generator=g)
  folder = hf_refs.save_model(model, str(tmp_path / "hf"), True)
  with open(f"{folder}/spiece.model", "wb") as f:
    f.write(spm.getvalue())
  with open(f"{folder}/tokenizer_config.json", "w", encoding="utf-8") as f:
    f.write('{"tokenizer_class": "T5Tokenizer", "extra_ids": 100}')
  theirs = transformers.AutoTokenizer.from_pretrained(folder)
  prompts = ["ROMEO: <extra_id_0> my lord", "What say you to <extra_id_0>?",
             "First Citizen: we are accounted poor citizens"]
  texts = sample.main([f"--workdir={folder}", "--temperature=0", "--num_tokens=10",
                       *[f"--prompt={p}" for p in prompts[:1]]])
  vocab = Vocabulary.of_pretrained(load_tokenizer(folder))
  outputs = []
  for prompt in prompts:
    ids = theirs(prompt, return_tensors="pt")
    with torch.no_grad():
      ref = model.generate(**ids, max_new_tokens=10, do_sample=False)[0, 1:].tolist()
    ref = ref[:ref.index(1) + 1] if 1 in ref else ref
    assert vocab.encode(prompt) + [1] == ids["input_ids"][0].tolist(), prompt
    got = sample.main([f"--workdir={folder}", "--temperature=0", "--num_tokens=10",
                       f"--prompt={prompt}"])
    assert got == [vocab.decode(ref)], prompt
    outputs.append(tuple(ref))
    if prompt == prompts[0]:
      assert got == texts
  assert len(set(outputs)) == len(prompts)  # the answers depend on the input
