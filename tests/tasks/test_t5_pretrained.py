"""A pretrained T5 folder end to end without torch: its SentencePiece tokenizer and
sentinels (the model's own ids, not the project's layout), `sample` from the folder and
its `convert_hf` output, and span-corruption fine-tuning started from it."""

from __future__ import annotations

import io
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from reparam_jax import convert_hf, export_hf, sample, train
from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.hf import importer
from reparam_jax.models import TransformerConfig
from reparam_jax.models.seq2seq import EncoderDecoder
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.tasks.seq2seq import EOS, PAD, Seq2SeqTask, Vocabulary
from tests.helpers import REPO

SPM_SIZE, SENTINELS = 300, 100
T5 = dict(num_layers=1, num_decoder_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
          head_size=8, max_len=0, pre_norm=True, norm="rms", use_bias=False,
          relative_buckets=8, relative_max_distance=16, attention_scale=False,
          activation="gelu", mlp_gated=True, tie_embeddings=False, tied_logits_scale=False,
          layer_norm_eps=1e-6, causal=False, vocab_size=SPM_SIZE + SENTINELS + 12)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory, raw_data_dir):
  """A T5ForConditionalGeneration folder as the Hub holds one: safetensors, config.json and
  only `spiece.model` for the tokenizer (T5 v1.1's layout), vocabulary padded past the
  sentinels as T5's 32128 is."""
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n")[:4000] if line.strip()]
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, minloglevel=2, model_type="unigram",
      vocab_size=SPM_SIZE, normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1)
  root = tmp_path_factory.mktemp("t5")
  cfg = TransformerConfig(**T5)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = EncoderDecoder(cfg).init(jax.random.key(0), ids, ids)["params"]
  converted = root / "converted"
  os.makedirs(converted)
  checkpoint.save_params(str(converted / "params"), flax.linen.meta.unbox(params))
  (converted / importer.MODEL_FILE).write_text(json.dumps(importer.model_section(cfg)))
  folder = root / "hf"
  export_hf.export(str(converted), str(folder))
  (folder / "spiece.model").write_bytes(model.getvalue())
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "T5Tokenizer", "extra_ids": SENTINELS}))
  return str(folder)


def test_a_t5_tokenizer_keeps_its_own_ids_and_sentinels(t5_folder):
  tokenizer = load_tokenizer(t5_folder)
  vocab = Vocabulary.of_pretrained(tokenizer)
  assert vocab.offset == 0 and vocab.num_sentinels == SENTINELS
  assert vocab.sentinel(0) == SPM_SIZE + SENTINELS - 1 and vocab.sentinel(99) == SPM_SIZE
  text = "ROMEO: <extra_id_0> thee<extra_id_1> love"
  ids = vocab.encode(text)
  assert ids == tokenizer.encode(text).tolist()  # the tokenizer's ids, unshifted
  assert ids.count(vocab.sentinel(0)) == ids.count(vocab.sentinel(1)) == 1
  assert vocab.decode(ids + [EOS, 5]) == "ROMEO:<extra_id_0>thee<extra_id_1>love"
  # A run's tokenizer asked for more sentinels than it has is a one-line error.
  with pytest.raises(UserError, match="has 100 sentinels"):
    Vocabulary(tokenizer, SENTINELS + 1)


def test_sample_answers_from_a_t5_folder_and_its_convert_hf_output(t5_folder, tmp_path):
  converted = str(tmp_path / "converted")
  convert_hf.main([f"--from={t5_folder}", f"--to={converted}"])
  args = ["--prompt_file", str(tmp_path / "prompts.txt"), "--temperature=0", "--num_tokens=6"]
  (tmp_path / "prompts.txt").write_text("ROMEO: <extra_id_0> thee\nWhat say you?\n")
  from_folder = sample.main([f"--workdir={t5_folder}", *args])
  assert len(from_folder) == 2 and all(from_folder)
  assert sample.main([f"--workdir={converted}", *args]) == from_folder
  beams = sample.main([f"--workdir={t5_folder}", *args, "--beams=3"])
  assert len(beams) == 2


@pytest.mark.heavy
def test_span_corruption_fine_tunes_a_t5_folder_with_its_own_sentinels(
    t5_folder, tmp_path, raw_data_dir, tfds_dir):
  workdir = str(tmp_path / "run")
  overrides = {"init_from": t5_folder, "data.raw_dir": raw_data_dir, "data.tfds_dir": tfds_dir,
               "seq_len": 32, "batch_size": 8, "eval_batch_size": 64, "num_steps": 4,
               "eval_every": 4, "checkpoint_every": 4, "log_every": 2,
               "perf.cpu_devices": 0}
  args = [f"--config={os.path.join(REPO, 'configs', 'seq2seq', 't5_finetune.py')}",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  final = train.main(args)
  assert np.isfinite(final["eval/loss"])
  config = json.load(open(os.path.join(workdir, "config.json"), encoding="utf-8"))
  assert config["model"]["vocab_size"] == T5["vocab_size"]
  # The batches hide spans behind the folder's own sentinel ids, top of the vocabulary first.
  task = Seq2SeqTask(rundir.load_run(workdir).config, workdir)
  batch = next(iter(task.eval_batches()))
  top = SPM_SIZE + SENTINELS - 1
  assert task.vocab.offset == 0 and (batch["inputs"] == top).any()
  assert batch["inputs"].max() <= top and (batch["targets"][:, 0] == top).all()
  assert (batch["inputs"] != PAD).any()
  texts = sample.main([f"--workdir={workdir}", "--prompt=ROMEO: <extra_id_0> thee",
                       "--num_tokens=4", "--temperature=0"])
  assert len(texts) == 1

