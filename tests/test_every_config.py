"""Every config under configs/ loads, resolves (a pretrained init_from gives the
architecture) and passes validation: a config that cannot start is a defect."""

import os

import pytest

from reparam_jax.config.load import load_config_file
from reparam_jax.config.validate import validate_config
from reparam_jax.errors import UserError
from reparam_jax.hf import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(os.path.join(root, f), REPO)
                 for root, _, files in os.walk(os.path.join(REPO, "configs"))
                 for f in files if f.endswith(".py") and f != "__init__.py")


def test_there_are_configs():
  assert len(CONFIGS) > 20 and "configs/sst2/minilm_finetune.py" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_validates(path, raw_data_dir, monkeypatch):
  monkeypatch.setenv("REPARAM_DATA_DIR", raw_data_dir)
  config = load_config_file(os.path.join(REPO, path))
  if config.init_from.startswith("workdirs/") and not os.path.exists(config.init_from):
    # Starts from an earlier experiment's run (fine-tuned teacher, pre-training run).
    if any(config.model[k] is None for k in pretrained.ARCHITECTURE_FIELDS if k in config.model):
      with pytest.raises(UserError, match=f"init_from={config.init_from} does not exist"):
        pretrained.resolve(config)
      return
  validate_config(pretrained.resolve(config))


@pytest.mark.parametrize("path", CONFIGS)
def test_a_config_naming_a_preset_builds_that_architecture(path, raw_data_dir, monkeypatch):
  """`model.preset` is not silently overridden by base_config's own model fields (a
  4-layer, width-128 model): every field the preset sets reaches the model, except the
  ones the config file itself changes after choosing it (here: the vocabulary)."""
  from reparam_jax.models import PRESETS, transformer_config  # noqa: PLC0415
  monkeypatch.setenv("REPARAM_DATA_DIR", raw_data_dir)
  config = load_config_file(os.path.join(REPO, path))
  if not config.model.get("preset"):
    return
  built = transformer_config(config.model)
  preset = PRESETS[config.model.preset]
  for field in ("num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len", "rope"):
    if field in preset:
      assert getattr(built, field) == preset[field], (path, field)
