"""Bad overrides: one clear line each, exit code 2, before any compute; and a fuzz test."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reparam_jax import train
from reparam_jax.config import load as config_load
from reparam_jax.config import validate as config_validate
from reparam_jax.config.base import base_config
from reparam_jax.data import tfds_builders
from reparam_jax.errors import UserError
from tests.helpers import QUICKSTART, tiny_args

BAD = {
    "wrong type": ({"batch_size": "twelve"}, "--config.batch_size=twelve: expected an integer"),
    "unknown key": ({"optimizer.learning_rate": "1e-3"}, "unknown config key"),
    "negative lr": ({"optimizer.lr": "-1"}, "config.optimizer.lr=-1.0: expected a positive"),
    "nan lr": ({"optimizer.lr": "nan"}, "config.optimizer.lr=nan"),
    "dropout 1": ({"model.residual_dropout": "1.0"}, "expected a number in [0, 1)"),
    "heads": ({"model.num_heads": "3"}, "not divisible by config.model.num_heads=3"),
    "negative rank": ({"reparam.rules": "(('.*fc_in.kernel', 'lowrank(rank=-2)'),)"},
                      "has rank=-2; expected a positive integer"),
    "zero lora rank": ({"reparam.rules": "(('.*fc_in.kernel', 'lora(rank=0)'),)"},
                       "has rank=0"),
    "unknown transform": ({"reparam.rules": "(('.*', 'sparse(sparsity=2)'),)"},
                          "unknown transform"),
    "two inferred axes": ({"mesh.data": "-1", "mesh.fsdp": "-1"}, "at most one axis may be -1"),
    "policy": ({"reliability.on_nonfinite": "ignore"}, "expected 'stop' or 'skip'"),
    "remat policy": ({"model.remat": "sometimes"}, "config.model.remat='sometimes': expected one "
                                                   "of none, full, dots, dots_no_batch"),
    "per_layer": ({"reparam.per_layer": "maybe"}, "config.reparam.per_layer='maybe'"),
    "attention kernel": ({"model.attention": "flash"},
                         "config.model.attention='flash': expected one of xla, cudnn"),
    "scan shared": ({"model.scan_layers": "True", "model.share_layers": "True"},
                    "scan_layers=True needs num_layers identical blocks"),
    # These need the devices (8 simulated) or the model's shapes:
    "mesh vs devices": ({"mesh.data": "3", "mesh.fsdp": "-1"}, "does not divide the 8 devices"),
    "batch vs devices": ({"batch_size": "12"}, "batch_size=12 must be a positive multiple"),
    "rank > matrix": ({"reparam.rules": "(('.*fc_in.kernel', 'lowrank(rank=64)'),)"},
                      "rank=64 must be in [1, min(16, 32)]"),
}


@pytest.fixture(scope="module")
def prepared_tfds_dir(raw_data_dir, tfds_dir):
  """The dataset prepared up front: preparing it prints TFDS's progress to stderr,
  and the cases that need the model's shapes load the data before they fail."""
  tfds_builders.load_builder("tiny_shakespeare", raw_dir=raw_data_dir, tfds_dir=tfds_dir)
  return tfds_dir


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_override_is_one_line_exit_2(case, tmp_path, raw_data_dir, prepared_tfds_dir, capsys):
  tfds_dir = prepared_tfds_dir
  overrides, message = BAD[case]
  args = tiny_args(str(tmp_path), raw_data_dir, tfds_dir, num_steps=2) + [
      f"--config.{k}={v}" for k, v in overrides.items()]
  with pytest.raises(SystemExit) as exit_info:
    train.main(args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not (tmp_path / "checkpoints").exists()  # stopped before training


def test_every_problem_is_reported_on_its_own_line():
  config = config_load.apply_overrides(config_load.load_config_file(QUICKSTART), [
      ("seq_len", "0"), ("optimizer.b2", "1.5"), ("keep_checkpoints", "-1")])
  with pytest.raises(UserError) as info:
    config_validate.validate_config(config)
  lines = f"error: {info.value}".splitlines()
  assert len(lines) == 3 and all(line.startswith("error: config.") for line in lines)


KEYS = config_load.flat_keys(base_config())
TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "1e30", "-1e-3", "nan", "inf", "-inf", "0.5", "1.0",
                     "true", "false", "none", "", "()", "(1, 2)", "[]", "{}", "'x'", "abc",
                     "lowrank(rank=0)", "(('.*', 'lowrank(rank=-1)'),)",
                     "(('.*', 'spherical'),)", "((1, 2),)", "(('(', 'lora'),)", "1e400",
                     "9" * 30, "0x10", "1_000"]),
    st.text(alphabet=string.printable, max_size=12))
KEY = st.one_of(st.sampled_from(KEYS), st.text(alphabet=string.ascii_lowercase + "._",
                                               min_size=1, max_size=12))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEY, TEXT), min_size=1, max_size=4))
def test_random_overrides_give_a_valid_config_or_a_clean_user_error(overrides):
  config = config_load.load_config_file(QUICKSTART)
  try:
    config_load.apply_overrides(config, overrides)
    config_validate.validate_config(config)
  except UserError as e:
    assert str(e).strip() and "Traceback" not in str(e)
    return
  # Accepted: every trainer field still has its declared type and a sane value.
  base = dict(config_validate._flatten(base_config()))
  for key, value in config_validate._flatten(config):
    if key in base and base[key] is not None and not isinstance(base[key], (tuple, list)):
      want = float if isinstance(base[key], float) else type(base[key])
      assert isinstance(value, (int, float) if want is float else want), (key, value)
  assert config.optimizer.lr > 0 and config.batch_size > 0 and config.seq_len > 0
