"""`config.init_adapter`: a run starts from a PEFT adapter folder on top of `init_from`.

The first tests need no torch (the folder is written by our exporter in PEFT's
format), so they run in both test legs; those with an adapter `peft` itself
wrote (its classifier in modules_to_save) skip without torch/peft.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from helpers import run_train_subprocess, tiny_labelled_corpus

from reparam_jax.hf import peft as peft_io
from reparam_jax.hf import pretrained
from reparam_jax.hf.peft import export_peft_adapter
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint

QV = r"block_\d+/attn/(query|value)/kernel"


def _small_data(tmp_path) -> list[str]:
  """The SST-2 configs on a small labelled set: the adapter, not the data, is the subject,
  and the final evaluation of a 22M-parameter model over SST-2's dev set is not."""
  data = tiny_labelled_corpus(str(tmp_path), train=64, dev=32)
  return [f"--config.{k}={v}" for k, v in data.items()]


@pytest.mark.heavy
def test_a_run_starts_from_a_peft_adapter(raw_data_dir, tfds_dir, tmp_path):
  folder = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  rp = Reparam.from_config({"rules": ((QV, "lora(rank=8, alpha=16)"),)})
  theta = rp.from_dense(pretrained.load_params(folder), jax.random.key(0))
  b = theta["block_3"]["attn"]["value"]["kernel"]["lora_b"]
  theta["block_3"]["attn"]["value"]["kernel"]["lora_b"] = np.asarray(
      jax.random.normal(jax.random.key(1), b.shape)) * 0.1
  adapter = str(tmp_path / "adapter")
  export_peft_adapter(theta, rp, adapter)

  run = str(tmp_path / "run")
  result = run_train_subprocess(
      ["--config=configs/sst2/minilm_lora.py", f"--workdir={run}", f"--config.init_adapter={adapter}",
       "--config.num_steps=1", "--config.optimizer.lr=1e-12", "--config.optimizer.warmup_steps=0",
       "--config.batch_size=4", "--config.seq_len=16", "--config.encoder.length_buckets=()",
       "--config.eval_every=1000", "--config.checkpoint_every=1", *_small_data(tmp_path)],
      env={"REPARAM_DATA_DIR": raw_data_dir, "TFDS_DATA_DIR": tfds_dir}, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  trained = checkpoint.load_params(run)
  # One step at lr 1e-12 (Adam moves each entry by about lr): the run holds the adapter it
  # started from (its A: PEFT's lora_A transposed back; the non-zero B of block 3).
  for block in ("block_0", "block_3"):
    for leaf in ("lora_a", "lora_b"):
      np.testing.assert_allclose(trained[block]["attn"]["value"]["kernel"][leaf],
                                 theta[block]["attn"]["value"]["kernel"][leaf], atol=1e-9)


def test_init_adapter_needs_init_from():
  from reparam_jax.config.base import base_config
  from reparam_jax.config.validate import validate_config
  from reparam_jax.errors import UserError

  c = base_config()
  c.init_adapter = "/some/adapter"
  with pytest.raises(UserError, match="init_adapter.*needs config.init_from"):
    validate_config(c)


# --- an adapter `peft` itself wrote, its classifier in modules_to_save -------------------------

SENTENCES = ["a gripping, beautifully acted film", "dull and far too long",
             "it is neither good nor bad"]


def _peft_classifier_adapter(minilm: str, folder: str, num_labels: int = 2):
  """peft's usual SEQ_CLS LoRA on query/value (r=4, alpha=8), its lora_B and classifier
  perturbed so both matter; the eval-mode PeftModel after `save_pretrained(folder)`."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  torch.manual_seed(0)
  base = transformers.BertForSequenceClassification.from_pretrained(minilm, num_labels=num_labels)
  model = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                    target_modules=["query", "value"]))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_B" in name or "modules_to_save" in name:
        p.add_(0.2 * torch.randn(p.shape))
  model.save_pretrained(folder)
  return model.eval()


# `peer`, not `heavy`: it needs torch and peft, which only the compatibility leg has,
# and that leg skips `heavy` tests (heavy here would mean it never runs in CI).
@pytest.mark.peer
def test_a_run_starts_from_an_adapter_peft_wrote_with_its_classifier(
    raw_data_dir, tfds_dir, tmp_path, monkeypatch):
  from reparam_jax.hf import importer
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import safetensors.numpy

  minilm = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  adapter = str(tmp_path / "adapter")
  theirs = _peft_classifier_adapter(minilm, adapter)
  saved = safetensors.numpy.load_file(os.path.join(adapter, "adapter_model.safetensors"))
  assert "base_model.model.classifier.bias" in saved  # modules_to_save=['classifier', ...]

  run = str(tmp_path / "run")
  rules = ((QV, "lora(rank=4, alpha=8)"),)
  result = run_train_subprocess(
      ["--config=configs/sst2/minilm_lora.py", f"--workdir={run}", f"--config.init_adapter={adapter}",
       f"--config.reparam.rules={rules!r}", "--config.num_steps=1", "--config.optimizer.lr=1e-12",
       "--config.optimizer.warmup_steps=0", "--config.batch_size=4", "--config.seq_len=16",
       "--config.encoder.length_buckets=()", "--config.eval_every=1000",
       "--config.checkpoint_every=1", *_small_data(tmp_path)],
      env={"REPARAM_DATA_DIR": raw_data_dir, "TFDS_DATA_DIR": tfds_dir}, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "freshly initialised: -" in result.stdout, result.stdout[-2000:]
  trained = checkpoint.load_params(run)
  # One step at lr 1e-12 (Adam moves each entry by about lr): the run's classifier is the
  # adapter's, transposed to [d_in, classes].
  np.testing.assert_allclose(trained["classifier"]["out"]["kernel"],
                             saved["base_model.model.classifier.weight"].T, atol=1e-9)
  np.testing.assert_allclose(trained["classifier"]["out"]["bias"],
                             saved["base_model.model.classifier.bias"], atol=1e-9)

  tokens = transformers.AutoTokenizer.from_pretrained(minilm)(SENTENCES, padding=True,
                                                              return_tensors="np")
  ids, mask, types = tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"]
  with torch.no_grad():
    want = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types)).logits.numpy()
  _, cfg, _, _ = importer.import_folder(minilm)
  ours = Reparam.from_config({"rules": rules}).wrap(importer.build_model(
      cfg, {"classifier": {"num_classes": 2, "dropout": 0.1}}))
  positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  got = ours.apply({"params": trained}, jax.numpy.asarray(ids, "int32"),
                   jax.numpy.asarray(mask, bool), jax.numpy.asarray(types, "int32"),
                   jax.numpy.asarray(positions, "int32"))["logits"]
  assert np.abs(want).max() > 0.1  # the perturbed classifier and adapter are visible
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


@pytest.mark.peer
def test_an_adapter_classifier_for_other_labels_is_a_one_line_error(raw_data_dir, tmp_path,
                                                                     monkeypatch):
  from reparam_jax.errors import UserError
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  minilm = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  adapter = str(tmp_path / "adapter")
  _peft_classifier_adapter(minilm, adapter, num_labels=3)
  rp = Reparam.from_config({"rules": ((QV, "lora(rank=4, alpha=8)"),)})
  dense = pretrained.load_params(minilm)
  model = rp.from_dense(dict(dense, classifier={"out": {"kernel": np.zeros((384, 2), "float32"),
                                                        "bias": np.zeros(2, "float32")}}),
                        jax.random.key(0))
  with pytest.raises(UserError) as e:
    peft_io.start_from_adapter(adapter, dense, rp, model_params=model)
  message = str(e.value)
  assert "\n" not in message
  assert "classifier" in message and "3 classes" in message and "2" in message, message
