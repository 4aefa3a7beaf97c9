"""Starting a run from a pretrained model folder (hf/pretrained.py).

The config's architecture comes from the checkpoint; a conflicting field is a
one-line error naming it.  The real MiniLM folder ($REPARAM_DATA_DIR/models)
fine-tunes a few steps from the Hugging Face folder directly.
"""

import json
import os

import numpy as np
import pytest

from reparam_jax.config.base import base_config
from reparam_jax.config.load import load_config_file
from reparam_jax.errors import UserError
from reparam_jax.hf import pretrained
from reparam_jax.rundir import checkpoint
from reparam_jax.tasks.encoder import encoder_defaults

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINILM = os.path.join("models", "all-MiniLM-L6-v2")
ENCODER = dict(vocab_size=120, num_layers=3, num_heads=2, embed_dim=16, mlp_dim=32, max_len=40,
               causal=False, pre_norm=False, type_vocab_size=2, embed_norm=True, pooler=True,
               gelu_approximate=False, layer_norm_eps=1e-12, embed_dropout=0.1,
               attention_dropout=0.1, residual_dropout=0.1, layer_dims=[])


def _converted(tmp_path, **changes) -> str:
  """A folder that looks like a convert_hf output to `resolve` (only the model section)."""
  folder = tmp_path / "ckpt"
  folder.mkdir()
  (folder / "hf_model.json").write_text(json.dumps(dict(ENCODER, **changes)))
  return str(folder)


def _config(init_from: str, task: str = "classify"):
  c = encoder_defaults(base_config())
  c.task = task
  c.seq_len = 32
  c.init_from = init_from
  pretrained.architecture_from_checkpoint(c)
  return c


def test_the_architecture_comes_from_the_checkpoint(tmp_path):
  resolved = pretrained.resolve(_config(_converted(tmp_path)))
  for name in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len",
               "pooler", "layer_norm_eps", "embed_dropout"):
    assert resolved.model[name] == ENCODER[name], name
  assert pretrained.resolve(resolved).to_dict() == resolved.to_dict()  # idempotent


def test_training_choices_stay_the_configs(tmp_path):
  c = _config(_converted(tmp_path))
  c.model.residual_dropout = 0.0
  c.model.dtype = "bfloat16"
  resolved = pretrained.resolve(c)
  assert resolved.model.residual_dropout == 0.0 and resolved.model.dtype == "bfloat16"
  assert resolved.model.attention_dropout == 0.1


@pytest.mark.parametrize("field,value", [("num_layers", 2), ("embed_dim", 32),
                                         ("pre_norm", True), ("vocab_size", 99)])
def test_a_conflicting_field_is_a_one_line_error_naming_it(tmp_path, field, value):
  c = _config(_converted(tmp_path))
  c.model[field] = value
  with pytest.raises(UserError, match=rf"^config\.model\.{field}={value!r} conflicts with "
                                      r"the checkpoint's") as e:
    pretrained.resolve(c)
  assert "\n" not in str(e.value)


def test_a_from_scratch_config_conflicts_on_its_first_differing_field(tmp_path):
  c = encoder_defaults(base_config())  # num_layers=4, embed_dim=128, ... set by value
  c.task, c.init_from = "classify", _converted(tmp_path)
  with pytest.raises(UserError, match=r"config\.model\.num_layers=4 conflicts"):
    pretrained.resolve(c)


def test_wrong_kind_of_model_and_too_long_sequences(tmp_path):
  c = _config(_converted(tmp_path), task="lm")
  with pytest.raises(UserError, match="is an encoder but task='lm' trains a decoder"):
    pretrained.resolve(c)
  c.task, c.seq_len = "classify", 64
  with pytest.raises(UserError, match="seq_len=64 is longer than the checkpoint's max_len=40"):
    pretrained.resolve(c)


def test_unset_architecture_without_a_pretrained_model(tmp_path, monkeypatch):
  with pytest.raises(UserError, match=r"config\.model\.\w+ is unset.*is not one"):
    pretrained.resolve(_config(str(tmp_path)))
  monkeypatch.delenv("NO_SUCH_DIR_VAR", raising=False)
  with pytest.raises(UserError, match="environment variable in it is not set"):
    pretrained.resolve(_config("$NO_SUCH_DIR_VAR/models/x"))


