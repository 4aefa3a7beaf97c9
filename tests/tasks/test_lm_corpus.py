"""The LM task on a prepared corpus: prepare_data, then train with packing, evaluate, resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reparam_jax.config.load import load_config_file
from reparam_jax.data import corpus
from reparam_jax.rundir import workdir as rundir
from tests.helpers import (
  REPO,
  free_port,
  run_process_group,
  run_train_subprocess,
  tiny_args,
  xla_flags,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, raw_data_dir) -> tuple[str, str, str]:
  """Tiny Shakespeare's speeches as JSON Lines (3 train files, 1 held out), prepared into
  folders: train (files 0-1), more (file 2), val; all with train's tokenizer."""
  root = tmp_path_factory.mktemp("corpus")
  text = Path(raw_data_dir, "tinyshakespeare", "input.txt").read_text()
  speeches = [s for s in text.split("\n\n") if s.strip()]
  cut = len(speeches) * 9 // 10
  for split in ("train", "more", "val"):
    (root / split).mkdir()
  for i in range(3):
    part = speeches[i * cut // 3:(i + 1) * cut // 3]
    (root / ("train" if i < 2 else "more") / f"part-{i}.jsonl").write_text(
        "".join(json.dumps({"text": s}) + "\n" for s in part))
  (root / "val" / "part-0.jsonl").write_text(
      "".join(json.dumps({"text": s}) + "\n" for s in speeches[cut:]))
  outs = []
  for split in ("train", "more", "val"):  # in process: the command is tested in test_corpus.py
    config = load_config_file(os.path.join(REPO, "configs", "lm", "shakespeare_char.py"))
    config.data.source = f"jsonl:{root}/{split}/*.jsonl"
    config.data.tokenizer = "char" if split == "train" else str(root / "train_shards" / "tokenizer")
    out = str(root / f"{split}_shards")
    assert corpus.prepare_from_config(config, out, progress=False)["documents"] > 0
    outs.append(out)
  return outs[0], outs[1], outs[2]


def _args(workdir: str, prepared: tuple[str, str, str], raw_data_dir: str, tfds_dir: str,
          packing: str, **overrides) -> list[str]:
  return tiny_args(workdir, raw_data_dir, tfds_dir, **{
      "data.prepared": prepared[0], "data.eval_prepared": prepared[2],
      "data.packing": packing, "data.eval_batches": 2, "seq_len": 32, **overrides})


def _records(workdir: str) -> list[dict]:
  return rundir.read_metrics(workdir)


def test_train_on_a_mixture_packed_first_fit(tmp_path, prepared, raw_data_dir,
                                            tfds_dir) -> None:
  workdir = str(tmp_path)
  args = _args(workdir, prepared, raw_data_dir, tfds_dir, "first_fit", num_steps=10,
               **{"data.prepared": "", "data.mixture": f"3:{prepared[0]},1:{prepared[1]}"})
  result = run_train_subprocess(args)
  assert result.returncode == 0, result.stderr
  records = _records(workdir)
  evals = [r for r in records if "eval/loss" in r]
  assert len(evals) == 2 and evals[1]["eval/loss"] < evals[0]["eval/loss"] < 5.0
  # Char tokens of ASCII text are one byte each: bits per byte is the loss in bits.
  for r in evals:
    assert r["eval/bits_per_byte"] == pytest.approx(r["eval/loss"] / math.log(2), rel=1e-6)
  # Each folder's share of the trained tokens is logged at every step.  Documents interleave
  # 3:1 exactly (tests/data/test_corpus.py); 10 steps of 8 rows of 33 tokens hold only a
  # handful of whole speeches, so the token share is 3:1 only roughly.
  shares = [(r["train/mixture/0"], r["train/mixture/1"]) for r in records
            if "train/mixture/0" in r]
  assert len(shares) == 10 and all(a + b == pytest.approx(1.0) for a, b in shares)
  assert 0.5 < sum(a for a, _ in shares) / 10 < 1.0 and any(b > 0 for _, b in shares)
  # The saved tokenizer is the corpus's: sample can decode.
  assert os.path.exists(os.path.join(workdir, "tokenizer.json"))


def test_a_source_tokenized_on_the_fly_trains_and_resumes_as_uninterrupted(
    tmp_path, prepared, raw_data_dir, tfds_dir) -> None:
  """`data.source` and `data.eval_source` alone: the run tokenizes them into its workdir
  (as prepare_data would; a restart finds them done), trains concatenated rows, and a
  resumed run logs the uninterrupted run's losses."""
  workdir = str(tmp_path)
  root = os.path.dirname(prepared[0])
  args = _args(workdir, prepared, raw_data_dir, tfds_dir, "concat", num_steps=10, **{
      "data.prepared": "", "data.eval_prepared": "", "data.source": f"jsonl:{root}/train/*.jsonl",
      "data.eval_source": f"jsonl:{root}/val/*.jsonl"})
  result = run_train_subprocess(args)
  assert result.returncode == 0, result.stderr
  evals = [r["eval/loss"] for r in _records(workdir) if "eval/loss" in r]
  assert len(evals) == 2 and evals[1] < evals[0] < 5.0
  # The same token shards prepare_data wrote from the same files and tokenizer.
  on_the_fly = corpus.token_shards.TokenShards(os.path.join(workdir, "corpus", "train"))
  ahead = corpus.token_shards.TokenShards(prepared[0])
  assert on_the_fly.manifest["tokenizer_sha256"] == ahead.manifest["tokenizer_sha256"]
  assert [on_the_fly[i]["tokens"].tolist() for i in (0, 7, len(ahead) - 1)] == [
      ahead[i]["tokens"].tolist() for i in (0, 7, len(ahead) - 1)]

  def losses() -> dict[int, float]:  # the last record of each step
    return {r["step"]: r["train/loss"] for r in _records(workdir) if "train/loss" in r}

  uninterrupted = losses()
  # As if killed after step 7: its checkpoint at 5 is the last.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  os.remove(os.path.join(workdir, "done.json"))
  again = run_train_subprocess(args)
  assert again.returncode == 0, again.stderr
  assert "resumed from step 5" in again.stdout
  assert losses() == uninterrupted and sorted(uninterrupted) == list(range(1, 11))


def test_prepared_corpus_without_held_out_folder_is_a_one_line_error(
    tmp_path, prepared, raw_data_dir, tfds_dir) -> None:
  args = _args(str(tmp_path), prepared, raw_data_dir, tfds_dir, "concat", num_steps=2)
  args = [a for a in args if not a.startswith("--config.data.eval_prepared")]
  result = run_train_subprocess(args)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.data.eval_prepared is empty: a prepared corpus needs a held-out folder too "
      "(prepare_data on a validation source)")


