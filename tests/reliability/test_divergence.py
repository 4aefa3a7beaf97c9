"""A non-finite loss stops the run (or skips the step) and never reaches a checkpoint."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from tests.helpers import tiny_args


def _run(workdir, raw, tfds, **overrides):
  args = tiny_args(str(workdir), raw, tfds, **{"checkpoint_every": 2, "eval_every": 100,
                                               **overrides})
  return train.main(args)


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, raw_data_dir, tfds_dir, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run(tmp_path, raw_data_dir, tfds_dir, num_steps=8, reliability__nan_at_step=5)
  assert exit_info.value.code == 3
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: training diverged: non-finite loss or gradient at step 5;")
  assert "last good checkpoint (step 4)" in err[-1]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  losses = [r["train/loss"] for r in rundir.read_metrics(tmp_path)]
  assert len(losses) == 4 and all(math.isfinite(x) for x in losses)  # nothing past step 4


@pytest.mark.slow  # a second divergence run; ~30 s on a loaded 2-core machine
def test_huge_learning_rate_diverges_cleanly(tmp_path, raw_data_dir, tfds_dir, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run(tmp_path, raw_data_dir, tfds_dir, num_steps=8, optimizer__lr=1e30,
         optimizer__warmup_steps=0, optimizer__clip_norm=0)
  assert exit_info.value.code == 3
  assert "training diverged: non-finite loss or gradient at step" in capsys.readouterr().err
  for step in os.listdir(tmp_path / "checkpoints"):  # whatever was saved is finite
    params = checkpoint.restore_spread(tmp_path / "checkpoints" / step / "state")
    assert all(np.isfinite(np.asarray(x)).all() for x in _leaves(params))


def test_skip_mode_drops_the_update_counts_it_and_continues(tmp_path, raw_data_dir, tfds_dir,
                                                           capsys):
  final = _run(tmp_path, raw_data_dir, tfds_dir, num_steps=6, checkpoint_every=1, keep_checkpoints=9,
               reliability__nan_at_step=3, reliability__on_nonfinite="skip")
  assert final["step"] == 6 and math.isfinite(final["eval/loss"])
  assert "warning: skipped step 3" in capsys.readouterr().err
  records = {r["step"]: r for r in rundir.read_metrics(tmp_path)
             if "train/loss" in r}
  assert [records[s]["train/skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
  # Step 3's update was dropped: its params equal step 2's (the step counter moved on).
  ck = tmp_path / "checkpoints"
  two, three, four = (checkpoint.restore_spread(ck / str(s) / "state") for s in (2, 3, 4))
  for a, b in zip(_leaves(two["params"]), _leaves(three["params"])):
    np.testing.assert_array_equal(a, b)
  assert int(three["step"]) == 3
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(three["params"]),
                                                      _leaves(four["params"])))


@pytest.mark.slow
def test_skip_mode_gives_up_past_the_limit(tmp_path, raw_data_dir, tfds_dir, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run(tmp_path, raw_data_dir, tfds_dir, num_steps=6, optimizer__lr=1e30,
         optimizer__warmup_steps=0, optimizer__clip_norm=0, reliability__on_nonfinite="skip",
         reliability__max_skipped_steps=2)
  assert exit_info.value.code == 3
  assert "exceed reliability.max_skipped_steps=2" in capsys.readouterr().err


def _leaves(tree):
  import jax  # noqa: PLC0415
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
