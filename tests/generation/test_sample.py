"""`python -m reparam_jax.sample` on a tiny trained run and on pretrained GPT-2 folders:
prompt files, batches, the model's own tokenizer, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from reparam_jax import convert_hf, sample, train
from reparam_jax.data import hf_tokenizers
from reparam_jax.generation import decode
from reparam_jax.hf import exporter, gpt2, importer
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.rundir import checkpoint
from tests.helpers import REPO, tiny_args


@pytest.fixture(scope="module")
def run(tmp_path_factory, raw_data_dir, tfds_dir):
  workdir = str(tmp_path_factory.mktemp("lm"))
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=4, eval_every=4,
                       checkpoint_every=4))
  return workdir


@pytest.mark.heavy
def test_a_prompt_file_in_batches_gives_each_rows_own_greedy_text(run, tmp_path):
  prompts = ["ROMEO:", "O", "First Citizen:"]  # the tiny run's context is 16 characters
  path = tmp_path / "prompts.txt"
  path.write_text("\n".join(prompts) + "\n\n")  # a blank line is not a prompt
  common = [f"--workdir={run}", f"--prompt_file={path}", "--num_tokens=24", "--temperature=0"]
  batched = sample.main(common + ["--batch_size=2"])
  alone = [sample.main([f"--workdir={run}", f"--prompt={p}", "--num_tokens=24",
                        "--temperature=0"])[0] for p in prompts]
  assert batched == alone
  for text, prompt in zip(batched, prompts):
    assert text.startswith(prompt) and len(text) == len(prompt) + 24  # one char a token


def test_past_the_context_and_sampling_flags(run):
  # The tiny run's context is 16 tokens: 40 new ones need windows.
  (text,) = sample.main([f"--workdir={run}", "--prompt=ROMEO:", "--num_tokens=40",
                         "--top_k=5", "--top_p=0.9", "--seed=3"])
  assert len(text) == len("ROMEO:") + 40


@pytest.mark.parametrize("args, message", [
    (["--top_p=0"], "top_p=0.0 is outside (0, 1]"),
    (["--temperature=-1"], "temperature=-1.0 is negative"),
    (["--prompt="], "encodes to no tokens"),
    (["--prompt_file=/nonexistent/prompts.txt"], "cannot read --prompt_file"),
    (["--stop_token_ids=a,b"], "expected comma-separated integers"),
])
def test_bad_input_is_one_line_and_exit_2(run, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    sample.main([f"--workdir={run}", "--num_tokens=4"] + args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]


# --- Pretrained GPT-2s: a Hugging Face folder and its convert_hf output ------------------

LINES = ["ROMEO: But soft, what light through yonder window breaks?",
         "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
         "First Citizen: Before we proceed any further, hear me speak."]
PROMPTS = ["ROMEO: But soft", "JULIET: wherefore", "First"]


def _subprocess(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
  """A tiny random GPT2LMHeadModel folder (config.json, model.safetensors, tokenizer.json)
  written by the project's own exporter, with a byte-level BPE trained on a few lines;
  and the params and tokenizer it holds."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(LINES * 4, vocab_size=300, special_tokens=["<|endoftext|>"])
  # Untied output layer and larger weights: a tiny tied random model repeats its last token.
  cfg = TransformerConfig(**gpt2.model_fields(dict(
      n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=bpe.get_vocab_size(),
      tie_word_embeddings=False)))
  model = Transformer(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(lambda x: np.asarray(x * 4.0 if x.ndim == 2 else x), params)
  ckpt = tmp_path_factory.mktemp("ckpt")
  checkpoint.save_params(str(ckpt / "params"), params)
  (ckpt / importer.MODEL_FILE).write_text(json.dumps(importer.model_section(cfg)))
  bpe.save(str(ckpt / hf_tokenizers.FILENAME))
  folder = str(tmp_path_factory.mktemp("gpt2"))
  exporter.export(str(ckpt), folder)
  return folder, model, params, hf_tokenizers.load(folder)


def _greedy_texts(model, params, tokenizer, n):
  """The project's own greedy continuation of each prompt, decoded with `tokenizer`."""
  ids = [tokenizer.encode(p).tolist() for p in PROMPTS]
  out = decode.generate(model, params, ids, n, decode.Sampling(temperature=0.0))
  return [p + tokenizer.decode(out.tokens[r, :out.lengths[r]].tolist())
          for r, p in enumerate(PROMPTS)]


def test_sample_decodes_a_hugging_face_gpt2_folder_and_its_convert_hf_output(gpt2_folder,
                                                                            tmp_path):
  folder, model, params, tokenizer = gpt2_folder
  assert tokenizer.kind == "BPE" and len(tokenizer.encode(PROMPTS[0])) < len(PROMPTS[0])
  expected = "\n\n".join(_greedy_texts(model, params, tokenizer, 12)) + "\n"
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(PROMPTS) + "\n")
  args = [f"--prompt_file={prompts}", "--num_tokens=12", "--temperature=0"]
  direct = _subprocess("reparam_jax.sample", f"--workdir={folder}", *args)
  assert direct.returncode == 0, direct.stderr
  assert direct.stdout == expected
  converted = str(tmp_path / "converted")
  convert_hf.main([f"--from={folder}", f"--to={converted}"])
  from_converted = _subprocess("reparam_jax.sample", f"--workdir={converted}", *args)
  assert from_converted.returncode == 0, from_converted.stderr
  assert from_converted.stdout == expected


