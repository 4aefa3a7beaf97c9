"""Export to the Hugging Face format: `transformers` loads it, and the round trip is exact."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import hf_refs  # noqa: E402
from test_import import BERT_SIZES, GPT2_SIZES  # noqa: E402

from reparam_jax import convert_hf, export_hf  # noqa: E402
from reparam_jax.errors import UserError  # noqa: E402
from reparam_jax.hf import importer  # noqa: E402
from reparam_jax.hf.common import flatten  # noqa: E402
from tests.helpers import xla_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [("GPT2LMHeadModel", "tiny"), ("GPT2LMHeadModel", "untied"),
         ("BertForMaskedLM", "tiny"), ("BertForPreTraining", "odd"),
         ("BertForSequenceClassification", "odd"), ("BertModel", "tiny")]


def _model(cls_name, size):
  if cls_name.startswith("GPT2"):
    return hf_refs.gpt2(**GPT2_SIZES[size])
  return hf_refs.bert(cls_name, **BERT_SIZES[size])


def _check_loads_and_round_trips(model, cls_name: str, folder) -> None:
  """`transformers` loads the export bit for bit (tied copies too), and our importer reads
  back the weights it started from."""
  loaded = getattr(transformers, cls_name).from_pretrained(str(folder / "out"))
  want, got = model.state_dict(), loaded.state_dict()
  assert set(want) == set(got)
  for name in want:
    assert torch.equal(want[name], got[name]), name
  assert loaded.config.to_dict()["architectures"] == [cls_name]

  first, _, _, _ = importer.import_folder(str(folder / "hf"))
  again, _, _, _ = importer.import_folder(str(folder / "out"))
  a, b = flatten(first), flatten(again)
  assert set(a) == set(b)
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)


@pytest.mark.parametrize("cls_name,size", CASES)
def test_export_loads_in_transformers_and_round_trips(tmp_path, cls_name, size):
  model = _model(cls_name, size)
  hf_refs.save_model(model, str(tmp_path / "hf"))
  convert_hf.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
  export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))

  _check_loads_and_round_trips(model, cls_name, tmp_path)


def test_a_model_over_the_file_limit_is_split_as_save_pretrained_splits_it(tmp_path):
  """Numbered safetensors files and their index: transformers and our importer load them."""
  model = _model("GPT2LMHeadModel", "untied")
  hf_refs.save_model(model, str(tmp_path / "hf"))
  convert_hf.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
  out = export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), max_shard_bytes=4096)

  files = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".safetensors"))
  assert out["files"] == len(files) > 2 and "model.safetensors" not in files
  with open(tmp_path / "out" / "model.safetensors.index.json") as f:
    index = json.load(f)
  assert sorted(set(index["weight_map"].values())) == files
  _check_loads_and_round_trips(model, "GPT2LMHeadModel", tmp_path)


def test_unexportable_models_are_user_errors(tmp_path):
  hf_refs.save_model(_model("GPT2LMHeadModel", "tiny"), str(tmp_path / "hf"))
  convert_hf.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
  section_path = tmp_path / "ckpt" / "hf_model.json"
  section = json.loads(section_path.read_text())
  section_path.write_text(json.dumps(dict(section, rope=True)))
  with pytest.raises(UserError, match=r"fits no Hugging Face family .*\(gpt2: model.rope=True "
                     r"\(needs False\); bert: .*; llama: model.norm='layer' \(needs 'rms'\)"):
    export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
  section_path.write_text(json.dumps(dict(section, embed_dim=64)))
  with pytest.raises(UserError, match=r"parameter \S+ has shape .* but the model config implies"):
    export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
  with pytest.raises(UserError, match="neither a training workdir"):
    export_hf.export(str(tmp_path / "hf"), str(tmp_path / "out"))


def _run(module, *args, env=None):
  full_env = dict(os.environ, JAX_PLATFORMS="cpu",
                  XLA_FLAGS=xla_flags(1), **(env or {}))
  result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, env=full_env, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_pretrained_gpt2_lora_finetune_and_export(tmp_path, raw_data_dir, tfds_dir):
  """HF folder → convert_hf → train with LoRA from it → export_hf → HF.

  The run names only the converted folder: its architecture fills the model
  fields the command line unsets, its BPE tokenizer is the run's (its
  vocabulary sizes the model), and its dense weights become LoRA's W₀ at the
  start.  The learning rate is ~0, so the exported model must be the imported
  one (LoRA's B starts at zero): the whole chain carries the weights through.
  """
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    text = f.read()
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text], vocab_size=300, special_tokens=["<|endoftext|>"])
  hf = tmp_path / "hf"
  hf.mkdir()
  bpe.save_model(str(hf))
  sizes = dict(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=bpe.get_vocab_size())
  model = hf_refs.gpt2(**sizes)
  hf_refs.save_model(model, str(hf), safetensors=False)

  ckpt, run, out = (str(tmp_path / n) for n in ("ckpt", "run", "out"))
  printed = _run("reparam_jax.convert_hf", f"--from={hf}", f"--to={ckpt}")
  assert f"--config.init_from={ckpt}" in printed
  rules = ("--config.reparam.rules=((r'block_\\d+/attn/(query|value)/kernel', "
           "'lora(rank=2, alpha=4)'), (r'.*', 'frozen'))")
  config = f"--config={os.path.join(REPO, 'configs', 'lm', 'shakespeare_char.py')}"
  unset = [f"--config.model.{k}=None" for k in ("num_layers", "num_heads", "embed_dim",
                                                 "mlp_dim")]
  _run("reparam_jax.train", config, f"--workdir={run}", f"--config.init_from={ckpt}", rules,
       *unset, "--config.seq_len=16",
       "--config.batch_size=4", "--config.eval_batch_size=64", "--config.num_steps=2",
       "--config.optimizer.lr=1e-30", "--config.optimizer.end_lr=1e-30",
       "--config.optimizer.warmup_steps=1", f"--config.data.raw_dir={raw_data_dir}",
       f"--config.data.tfds_dir={tfds_dir}")
  _run("reparam_jax.export_hf", f"--workdir={run}", f"--to={out}")

  exported = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  ids = torch.tensor(hf_refs.random_ids(sizes["vocab_size"], 2, 16))
  with torch.no_grad():
    diff = (exported(ids).logits - model(ids).logits).abs().max().item()
  assert diff <= 1e-5
  tok = transformers.GPT2Tokenizer.from_pretrained(out)
  line = text.split("\n")[0]
  assert tok.encode(line) == bpe.encode(line).ids
