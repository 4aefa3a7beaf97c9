"""Every launch script in --dry-run mode: the printed commands carry the config and overrides."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
OVERRIDES = ["--config.reparam.rank=16", "--config.optimizer.lr=3e-4", "--config.data.name=a b"]


@pytest.fixture
def config(tmp_path: Path) -> str:
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent('''
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict(
            {"seed": 0, "reparam": {"rank": 0}, "optimizer": {"lr": 0.1}, "data": {"name": ""}})
      def get_sweep(hyper):
        return hyper.product(hyper.sweep("reparam.rank", [8, 16]), hyper.seeds(1))
  '''))
  return str(path)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
  out = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                       cwd=REPO, check=False)
  return out


def commands(stdout: str) -> list[list[str]]:
  """The printed lines parsed back into argv lists: they must be valid shell."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def assert_train_args(argv: list[str], config: str, workdir: str) -> None:
  assert f"--config={config}" in argv and f"--workdir={workdir}" in argv
  for o in OVERRIDES:
    assert o in argv


def test_local_dry_run(config: str, tmp_path: Path) -> None:
  wd = str(tmp_path / "run")
  out = run("local.sh", "--dry-run", "--gpus=0,1", f"--config={config}", f"--workdir={wd}",
            *OVERRIDES)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == f"mkdir -p {wd}"
  assert lines[1].endswith(f"2>&1 | tee -a {wd}/log.txt")
  argv = shlex.split(lines[1].split(" 2>&1 |")[0])
  assert "CUDA_VISIBLE_DEVICES=0,1" in argv
  assert argv[argv.index("-m") + 1] == "reparam_jax.train"
  assert_train_args(argv, config, wd)
  assert not Path(wd).exists()


def test_local_cpu_no_log(config: str, tmp_path: Path) -> None:
  out = run("local.sh", "--dry-run", "--cpu", "--no-log", f"--config={config}",
            f"--workdir={tmp_path}", *OVERRIDES, "--", "--extra_flag=1")
  argv = commands(out.stdout)[1]
  assert "JAX_PLATFORMS=cpu" in argv and argv[-1] == "--extra_flag=1"


def test_slurm_dry_run(config: str, tmp_path: Path) -> None:
  wd = str(tmp_path / "reparam.rank=16,seed=0")
  out = run("slurm.sh", "--dry-run", "--nodes=2", "--gpus-per-node=8", "--partition=gpu",
            "--time=04:00:00", f"--config={config}", f"--workdir={wd}", *OVERRIDES)
  assert out.returncode == 0, out.stderr
  mkdir, sbatch = commands(out.stdout)
  assert mkdir == ["mkdir", "-p", wd]
  assert sbatch[0] == "sbatch"
  for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
               "--time=04:00:00", f"--output={wd}/log.txt", "--open-mode=append"):
    assert flag in sbatch
  script = sbatch.index(str(LAUNCH / "slurm.sbatch"))
  assert_train_args(sbatch[script + 1:], config, wd)
  out = run("slurm.sh", "--dry-run", "--per=node", "--gpus-per-node=8", f"--config={config}",
            f"--workdir={wd}")
  assert "--ntasks-per-node=1" in commands(out.stdout)[1]
  assert "REPARAM_PER=node" in out.stdout


def test_sbatch_script_dry_run(config: str) -> None:
  out = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "--dry-run", f"--config={config}",
                        "--workdir=w", *OVERRIDES], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, REPARAM_PYTHON="py", REPARAM_PER="node",
                                SLURM_GPUS_ON_NODE="4"), check=False)
  assert out.returncode == 0, out.stderr
  argv = shlex.split(out.stdout)
  assert argv[:4] == ["srun", "--kill-on-bad-exit=1", "py", "-m"]
  assert argv[-1] == "--distributed"
  assert_train_args(argv, config, "w")