def test_a_source_on_the_fly_needs_a_held_out_source_and_a_workdir(tmp_path) -> None:
  config = load_config_file(os.path.join(REPO, "configs", "lm", "shakespeare_char.py"))
  config.data.source = f"jsonl:{tmp_path}/*.jsonl"
  with pytest.raises(corpus.UserError, match="config.data.eval_source is empty"):
    corpus.prepare_in_run(config, str(tmp_path))
  with pytest.raises(corpus.UserError, match="give --workdir"):
    corpus.prepare_in_run(config, None)


@pytest.mark.slow  # 3 starts of a 2-process group: ~2 min on an idle 2-core machine
def test_two_processes_killed_mid_run_resume_the_uninterrupted_mixture(
    tmp_path, prepared, raw_data_dir, tfds_dir) -> None:
  """Two processes train a first_fit mixture; SIGKILLed after a checkpoint, restarted, they
  log every step's loss as a run that was never interrupted (the packing iterators' state,
  per process, is in the checkpoint)."""
  def argvs(workdir: str) -> list[list[str]]:
    port = free_port()
    args = _args(workdir, prepared, raw_data_dir, tfds_dir, "first_fit", num_steps=12,
                 checkpoint_every=4, eval_every=12, batch_size=8,
                 **{"data.prepared": "", "data.mixture": f"3:{prepared[0]},1:{prepared[1]}"})
    return [["-m", "reparam_jax.train", *args, f"--coordinator_address=localhost:{port}",
             "--num_processes=2", f"--process_id={i}"] for i in range(2)]

  def losses(workdir: str) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in _records(workdir) if "train/loss" in r}

  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  run_process_group(argvs(whole), 1)
  procs = [subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu",
                                     PYTHONPATH=REPO))
           for argv in argvs(killed)]
  deadline = time.monotonic() + 300
  try:
    saved = os.path.join(killed, "checkpoints", "4")  # orbax renames it there once committed
    while time.monotonic() < deadline and not (os.path.isdir(saved)
                                               and max(losses(killed), default=0) >= 6):
      assert all(p.poll() is None for p in procs), "the group ended before it was killed"
      time.sleep(0.05)
  finally:
    for p in procs:
      p.send_signal(signal.SIGKILL)
      p.wait()
  assert 6 <= max(losses(killed)) < 12
  outs = run_process_group(argvs(killed), 1)
  assert "resumed from step" in outs[0]
  want = losses(whole)
  assert sorted(want) == list(range(1, 13)) and losses(killed) == want