def test_minilm_configs_resolve_from_the_hugging_face_folder(raw_data_dir, monkeypatch):
  monkeypatch.setenv("REPARAM_DATA_DIR", raw_data_dir)
  c = pretrained.resolve(load_config_file(os.path.join(REPO, "configs/sst2/minilm_finetune.py")))
  assert c.init_from == os.path.join(raw_data_dir, MINILM)
  assert (c.model.num_layers, c.model.embed_dim, c.model.num_heads, c.model.mlp_dim,
          c.model.vocab_size) == (6, 384, 12, 1536, 30522)
  # Concrete: the run's config.json is complete, so a later run can start from its
  # checkpoint alone (compress's fine-tuning does, with a bare params folder).
  assert c.model.causal is False
  assert not [k for k, v in c.model.items() if v is None]


@pytest.mark.heavy
def test_a_few_fine_tuning_steps_from_the_minilm_folder(raw_data_dir, tfds_dir, tmp_path):
  """From the HF folder itself: its weights load, its tokenizer is saved, training moves.

  The SST-2 config on a small labelled set: a 22M-parameter model evaluating SST-2's
  872 dev sentences would be most of this test's time, and the data is not its subject."""
  from helpers import run_train_subprocess, tiny_labelled_corpus

  workdir = str(tmp_path / "run")
  lr = 1e-4
  data = tiny_labelled_corpus(str(tmp_path), train=64, dev=32)
  result = run_train_subprocess(
      ["--config=configs/sst2/minilm_finetune.py", f"--workdir={workdir}",
       "--config.num_steps=2", "--config.batch_size=8", "--config.seq_len=32",
       "--config.encoder.length_buckets=()", "--config.optimizer.warmup_steps=0",
       f"--config.optimizer.lr={lr}", "--config.eval_every=2", "--config.log_every=1",
       "--config.checkpoint_every=2", *[f"--config.{k}={v}" for k, v in data.items()]],
      env={"REPARAM_DATA_DIR": raw_data_dir, "TFDS_DATA_DIR": tfds_dir}, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "from the checkpoint: block_0, block_1, block_2, block_3, block_4, block_5, embed, " \
         "pooler; freshly initialised: classifier" in result.stdout
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["num_layers"] == 6
  with open(os.path.join(workdir, "vocab.txt"), encoding="utf-8") as f:
    saved = f.read()
  with open(os.path.join(raw_data_dir, MINILM, "vocab.txt"), encoding="utf-8") as f:
    assert saved == f.read()
  before = pretrained.load_params(os.path.join(raw_data_dir, MINILM))
  after = checkpoint.load_params(workdir)
  w0 = np.asarray(before["embed"]["token"]["embedding"])
  w1 = np.asarray(after["embed"]["token"]["embedding"])
  # Two AdamW steps move a weight by at most ~2·lr (+ the decay's lr·wd·|w|): the run
  # started from the pretrained table, and trained it.
  delta = np.abs(w1 - w0).max()
  assert 0 < delta <= 2.5 * lr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert any("eval/accuracy" in r for r in records)


def test_init_layers_cut_the_checkpoint_for_a_shallower_student(tmp_path):
  c = _config(_converted(tmp_path))
  c.init_layers = (0, 2)
  assert pretrained.resolve(c).model.num_layers == 2  # DistilBERT: every other layer
  c.init_layers = (0, 3)
  with pytest.raises(UserError, match=r"init_layers=\(0, 3\): init_from=\S+ has 3 blocks"):
    pretrained.resolve(c)
  params = {"embed": {"w": 1}, "block_0": {"w": 10}, "block_1": {"w": 11}, "block_2": {"w": 12}}
  assert pretrained.select_layers(params, (0, 2), "ckpt") == {
      "embed": {"w": 1}, "block_0": {"w": 10}, "block_1": {"w": 12}}
