"""Imported GPT-2 / BERT models give PyTorch's logits (float32, max |Δ| ≤ 1e-4)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_refs  # noqa: E402

from reparam_jax.data import hf_tokenizers  # noqa: E402
from reparam_jax.errors import UserError  # noqa: E402
from reparam_jax.hf import importer  # noqa: E402
from reparam_jax.objectives.nsp import is_next_probability  # noqa: E402

TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GPT2_SIZES = {
    "tiny": dict(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=99),
    "odd": dict(n_embd=48, n_layer=3, n_head=3, n_inner=80, n_positions=24, vocab_size=131,
                activation_function="gelu", layer_norm_epsilon=1e-6),
    "untied": dict(n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=77,
                   tie_word_embeddings=False),
}
BERT_SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=16, vocab_size=101),
    "odd": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=72,
                max_position_embeddings=24, vocab_size=87, type_vocab_size=3,
                layer_norm_eps=1e-7, num_labels=3),
}


def _gpt2_logits(params, cfg, heads, ids):
  out = importer.build_model(cfg, heads).apply({"params": params}, jnp.asarray(ids, jnp.int32))
  return np.asarray(out["logits"])


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("size", list(GPT2_SIZES))
def test_gpt2_logits_match_pytorch(tmp_path, size, safetensors):
  sizes = GPT2_SIZES[size]
  model = hf_refs.gpt2(**sizes)
  folder = hf_refs.save_model(model, str(tmp_path / "hf"), safetensors)
  params, cfg, heads, _ = importer.import_folder(folder)
  assert cfg.tie_embeddings == sizes.get("tie_word_embeddings", True)
  ids = hf_refs.random_ids(sizes["vocab_size"], 3, sizes["n_positions"])
  with torch.no_grad():
    ref = model(torch.tensor(ids)).logits.numpy()
  got = _gpt2_logits(params, cfg, heads, ids)
  assert got.shape == ref.shape
  assert np.abs(got - ref).max() <= TOL


def _bert_inputs(vocab, length, type_vocab, batch=3):
  ids = hf_refs.random_ids(vocab, batch, length, seed=1)
  mask = np.ones_like(ids)
  mask[1, length // 2:] = 0  # padding on one row
  mask[2, length - 2:] = 0
  types = np.random.default_rng(2).integers(0, type_vocab, ids.shape)
  return ids, mask, types


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertForPreTraining",
                                      "BertForSequenceClassification", "BertModel"])
@pytest.mark.parametrize("size", list(BERT_SIZES))
def test_bert_outputs_match_pytorch(tmp_path, size, cls_name, safetensors):
  sizes = BERT_SIZES[size]
  model = hf_refs.bert(cls_name, **sizes)
  folder = hf_refs.save_model(model, str(tmp_path / "hf"), safetensors)
  params, cfg, heads, _ = importer.import_folder(folder)
  L = sizes["max_position_embeddings"]
  ids, mask, types = _bert_inputs(sizes["vocab_size"], L, sizes.get("type_vocab_size", 2))
  with torch.no_grad():
    ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types))
  positions = np.broadcast_to(np.arange(L), ids.shape)
  out = importer.build_model(cfg, heads).apply(
      {"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool),
      jnp.asarray(types, jnp.int32), jnp.asarray(positions, jnp.int32))
  pairs = {
      "BertForMaskedLM": [("mlm_logits", "logits")],
      "BertForPreTraining": [("mlm_logits", "prediction_logits"),
                             ("nsp_logits", "seq_relationship_logits")],
      "BertForSequenceClassification": [("logits", "logits")],
      "BertModel": [("hidden", "last_hidden_state"), ("pooled", "pooler_output")],
  }[cls_name]
  for ours, name in pairs:
    theirs = getattr(ref, name).numpy()
    assert out[ours].shape == theirs.shape, ours
    assert np.abs(np.asarray(out[ours]) - theirs).max() <= TOL, ours
  if cls_name == "BertForPreTraining":
    # The meaning, not only the logits: P(B follows A) as this project reads the
    # head equals transformers' (its label 0 is IsNext; docs of BertForPreTraining).
    theirs = torch.softmax(ref.seq_relationship_logits, -1)[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(is_next_probability(out["nsp_logits"])), theirs,
                               atol=1e-5)


def _tiny_gpt2_folder(tmp_path, safetensors=True):
  return hf_refs.save_model(hf_refs.gpt2(**GPT2_SIZES["tiny"]), str(tmp_path / "hf"), safetensors)


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, "w") as f:
    json.dump(config, f)


@pytest.mark.parametrize("changes,message", [
    (dict(model_type="gpt_neox"), "model_type 'gpt_neox' is not supported"),
    (dict(architectures=["GPT2ForSequenceClassification"]),
     "architecture GPT2ForSequenceClassification is not supported"),
    (dict(vocab_size=100), r"parameter embed/token/embedding \(from wte.weight\) has shape "
                           r"\(99, 32\) but config.json implies \(100, 32\)"),
    (dict(n_embd=64), r"parameter h.0.attn.c_attn.weight has shape \(32, 96\)"),
    (dict(n_layer=3), "parameter h.2.ln_1.weight is missing"),
    (dict(n_layer=1), "parameter h.1.attn.c_attn.bias has no place in a gpt2 model"),
    (dict(activation_function="relu"), "activation_function='relu' is not supported"),
])
def test_bad_folders_are_user_errors(tmp_path, changes, message):
  folder = _tiny_gpt2_folder(tmp_path)
  _edit_config(folder, **changes)
  with pytest.raises(UserError, match=message):
    importer.import_folder(folder)


def test_missing_files_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="is not a directory"):
    importer.import_folder(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="has no config.json"):
    importer.import_folder(str(tmp_path / "empty"))
  folder = _tiny_gpt2_folder(tmp_path)
  os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(UserError, match="has no model.safetensors or pytorch_model.bin"):
    importer.import_folder(folder)


def test_old_gamma_beta_names_and_prefixless_keys(tmp_path):
  """TF-era BERT checkpoints: LayerNorm.gamma/beta, no `bert.` prefix (BertModel)."""
  model = hf_refs.bert("BertModel", **BERT_SIZES["tiny"])
  state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                     "LayerNorm.beta"): v
           for k, v in model.state_dict().items()}
  folder = tmp_path / "old"
  folder.mkdir()
  model.config.to_json_file(str(folder / "config.json"))
  torch.save(state, str(folder / "pytorch_model.bin"), _use_new_zipfile_serialization=False)
  params, cfg, heads, _ = importer.import_folder(str(folder))
  np.testing.assert_array_equal(params["embed"]["ln"]["scale"],
                                model.embeddings.LayerNorm.weight.detach().numpy())
  assert heads == {} and cfg.pooler


def test_cli_writes_checkpoint_and_model_section(tmp_path):
  folder = _tiny_gpt2_folder(tmp_path)
  out = tmp_path / "ckpt"
  result = subprocess.run([sys.executable, "-m", "reparam_jax.convert_hf", f"--from={folder}",
                           f"--to={out}"], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert result.returncode == 0, result.stderr
  assert f"--config.init_from={out}" in result.stdout
  assert (out / "params").is_dir()
  section = json.loads((out / "hf_model.json").read_text())
  assert section["embed_dim"] == 32 and section["gelu_approximate"] is True
  assert json.loads((out / "hf_source.json").read_text())["family"] == "gpt2"
  _edit_config(folder, model_type="bart")
  bad = subprocess.run([sys.executable, "-m", "reparam_jax.convert_hf", f"--from={folder}",
                        f"--to={out}"], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().count("\n") == 0 and "model_type 'bart'" in bad.stderr


def test_real_minilm_hidden_states_and_pooled_output_match_transformers(raw_data_dir):
  """The real pretrained folder, on real sentences: tokenization equal to transformers'
  tokenizer and hidden states / pooled output within 1e-4 of its BertModel."""
  folder = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  with open(os.path.join(raw_data_dir, "sst2", "dev.tsv"), encoding="utf-8") as f:
    sentences = [row.split("\t")[0] for row in f.read().split("\n")[1:] if row.strip()][:24]
  theirs_tok = transformers.AutoTokenizer.from_pretrained(folder)
  batch = theirs_tok(sentences, padding=True, return_tensors="np")
  ours_tok = hf_tokenizers.load(folder)
  ids = np.zeros_like(batch["input_ids"])
  for i, ids_i in enumerate(ours_tok.encode_batch(sentences)):
    row = ours_tok.build_inputs(ids_i)[0]
    ids[i, :len(row)] = row
  np.testing.assert_array_equal(ids, batch["input_ids"])
  mask = ids != ours_tok.pad_id
  np.testing.assert_array_equal(mask, batch["attention_mask"].astype(bool))

  params, cfg, heads, _ = importer.import_folder(folder)
  L = ids.shape[1]
  out = importer.build_model(cfg, heads).apply(
      {"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
      jnp.zeros(ids.shape, jnp.int32), jnp.asarray(np.broadcast_to(np.arange(L), ids.shape)))
  ref_model = transformers.BertModel.from_pretrained(folder).eval()
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)))
  real = mask[..., None]  # padded positions are undefined in both
  hidden, want = np.asarray(out["hidden"]), ref.last_hidden_state.numpy()
  assert np.abs(np.where(real, hidden - want, 0)).max() <= TOL
  assert np.abs(np.asarray(out["pooled"]) - ref.pooler_output.numpy()).max() <= TOL
