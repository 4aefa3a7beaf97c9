"""Sweep expansion, names, resume and failure reporting, against a fake trainer.

The fake trainer is a real script run through `--train_module` (as the real
`reparam_jax.train` would be), so the runner's subprocess handling is tested.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reparam_jax.errors import UserError
from reparam_jax.sweeps import hyper as h
from reparam_jax.sweeps import launchers, points

REPO = Path(__file__).resolve().parent.parent

FAKE_TRAINER = textwrap.dedent('''
    """Writes what the real trainer writes; `--config.crash=True` dies once, before done."""
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    wd = args["workdir"]
    os.makedirs(os.path.join(wd, "checkpoints"), exist_ok=True)
    ckpt = os.path.join(wd, "checkpoints", "step")
    resumed = os.path.exists(ckpt)
    with open(os.path.join(wd, "invocations.txt"), "a") as f:
      f.write(json.dumps({"argv": sys.argv[1:], "resumed": resumed}) + "\\n")
    print("fake trainer", sys.argv[1:], "resumed" if resumed else "fresh")
    rank = float(args.get("config.reparam.rank", 1))
    seed = float(args.get("config.seed", 0))
    loss = 1.0 + 1.0 / rank + 0.01 * seed
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
      for step in (1, 2):
        f.write(json.dumps({"step": step, "train/loss": loss + 1 / step,
                            "train/step_time_ms": 10.0 * step}) + "\\n")
      f.write(json.dumps({"step": 2, "eval/loss": loss}) + "\\n")
    if args.get("config.crash") == "True" and not resumed:
      open(ckpt, "w").close()
      print("simulated preemption", file=sys.stderr)
      sys.exit(1)  # a crash (3 is a diverged run, 2 a bad config: neither is retried)
    with open(os.path.join(wd, "done.json"), "w") as f:
      json.dump({"step": 2, "eval/loss": loss, "params/stored": 1000 * rank}, f)
''')

CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.seed = 0
      c.crash = False
      c.lr = 0.1
      c.reparam = ml_collections.ConfigDict({"rank": 0})
      return c

    def get_sweep(hyper):
      return hyper.product(hyper.sweep("config.reparam.rank", [4, 16]), hyper.seeds(2))
''')


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
  """tmp dir with fake_train.py and cfg.py; children find fake_train via PYTHONPATH."""
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  (tmp_path / "cfg.py").write_text(CONFIG)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  return tmp_path


def invocations(workdir: Path) -> list[dict]:
  path = workdir / "invocations.txt"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_sweep(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "reparam_jax.sweep", *args], capture_output=True,
                        text=True, cwd=REPO, check=False)


# --------------------------------------------------------------------------- expansion


def test_combinators_counts() -> None:
  assert len(h.product(h.sweep("a", [1, 2, 3]), h.sweep("b", [1, 2]), h.seeds(4))) == 24
  assert h.product([h.sweep("a", [1, 2]), h.fixed("b", 0)]) == [{"a": 1, "b": 0}, {"a": 2, "b": 0}]
  assert h.zipit(h.sweep("lr", [1, 2]), h.sweep("wd", [3, 4])) == [
      {"lr": 1, "wd": 3}, {"lr": 2, "wd": 4}]
  assert len(h.chain(h.sweep("a", [1, 2]), h.points({"b.c": 1}))) == 3
  assert h.seeds(3, start=5) == [{"seed": 5}, {"seed": 6}, {"seed": 7}]
  assert len(h.with_seeds(h.sweep("a", [1, 2]), 3)) == 6
  with pytest.raises(ValueError, match="equal length"):
    h.zipit(h.sweep("a", [1, 2]), h.sweep("b", [1]))
  with pytest.raises(ValueError, match="set twice"):
    h.product(h.fixed("a", 1), h.fixed("a", 2))


def test_point_names_are_stable_and_safe() -> None:
  assert points.point_name({"seed": 1, "reparam.rank": 16}) == "reparam.rank=16,seed=1"
  assert points.point_name({"reparam.rank": 16, "seed": 1}) == "reparam.rank=16,seed=1"
  assert points.point_name({}) == "base"
  assert points.point_name({"data.dir": "/a b/c"}) == "data.dir=_a_b_c"
  assert points.point_name({"lr": 1e-5, "flag": True}) == "flag=True,lr=1e-05"
  assert points.point_name({"x": 1}, "configs/lm/shakespeare_char_lowrank.py:fast") == (
      "config=lm.shakespeare_char_lowrank@fast,x=1")
  long = points.point_name({f"k{i}": "v" * 20 for i in range(20)})
  assert len(long) <= 200 and long == points.point_name({f"k{i}": "v" * 20 for i in range(20)})


def test_config_sweep_expansion(env: Path) -> None:
  pts = points.make_points(points.get_sweep(str(env / "cfg.py")), str(env / "cfg.py"), env / "root")
  assert [p.name for p in pts] == ["reparam.rank=4,seed=0", "reparam.rank=4,seed=1",
                                   "reparam.rank=16,seed=0", "reparam.rank=16,seed=1"]
  assert pts[2].train_args() == [f"--config={env / 'cfg.py'}",
                                 f"--workdir={env / 'root' / 'reparam.rank=16,seed=0'}",
                                 "--config.reparam.rank=16", "--config.seed=0"]


def test_identical_points_merge_and_clashes_fail(tmp_path: Path) -> None:
  pts = points.make_points([{"a": 1}, {"a": 1}], "c.py", tmp_path)
  assert len(pts) == 1
  with pytest.raises(UserError, match="share the directory name"):
    points.make_points([{"a": "x/y"}, {"a": "x y"}], "c.py", tmp_path)


# --------------------------------------------------------------------------- running


def test_dry_run_prints_commands_and_runs_nothing(env: Path) -> None:
  out = run_sweep(f"--config={env / 'cfg.py'}", f"--workdir={env / 'root'}", "--dry-run",
                  "--train_module=fake_train", "--config.lr=0.5")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4
  assert "-m fake_train" in lines[0] and "--config.reparam.rank=4" in lines[0]
  assert all("--config.lr=0.5" in line for line in lines)
  assert not (env / "root").exists()


def test_runs_all_then_skips_done(env: Path) -> None:
  args = [f"--config={env / 'cfg.py'}", f"--workdir={env / 'root'}", "--train_module=fake_train",
          "--parallel=2"]
  out = run_sweep(*args)
  assert out.returncode == 0, out.stdout + out.stderr
  # Each finished point says how far the call is, and the time left at the pace so far.
  done_lines = [line for line in out.stdout.splitlines() if line.startswith("[sweep] done ")]
  assert len(done_lines) == 4
  assert all(re.search(r" \(\d/4 done in this call, this one \d+\.\d min", line)
             for line in done_lines)
  assert sorted(re.search(r"\((\d)/4", line).group(1) for line in done_lines) == list("1234")
  assert re.search(r"\(1/4 .*; about \d+ min left\)$", done_lines[0])
  assert not done_lines[-1].endswith("left)")
  for name in ("reparam.rank=4,seed=0", "reparam.rank=16,seed=1"):
    wd = env / "root" / name
    assert (wd / "done.json").exists()
    assert "fake trainer" in (wd / "log.txt").read_text()
    assert json.loads((wd / "point.json").read_text())["overrides"]["seed"] in (0, 1)
    assert len(invocations(wd)) == 1
  out = run_sweep(*args)
  assert out.returncode == 0
  assert "4 already done" in out.stdout
  assert len(invocations(env / "root" / "reparam.rank=4,seed=0")) == 1


def test_interrupted_point_is_rerun_in_same_workdir(env: Path) -> None:
  root = env / "root"
  done_wd = root / "reparam.rank=4,seed=0"
  done_wd.mkdir(parents=True)
  (done_wd / "done.json").write_text("{}")
  args = [f"--config={env / 'cfg.py'}", f"--workdir={root}", "--train_module=fake_train",
          "--config.crash=True", "--max_retries=0"]
  out = run_sweep(*args)
  assert out.returncode == 1
  crashed = root / "reparam.rank=16,seed=1"
  assert f"FAILED reparam.rank=16,seed=1: exit status 1; log: {crashed / 'log.txt'}" in out.stdout
  assert "simulated preemption" in (crashed / "log.txt").read_text()
  assert not invocations(done_wd)  # had done.json: never run
  out = run_sweep(*args)
  assert out.returncode == 0, out.stdout
  runs = invocations(crashed)
  assert [r["resumed"] for r in runs] == [False, True]
  assert runs[0]["argv"] == runs[1]["argv"]  # same workdir, same flags
  assert (crashed / "done.json").exists()
  assert (crashed / "log.txt").read_text().count("==== sweep") == 2


def test_failed_point_is_retried_in_the_same_call(env: Path) -> None:
  (env / "one.py").write_text(CONFIG.split("def get_sweep")[0])
  out = run_sweep(f"--config={env / 'one.py'}", f"--workdir={env / 'root'}",
                  "--train_module=fake_train", "--config.crash=True")
  assert out.returncode == 0, out.stdout + out.stderr
  wd = env / "root" / "base"
  assert [r["resumed"] for r in invocations(wd)] == [False, True]  # resumed its checkpoint
  assert (wd / "done.json").exists() and json.loads((wd / "point.json").read_text())["attempts"] == 2
  assert "retrying from its checkpoint" in out.stdout
  assert "(try 2)" in (wd / "log.txt").read_text()


def test_retry_limit_and_user_errors(env: Path) -> None:
  (env / "always_fails.py").write_text(textwrap.dedent('''
      import os, sys
      wd = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
      os.makedirs(wd, exist_ok=True)
      open(os.path.join(wd, "invocations.txt"), "a").write("{}\\n")
      sys.exit(2 if "--config.lr=2" in sys.argv else 3 if "--config.lr=3" in sys.argv else 1)
  '''))
  (env / "one.py").write_text(CONFIG.split("def get_sweep")[0])
  base = [f"--config={env / 'one.py'}", "--train_module=always_fails"]
  out = run_sweep(*base, f"--workdir={env / 'r1'}", "--max_retries=1")
  assert out.returncode == 1
  assert "FAILED base: exit status 1 after 2 attempts; log: " in out.stdout
  assert len(invocations(env / "r1" / "base")) == 2
  out = run_sweep(*base, f"--workdir={env / 'r2'}", "--config.lr=2")  # a UserError: no retry
  assert out.returncode == 1 and "FAILED base: exit status 2; log" in out.stdout
  assert len(invocations(env / "r2" / "base")) == 1
  out = run_sweep(*base, f"--workdir={env / 'r3'}", "--config.lr=3")  # diverged: no retry
  assert out.returncode == 1 and "FAILED base: exit status 3; log" in out.stdout
  assert len(invocations(env / "r3" / "base")) == 1


def test_failure_without_done_json_is_reported(env: Path) -> None:
  (env / "noop_train.py").write_text("print('forgot done.json')\n")
  out = run_sweep(f"--config={env / 'cfg.py'}", f"--workdir={env / 'root'}",
                  "--train_module=noop_train", "--max_retries=0")
  assert out.returncode == 1
  assert out.stdout.count(": exited 0 but wrote no done.json; log: ") == 4


def test_missing_config_and_bad_key_are_one_line_errors(env: Path) -> None:
  out = run_sweep("--config=configs/nope.py", f"--workdir={env / 'root'}")
  assert out.returncode == 2
  assert out.stderr.strip() == "error: config file configs/nope.py does not exist"
  out = run_sweep(f"--config={env / 'cfg.py'}", f"--workdir={env / 'root'}", "--config.nope=1",
                  "--dry-run")
  assert out.returncode == 2
  assert "has no key 'nope'" in out.stderr and "Traceback" not in out.stderr


def test_seeds_flag_and_no_sweep_config(env: Path) -> None:
  (env / "plain.py").write_text(CONFIG.split("def get_sweep")[0])
  pts = points.make_points(h.with_seeds(points.get_sweep(str(env / "plain.py")), 3), "p.py", env)
  assert [p.name for p in pts] == ["seed=0", "seed=1", "seed=2"]
  assert [p.name for p in points.make_points(points.get_sweep(str(env / "plain.py")), "p", env)] == [
      "base"]


def test_gpu_slots() -> None:
  assert launchers._gpu_slots("0,1,2,3", 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                            {"CUDA_VISIBLE_DEVICES": "2,3"}]
  with pytest.raises(UserError):
    launchers._gpu_slots("0", 2)