def test_a_folder_that_is_not_a_decoder_lm_is_one_line_and_exit_2(raw_data_dir, tmp_path,
                                                                   capsys):
  minilm = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  if not os.path.isdir(minilm):
    pytest.skip(f"{minilm} not found")
  cases = [(minilm, "not a decoder language model"),
           (str(tmp_path), "neither a training workdir")]
  for workdir, message in cases:
    with pytest.raises(SystemExit) as exit_info:
      sample.main([f"--workdir={workdir}", "--prompt=hello", "--num_tokens=4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_continuation_keeps_the_space_a_sentencepiece_decoder_drops_alone(tmp_path,
                                                                             raw_data_dir):
  """Llama 2's SentencePiece decoder strips the leading space of the first token it
  decodes; after a prompt that space separates two words and must stay."""
  import io  # noqa: PLC0415

  import sentencepiece  # noqa: PLC0415

  from reparam_jax.generation.text import continuation  # noqa: PLC0415
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n")[:4000] if line.strip()]
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, minloglevel=2, model_type="bpe",
      vocab_size=400, byte_fallback=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
  (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
  (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
  tokenizer = hf_tokenizers.load(str(tmp_path))
  prompt, whole = tokenizer.encode("ROMEO: my").tolist(), tokenizer.encode(
      "ROMEO: my lord, é").tolist()
  assert whole[:len(prompt)] == prompt
  new = whole[len(prompt):]
  assert tokenizer.decode(new) == "lord, é"  # alone: the space is gone
  assert continuation(tokenizer, prompt, new) == " lord, é"


def test_sample_from_a_llama_folder_with_a_sentencepiece_tokenizer(tmp_path, raw_data_dir):
  """A Llama 2-style folder (tokenizer.model only): `sample` prints the prompt and the
  continuation decoded in context, so the space before a generated word stays."""
  import io  # noqa: PLC0415

  import sentencepiece  # noqa: PLC0415

  from tests.hf.test_llama_run import _hf_folder  # noqa: PLC0415
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    text = f.read()[:100_000]
  folder = _hf_folder(tmp_path, text)  # vocabulary 300
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([t for t in text.split("\n") if t.strip()]), model_writer=model,
      minloglevel=2, model_type="bpe", vocab_size=300, normalization_rule_name="identity",
      remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
  os.remove(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
    f.write(model.getvalue())
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    f.write('{"tokenizer_class": "LlamaTokenizer"}')
  tokenizer = hf_tokenizers.load(folder)
  params, cfg, _, _ = importer.import_folder(folder)
  # A one-word prompt after which the random model's first token starts a new word (▁).
  words = [w for w in dict.fromkeys(text.split()) if len(tokenizer.encode(w)) == 2][:200]
  out = decode.generate(Transformer(cfg), params, [tokenizer.encode(w).tolist() for w in words],
                        6, decode.Sampling(temperature=0.0))
  row = next(i for i in range(len(words))
             if tokenizer.backend.id_to_token(int(out.tokens[i, 0])).startswith("▁"))
  prompt, new = tokenizer.encode(words[row]).tolist(), out.tokens[row, :out.lengths[row]].tolist()
  texts = sample.main([f"--workdir={folder}", f"--prompt={words[row]}", "--num_tokens=6",
                       "--temperature=0", "--stop_token_ids=2"])
  assert texts == [tokenizer.decode(prompt + new)] and texts[0][len(words[row])] == " "
