"""Every launch script in --dry-run mode (the printed commands carry the config and overrides),
and the sweep's SLURM job arrays and TPU pods run against fake sbatch/squeue/srun/scontrol and a
fake tpu_pod.sh: submission, the array task's line, requeue on SIGTERM, retries."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reparam_jax.errors import UserError
from reparam_jax.sweeps import launchers, points

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


def test_sweep_emits_one_slurm_job_array(config: str, tmp_path: Path) -> None:
  root = tmp_path / "root"
  (root / "reparam.rank=8,seed=0").mkdir(parents=True)
  (root / "reparam.rank=8,seed=0" / "done.json").write_text("{}")
  out = run_sweep(f"--config={config}", f"--workdir={root}", "--launcher=slurm", "--dry-run",
                  "--array_limit=3", "--launcher_args=--nodes=2 --gpus-per-node=4",
                  "--config.optimizer.lr=3e-4")
  assert out.returncode == 0, out.stderr
  sbatch = [c for c in commands(out.stdout) if c[0] == "sbatch"]
  assert len(sbatch) == 1
  assert "--nodes=2" in sbatch[0] and "--ntasks-per-node=4" in sbatch[0]
  assert "--array=0-0%3" in sbatch[0] and "--requeue" in sbatch[0]  # the done point is skipped
  assert "--signal=B:TERM@120" in sbatch[0] and "--job-name=root" in sbatch[0]
  assert sbatch[0][-2] == str(LAUNCH / "slurm_array.sbatch")
  assert sbatch[0][-1].startswith(f"{root}/slurm/array_")
  task = [line for line in out.stdout.splitlines() if line.startswith("# array task 0: ")]
  assert len(task) == 1
  argv = shlex.split(task[0].split(": ", 2)[2])
  assert f"--workdir={root}/reparam.rank=16,seed=0" in argv
  assert "--config.reparam.rank=16" in argv and "--config.optimizer.lr=3e-4" in argv
  assert not (root / "reparam.rank=16,seed=0").exists() and not (root / "slurm").exists()


FAKE_TRAIN = textwrap.dedent('''
    """Stands in for reparam_jax.train: logs its argv, writes done.json; on SIGTERM it
    'checkpoints' and exits 0 without done.json, as the real trainer does on preemption."""
    import json, os, signal, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    wd = args["workdir"]
    os.makedirs(wd, exist_ok=True)
    print("fake train", json.dumps(sys.argv[1:]), flush=True)
    if args.get("config.optimizer.lr") == "wait":
      signal.signal(signal.SIGTERM, lambda *_: (open(os.path.join(wd, "ckpt"), "w").close(),
                                                print("checkpointed", flush=True), sys.exit(0)))
      open(os.path.join(wd, "started"), "w").close()
      time.sleep(60)
      sys.exit(5)
    with open(os.path.join(wd, "done.json"), "w") as f:
      json.dump({"argv": sys.argv[1:]}, f)
''')


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict[str, str]:
  """sbatch, squeue, srun and scontrol stand-ins first on PATH; the trainer is fake_train.

  sbatch records its argv and prints "Submitted batch job <n>" (n from 123 up);
  squeue prints the ids listed in queue.txt (what is still queued/running);
  srun drops its options and runs the command; scontrol records its argv.
  """
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  scripts = {
      "sbatch": 'echo "$@" >> "$FAKE/sbatch_calls.txt"; n=$(wc -l < "$FAKE/sbatch_calls.txt"); '
                'echo "Submitted batch job $((122 + n))"',
      "squeue": 'cat "$FAKE/queue.txt" 2>/dev/null || true',
      "srun": 'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
      "scontrol": 'echo "$@" >> "$FAKE/scontrol_calls.txt"',
  }
  for name, body in scripts.items():
    (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (bin_dir / name).chmod(0o755)
  (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
  return dict(os.environ, FAKE=str(tmp_path), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
              PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))


def point_json(workdir: Path) -> dict:
  return json.loads((workdir / "point.json").read_text())


def test_slurm_array_submit_run_requeue_and_retry_limit(
    config: str, tmp_path: Path, fake_slurm: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture) -> None:
  root = tmp_path / "root"
  args = [sys.executable, "-m", "reparam_jax.sweep", f"--config={config}", f"--workdir={root}",
          "--launcher=slurm", "--train_module=fake_train", "--array_limit=3",
          f"--launcher_args=--partition=gpu --python={sys.executable}"]
  out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=fake_slurm,
                       check=False)

  def calls() -> list[str]:
    return (tmp_path / "sbatch_calls.txt").read_text().splitlines()

  assert out.returncode == 0, out.stdout + out.stderr
  assert "job array 123: 2 points, at most 3 at a time" in out.stdout
  (call,) = calls()
  argv = shlex.split(call)
  assert "--array=0-1%3" in argv and "--requeue" in argv and "--partition=gpu" in argv
  array_file = Path(argv[-1])
  assert array_file.parent == root / "slurm" and argv[-2] == str(LAUNCH / "slurm_array.sbatch")
  lines = array_file.read_text().splitlines()
  wd8, wd16 = root / "reparam.rank=8,seed=0", root / "reparam.rank=16,seed=0"
  assert f"--workdir={wd16}" in shlex.split(lines[1])
  for i, wd in enumerate((wd8, wd16)):
    info = point_json(wd)
    assert info["slurm"] == {"job_id": f"123_{i}", "array_job": "123", "task": i,
                             "array_file": str(array_file)}
    assert info["attempts"] == 1 and info["launch"]["launcher"] == "slurm"
    assert (wd / "slurm_job_id").read_text().strip() == f"123_{i}"

  # The array script maps SLURM_ARRAY_TASK_ID to its line: task 1 runs rank 16 only.
  env = dict(fake_slurm, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="123",
             REPARAM_PYTHON=sys.executable, REPARAM_MODULE="fake_train")
  task = subprocess.run(["bash", str(LAUNCH / "slurm_array.sbatch"), str(array_file)],
                        capture_output=True, text=True, cwd=REPO, env=env, check=False)
  assert task.returncode == 0, task.stdout + task.stderr
  assert (wd16 / "done.json").exists() and not (wd8 / "done.json").exists()
  log = (wd16 / "log.txt").read_text()
  assert "==== slurm array task 123_1" in log and "fake train" in log
  assert json.loads((wd16 / "done.json").read_text())["argv"][-1] == "--distributed"

  # Later calls, in this process (the command's flags are covered above).
  for key in ("PATH", "FAKE", "PYTHONPATH"):
    monkeypatch.setenv(key, fake_slurm[key])
  pts = points.make_points(points.get_sweep(config), config, root)

  def again(max_retries: int) -> tuple[launchers.SweepResult, str]:
    result = launchers.run_slurm(pts, launcher_args=["--partition=gpu"],
                                 train_module="fake_train", array_limit=3,
                                 max_retries=max_retries)
    launchers.report(result, len(pts))
    return result, capsys.readouterr().out

  # Task 0 still queued: nothing is submitted twice.
  (tmp_path / "queue.txt").write_text("123_0\n")
  result, out = again(2)
  assert result.ok and "job 123_0 still queued/running" in out
  assert len(calls()) == 1 and "1 already done" in out
  # Task 0 ended without done.json: resubmitted alone (retry 1/1), then given up.
  (tmp_path / "queue.txt").write_text("")
  result, out = again(1)
  assert result.ok, out
  assert "resubmitting (retry 1/1)" in out and len(calls()) == 2
  assert "--array=0-0%3" in shlex.split(calls()[1])
  assert point_json(wd8)["attempts"] == 2 and point_json(wd8)["slurm"]["job_id"] == "124_0"
  result, out = again(1)
  assert not result.ok and len(calls()) == 2
  assert (f"FAILED reparam.rank=8,seed=0: failed 2 attempts (last: SLURM job 124_0); not "
          f"resubmitted (--max_retries=1; raise it to try again); log: {wd8 / 'log.txt'}" in out)


def test_array_task_passes_sigterm_on_and_requeues(tmp_path: Path,
                                                   fake_slurm: dict[str, str]) -> None:
  wd = tmp_path / "root" / "p"
  array_file = tmp_path / "array.txt"
  array_file.write_text(shlex.join(["--config=c.py", f"--workdir={wd}",
                                    "--config.optimizer.lr=wait"]) + "\n")
  env = dict(fake_slurm, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="77",
             REPARAM_PYTHON=sys.executable, REPARAM_MODULE="fake_train")
  task = subprocess.Popen(["bash", str(LAUNCH / "slurm_array.sbatch"), str(array_file)],
                          cwd=REPO, env=env)
  deadline = time.monotonic() + 120
  while not (wd / "started").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert (wd / "started").exists(), "the fake run did not start within 120 s"
  task.send_signal(signal.SIGTERM)  # what --signal=B:TERM@grace sends the batch shell
  # The run's own exit status (0: it checkpointed), not the 143 of the `wait` the trap cut
  # short: that was the script's exit when the run ended before the trap's loop looked.
  assert task.wait(timeout=30) == 0
  assert (wd / "ckpt").exists() and not (wd / "done.json").exists()
  assert (tmp_path / "scontrol_calls.txt").read_text().split() == ["requeue", "77_0"]
  assert "requeueing 77_0 to resume" in (wd / "log.txt").read_text()


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


def test_sweep_spreads_points_over_tpu_pods_queued(tmp_path: Path) -> None:
  cfg = tmp_path / "three.py"
  cfg.write_text(textwrap.dedent('''
      import ml_collections
      def get_config():
        return ml_collections.ConfigDict({"seed": 0, "reparam": {"rank": 0}})
      def get_sweep(hyper):
        return hyper.sweep("reparam.rank", [4, 8, 16])
  '''))
  out = run_sweep(f"--config={cfg}", f"--workdir={tmp_path / 'root'}", "--launcher=tpu",
                  "--dry-run", "--remote_root=gs://b/sw", "--tpu_names=pa,pb",
                  "--launcher_args=--zone=z --accelerator-type=v4-8 --queued --spot")
  assert out.returncode == 0, out.stderr
  cmds = [c for c in commands(out.stdout) if c[0] == "gcloud"]
  for pod in ("pa", "pb"):
    create = [c for c in cmds if c[3:6] == ["queued-resources", "create", pod]]
    assert len(create) == 1 and "--spot" in create[0] and f"--node-id={pod}" in create[0]
    assert [c for c in cmds if c[3:6] == ["queued-resources", "delete", pod]]
    assert not [c for c in cmds if c[3:6] == ["tpu-vm", "create", pod]]
  runs = [(c[5], shlex.split(c[-1].split(" 2>&1")[0].split("&& ")[-1]))
          for c in cmds if "--distributed" in c[-1]]
  ranks = [(pod, next(a for a in argv if a.startswith("--config.reparam.rank="))[22:])
           for pod, argv in runs]
  # point i goes to pod i mod 2; each pod runs its share in order
  assert ranks == [("pa", "4"), ("pa", "16"), ("pb", "8")]
  assert "--workdir=gs://b/sw/reparam.rank=8" in runs[2][1]
  with pytest.raises(UserError, match="either with --tpu_names or with --name="):
    launchers.run_tpu(points.make_points([{}], str(cfg), tmp_path), dry_run=True,
                      tpu_names=["pa"], launcher_args=["--name=x", "--zone=z"])


FAKE_TPU_POD = textwrap.dedent('''\
    #!/usr/bin/env bash
    # Stands in for launch/tpu_pod.sh: records each call; a point's first run fails, its
    # second "fetches" done.json and the trainer's point.json.
    set -eu
    name=""; steps=""; local=""
    for a in "$@"; do
      case "$a" in --name=*) name="${a#*=}";; --steps=*) steps="${a#*=}";; --local-dir=*) local="${a#*=}";; esac
    done
    echo "$name $steps $(basename "${local:-none}")" >> "$FAKE/pod_calls.txt"
    if [[ "$steps" == run,fetch ]]; then
      mkdir -p "$local"
      if [[ ! -f "$local/ran_once" ]]; then touch "$local/ran_once"; exit 1; fi
      echo '{"step": 1}' > "$local/done.json"
      echo '{"provenance": {"commit": "c0ffee", "machine": {"hostname": "'"$name"'"}}, "starts": 2, "name": "remote"}' > "$local/point_remote.json"
    fi
''')


def test_tpu_pods_run_in_parallel_and_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  launch = tmp_path / "launch"
  launch.mkdir()
  (launch / "tpu_pod.sh").write_text(FAKE_TPU_POD)
  monkeypatch.setattr(launchers, "LAUNCH_DIR", launch)
  monkeypatch.setenv("FAKE", str(tmp_path))
  root = tmp_path / "root"
  pts = points.make_points([{"seed": s} for s in range(3)], "c.py", root)
  result = launchers.run_tpu(pts, launcher_args=["--zone=z"], tpu_names=["pa", "pb"],
                             max_retries=1)
  assert result.ok and len(result.succeeded) == 3
  calls = (tmp_path / "pod_calls.txt").read_text().splitlines()
  assert sorted(calls) == sorted(
      ["pa create,copy,install none", "pa run,fetch seed=0", "pa run,fetch seed=0",
       "pa run,fetch seed=2", "pa run,fetch seed=2", "pa delete none",
       "pb create,copy,install none", "pb run,fetch seed=1", "pb run,fetch seed=1",
       "pb delete none"])
  info = json.loads((root / "seed=1" / "point.json").read_text())
  assert info["attempts"] == 2 and info["name"] == "seed=1"  # the launcher's keys stay
  assert info["provenance"]["machine"]["hostname"] == "pb" and info["starts"] == 2
  assert info["tpu"] == {"name": "pb", "remote_workdir": str(root / "seed=1")}
  assert not (root / "seed=1" / "point_remote.json").exists()
  assert (root / "tpu" / "pa.log").exists()
  # max_retries=0: the first failure is final.
  (tmp_path / "pod_calls.txt").unlink()
  fresh = points.make_points([{"seed": 9}], "c.py", tmp_path / "root2")
  result = launchers.run_tpu(fresh, launcher_args=["--zone=z"], tpu_names=["pa"], max_retries=0,
                             keep=True)
  assert [why for _, why in result.failed] == ["exit status 1"]
  assert (tmp_path / "pod_calls.txt").read_text().count("run,fetch") == 1