def test_tpu_pod_dry_run(config: str) -> None:
  wd = "gs://bucket/runs/rank16"
  out = run("tpu_pod.sh", "--dry-run", "--name=my-v4", "--zone=us-central2-b",
            "--accelerator-type=v4-32", "--project=proj", f"--config={config}", f"--workdir={wd}",
            *OVERRIDES)
  assert out.returncode == 0, out.stderr
  text = out.stdout
  cmds = commands(text)
  assert cmds[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert "--accelerator-type=v4-32" in cmds[0] and "--project=proj" in cmds[0]
  assert any(c[4] == "scp" and "--worker=all" in c for c in cmds if c[0] == "gcloud")
  install = next(c for c in cmds if "--worker=all" in c and "requirements.txt" in " ".join(c))
  assert "venv -q --python 3.12 .venv" in install[-1]
  assert "pip install -q --python .venv/bin/python -r requirements.txt -e '.[tpu]'" in install[-1]
  run_cmd = next(c for c in cmds if "--distributed" in " ".join(c))
  assert "--worker=all" in run_cmd
  remote = shlex.split(run_cmd[-1].removeprefix("--command=").split(" 2>&1")[0].split("&& ")[-1])
  assert remote[remote.index("-m") + 1] == "reparam_jax.train"
  assert_train_args(remote, config, wd)
  assert "gcloud storage cp gs://bucket/runs/rank16/done.json" in text
  assert cmds[-1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]


def test_tpu_pod_queued_git_steps(config: str) -> None:
  out = run("tpu_pod.sh", "--dry-run", "--name=n", "--zone=z", "--queued", "--spot", "--code=git",
            "--repo=https://example.com/r.git", "--ref=abc123", "--steps=create,copy,delete")
  assert out.returncode == 0, out.stderr
  cmds = commands(out.stdout)
  assert cmds[0][:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert "--spot" in cmds[0] and "--node-id=n" in cmds[0]
  assert "git clone --quiet https://example.com/r.git" in out.stdout and "abc123" in out.stdout
  assert cmds[-1][3:5] == ["queued-resources", "delete"]
  assert "--distributed" not in out.stdout  # no run step


@pytest.mark.parametrize("script", ["local.sh", "slurm.sh", "tpu_pod.sh"])
def test_missing_config_and_unknown_flag(script: str) -> None:
  base = ["--name=n", "--zone=z"] if script == "tpu_pod.sh" else []
  out = run(script, "--dry-run", *base, "--config=configs/none_such.py", "--workdir=w")
  assert out.returncode == 2
  assert out.stderr.strip() == "error: config file configs/none_such.py does not exist"
  out = run(script, "--dry-run", *base, "--bogus")
  assert out.returncode == 2 and "unknown argument --bogus" in out.stderr


def run_sweep(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "reparam_jax.sweep", *args], capture_output=True,
                        text=True, cwd=REPO, check=False)


def test_sweep_emits_slurm_jobs(config: str, tmp_path: Path) -> None:
  root = tmp_path / "root"
  (root / "reparam.rank=8,seed=0").mkdir(parents=True)
  (root / "reparam.rank=8,seed=0" / "done.json").write_text("{}")
  out = run_sweep(f"--config={config}", f"--workdir={root}", "--launcher=slurm", "--dry-run",
                  "--launcher_args=--nodes=2 --gpus-per-node=4", "--config.optimizer.lr=3e-4")
  assert out.returncode == 0, out.stderr
  sbatch = [c for c in commands(out.stdout) if c[0] == "sbatch"]
  assert len(sbatch) == 1  # the done point is skipped
  assert "--nodes=2" in sbatch[0] and "--ntasks-per-node=4" in sbatch[0]
  assert f"--workdir={root}/reparam.rank=16,seed=0" in sbatch[0]
  assert "--config.reparam.rank=16" in sbatch[0] and "--config.optimizer.lr=3e-4" in sbatch[0]
  assert not (root / "reparam.rank=16,seed=0").exists()


def test_sweep_runs_points_on_one_tpu(config: str, tmp_path: Path) -> None:
  out = run_sweep(f"--config={config}", f"--workdir={tmp_path / 'root'}", "--launcher=tpu",
                  "--dry-run", "--remote_root=gs://b/sw",
                  "--launcher_args=--name=pod --zone=us-central2-b --accelerator-type=v4-16")
  assert out.returncode == 0, out.stderr
  text = out.stdout
  assert text.count("tpu-vm create pod") == 1 and text.count("tpu-vm delete pod") == 1
  runs = [c for c in commands(text) if "--distributed" in " ".join(c)]
  assert len(runs) == 2
  assert "--workdir=gs://b/sw/reparam.rank=16,seed=0" in runs[1][-1]
  assert "--config.reparam.rank=16" in runs[1][-1]
  assert f"{tmp_path / 'root'}/reparam.rank=16,seed=0/done.json" in text  # fetched locally
