"""Config loading and overrides: typed, locked, one-line errors with exit code 2."""

import os

import pytest

from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError
from tests.helpers import QUICKSTART, REPO, run_train_subprocess


def test_overrides_are_typed():
  config, rest = config_load.load([f"--config={QUICKSTART}", "--config.optimizer.lr=3e-4",
                                  "--config.model.num_layers=2", "--config.model.rope=true",
                                  "--config.data.tokenizer=sentencepiece", "--workdir=/x"])
  assert config.optimizer.lr == 3e-4 and isinstance(config.optimizer.lr, float)
  assert config.model.num_layers == 2 and config.model.rope is True
  assert config.data.tokenizer == "sentencepiece"
  assert rest == ["--workdir=/x"]


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.lrr=1", "did you mean optimizer.lr"),
    ("--config.model.num_layer=2", "did you mean model.num_layers"),
    ("--config.model.num_layers=abc", "expected an integer"),
    ("--config.model.num_layers=2.5", "expected an integer"),
    ("--config.optimizer.lr=fast", "expected a number"),
    ("--config.model.rope=maybe", "expected a boolean"),
    ("--config.model=3", "is a section"),
])
def test_bad_overrides_name_the_problem(override, message):
  with pytest.raises(UserError, match=message):
    config_load.load([f"--config={QUICKSTART}", override])


def test_missing_config_file():
  with pytest.raises(UserError, match="does not exist"):
    config_load.load(["--config=configs/nope.py"])


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.lrr=1", "unknown config key 'optimizer.lrr'"),
    ("--config.mesh.data=3", "mesh"),
    ("--config.batch_size=7", "batch_size=7 must be a positive multiple"),
    ("--config.num_steps=-5", "num_steps=-5: expected a positive integer"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, override, message):
  result = run_train_subprocess([f"--config={QUICKSTART}", f"--workdir={tmp_path / 'w'}",
                                 override], devices=2)
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
  assert message in lines[0]
  assert "Traceback" not in result.stderr


def test_unwritable_workdir_is_a_user_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_train_subprocess([f"--config={QUICKSTART}", f"--workdir={blocker / 'sub'}"])
  assert result.returncode == 2 and "not writable" in result.stderr


def test_the_hypersphere_config_is_ngpts():
  """Every block matrix normalized along its embedding dimension, with a learned scale
  (the shipped config once normalized columns of every kernel with the scale frozen)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from reparam_jax.models import Transformer, transformer_config
  from reparam_jax.reparam import Reparam
  config = config_load.load_config_file(os.path.join(REPO, "configs", "lm",
                                                     "shakespeare_char_hypersphere.py"))
  model_cfg = dict(config.model, vocab_size=65, max_len=config.seq_len)
  rp = Reparam.from_config(config.reparam)
  boxed = jax.eval_shape(lambda: rp.wrap(Transformer(transformer_config(model_cfg))).init(
      jax.random.key(0), jnp.zeros((1, config.seq_len), jnp.int32)))["params"]
  kernels = 0
  for block in (k for k in boxed if k.startswith("block_")):
    for group in (boxed[block]["attn"], boxed[block]["mlp"]):
      for layer in group.values():
        theta = layer["kernel"]
        direction, scale = theta["direction"], theta["scale"]
        assert "embed" in direction.names and "embed" not in scale.names, (block, scale.names)
        kernels += 1
  assert kernels == 6 * config.model.num_layers
  params = nn.meta.unbox(boxed)
  assert all(jax.tree.leaves(rp.trainable_mask(params)["block_0"]["mlp"]["fc_out"]["kernel"]))
