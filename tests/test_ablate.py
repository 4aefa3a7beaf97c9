"""Ablation tables from recorded metrics, the experiment files, and the curve plotter."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reparam_jax import plot
from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps import experiment, plots, tables
from reparam_jax.sweeps.experiment import Experiment, Metric, Plot, Variant

REPO = Path(__file__).resolve().parent.parent
# matplotlib's font-config parsing trips pyparsing deprecations; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")

CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
      return ml_collections.ConfigDict({"seed": 0, "size": 1})
''')

# A stand-in for reparam_jax.train run through --train_module: it writes the
# files the real trainer writes, with eval/loss = 1 + seed / size.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    wd = args["workdir"]
    if args.get("config.size") == "99":
      sys.exit("size 99 fails")
    if "config.teacher" in args and not os.path.exists(os.path.join(args["config.teacher"],
                                                                    "done.json")):
      sys.exit("teacher not finished: " + args["config.teacher"])
    os.makedirs(wd, exist_ok=True)
    with open(os.path.join(wd, "invocations.txt"), "a") as f:
      f.write("x\\n")
    loss = 1 + float(args.get("config.seed", 0)) / float(args.get("config.size", 1))
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
      f.write(json.dumps({"step": 10, "train/loss": loss + 1, "train/step_time_ms": 5.0}) + "\\n")
      f.write(json.dumps({"step": 20, "eval/loss": loss}) + "\\n")
    with open(os.path.join(wd, "done.json"), "w") as f:
      json.dump({"step": 20, "eval/loss": loss, "params/stored": 100}, f)
''')


def write_run(workdir: str | Path, done: dict | None, records: list[dict]) -> None:
  wd = Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  if done is not None:
    (wd / "done.json").write_text(json.dumps(done))


def two_variant_experiment(config: str, seeds: int = 3) -> Experiment:
  return Experiment(
      name="toy", config=config, seeds=seeds,
      variants={"small": {"size": 1}, "big": {"size": 2},
                "small best": Variant({"size": 1}, reduce={"eval/loss": "min",
                                                           "step": "at_min:eval/loss"})},
      metrics=[Metric("eval/loss", "val loss", fmt=".3f", goal="min"),
               Metric("params/stored", "params", fmt="si"),
               Metric("train/step_time_ms", "ms", fmt=".1f"),
               Metric("step", "step", fmt=".0f")],
      plots=[Plot(x="params/stored", y="eval/loss"), Plot(x="size", y="eval/loss")])


def test_table_mean_std_from_recorded_metrics(tmp_path: Path) -> None:
  exp = two_variant_experiment("cfg.py")
  points, entries = experiment.expand(exp, tmp_path)
  assert len(points) == 6  # "small best" reads the same runs as "small"
  small = {e.labels["seed"]: e.point.workdir for e in entries if e.labels["variant"] == "small"}
  big = {e.labels["seed"]: e.point.workdir for e in entries if e.labels["variant"] == "big"}
  for seed, loss in enumerate([1.0, 2.0, 3.0]):
    write_run(small[seed], {"step": 300, "eval/loss": loss, "params/stored": 1_500_000},
              [{"step": 100, "train/step_time_ms": 900.0},  # compile step
               {"step": 200, "train/step_time_ms": 10.0 + seed},
               {"step": 200, "eval/loss": loss - 0.5},
               {"step": 300, "train/step_time_ms": 12.0 + seed},
               {"step": 300, "eval/loss": loss}])
  # big: only 2 of 3 seeds finished; the third was interrupted.
  write_run(big[0], {"step": 300, "eval/loss": 0.5, "params/stored": 3e6}, [])
  write_run(big[1], {"step": 300, "eval/loss": 0.7, "params/stored": 3e6}, [])
  write_run(big[2], None, [{"step": 100, "eval/loss": 9.0}])

  tables.render(exp, entries, tmp_path)
  md = (tmp_path / "table.md").read_text()
  # A goal metric shows its 95% t-interval of the mean (mean ± 4.303 std / sqrt(n)).
  assert "| variant | val loss | val loss 95% CI | params | ms | step |" in md
  # mean 2, sample std 1; step time = median(900, 10+s, 12+s) = 12+s -> 13 ± 1.
  assert "| small | 2.000 ± 1.000 | [−0.484, 4.484] | 1.5M | 13.0 ± 1.0 | 300 |" in md
  # best eval per run: 0.5, 1.5, 2.5 at step 200.
  assert "| small best | 1.500 ± 1.000 | [−0.984, 3.984] | 1.5M | 13.0 ± 1.0 | 200 |" in md
  assert "| big | **0.600 ± 0.141 (n=2/3)** | [−0.671, 1.871] | 3M (n=2/3) | — |" in md

  rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
  assert rows[0]["variant"] == "small"
  assert float(rows[0]["eval/loss mean"]) == pytest.approx(2.0)
  assert float(rows[0]["eval/loss std"]) == pytest.approx(1.0)
  assert rows[1]["eval/loss n"] == "2" and rows[1]["train/step_time_ms mean"] == ""

  tex = (tmp_path / "table.tex").read_text()
  assert r"small & $2.000 \pm 1.000$ & $[-0.484, 4.484]$ & $1.5\,\mathrm{M}$ &" in tex
  assert r"$\mathbf{0.600} \pm 0.141$ ($n=2/3$)" in tex
  assert "\\toprule" in tex and "\\end{tabular}" in tex
  for png in ("eval_loss_vs_params_stored.png", "eval_loss_vs_size.png", "curves.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_pivot_columns(tmp_path: Path) -> None:
  from reparam_jax.sweeps import hyper as h
  exp = Experiment(name="grid", config="c.py", seeds=1, rows=("lr",), columns="size",
                   sweep=h.product(h.sweep("lr", [0.1, 0.2]), h.sweep("size", [1, 2])),
                   metrics=["eval/loss"], curves=())
  points, entries = experiment.expand(exp, tmp_path)
  for e in entries:
    write_run(e.point.workdir, {"eval/loss": e.labels["lr"] * 10 + e.labels["size"]}, [])
  table = tables.collect(exp, entries)
  md = tables.render_markdown(table)
  assert "| lr | size=1 | size=2 |" in md
  assert "| 0.2 | 3 | 4 |" in md
  # seeds.csv names the pivot column's value on each line.
  assert tables.render_seeds_csv(table).splitlines() == [
      "lr,size,metric,seed,value", "0.1,1,eval/loss,0,2", "0.1,2,eval/loss,0,3",
      "0.2,1,eval/loss,0,3", "0.2,2,eval/loss,0,4"]


def test_metric_reductions(tmp_path: Path) -> None:
  write_run(tmp_path, {"eval/loss": 1.0}, [
      {"step": 1, "eval/loss": 3.0, "train/loss": 5.0}, {"step": 2, "eval/loss": 2.0},
      {"step": 3, "train/loss": 4.0}, {"step": 4, "eval/loss": 2.5}])
  pm = tables.point_metric
  assert pm(tmp_path, "eval/loss") == 1.0  # done.json wins
  assert pm(tmp_path, "eval/loss", "last") == 2.5
  assert pm(tmp_path, "eval/loss", "min") == 2.0
  assert pm(tmp_path, "eval/loss", "median") == 2.5
  assert pm(tmp_path, "step", "at_min:eval/loss") == 2
  assert pm(tmp_path, "train/loss", "at_min:eval/loss") == 5.0
  assert pm(tmp_path, "train/loss") == 4.0  # not in done.json: last record
  assert pm(tmp_path / "missing", "eval/loss") is None


def run_ablate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "reparam_jax.ablate", *args], capture_output=True,
                        text=True, cwd=REPO, check=False)


def test_ablate_runs_missing_then_only_rerenders(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG)
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  (tmp_path / "exp.py").write_text(textwrap.dedent(f'''
      from reparam_jax.sweeps.experiment import Experiment, Metric
      def get_experiment():
        return Experiment(name="toy", config={str(tmp_path / "cfg.py")!r}, seeds=2,
                          variants={{"one": {{"size": 1}}, "two": {{"size": 2}}}},
                          metrics=[Metric("eval/loss", fmt=".2f")])
  '''))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  root = tmp_path / "root"
  args = [str(tmp_path / "exp.py"), f"--workdir={root}", "--train_module=fake_train"]
  out = run_ablate(*args)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "| one | 1.50 ± 0.71 |" in out.stdout and "| two | 1.25 ± 0.35 |" in out.stdout
  for f in ("table.md", "table.csv", "table.tex", "curves.png"):
    assert (root / f).exists()
  wd = root / "size=2,seed=1"
  assert (wd / "invocations.txt").read_text() == "x\n"
  (root / "table.md").unlink()
  out = run_ablate(*args)
  assert out.returncode == 0 and "4 already done, 0 ran" in out.stdout
  assert (wd / "invocations.txt").read_text() == "x\n"
  assert (root / "table.md").exists() and 'data-row="two"' in (root / "index.html").read_text()

  # A table of points from two commits is refused unless told; the data stays untouched.
  point = json.loads((wd / "point.json").read_text())
  for w, commit in ((wd, "a" * 40), (root / "size=1,seed=0", "b" * 40)):
    (w / "point.json").write_text(json.dumps({**point, "provenance": {"commit": commit}}))
  out = run_ablate(*args, "--render-only")
  assert out.returncode == 2 and "come from 2 commits" in out.stderr, out.stderr
  assert (wd / "done.json").exists()
  out = run_ablate(*args, "--render-only", "--allow_mixed_commits")
  assert out.returncode == 0, out.stderr


def test_missing_config_is_one_line_error(tmp_path: Path) -> None:
  (tmp_path / "exp.py").write_text(textwrap.dedent('''
      from reparam_jax.sweeps.experiment import Experiment
      def get_experiment():
        return Experiment(name="x", variants={"a": {"config": "configs/lm/none_such.py"}},
                          metrics=["eval/loss"])
  '''))
  out = run_ablate(str(tmp_path / "exp.py"), f"--workdir={tmp_path / 'r'}")
  assert out.returncode == 2
  assert out.stderr.strip() == (f"error: {tmp_path / 'exp.py'}: config file "
                                "configs/lm/none_such.py does not exist (needed by a)")
  out = run_ablate(str(tmp_path / "nope.py"))
  assert out.returncode == 2 and "experiment file" in out.stderr and "Traceback" not in out.stderr


def test_variant_reference_resolves_to_that_variants_workdir_and_runs_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG.replace('"size": 1', '"size": 1, "teacher": ""'))
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  # The student is declared first: the reference, not the order, decides when it runs.
  (tmp_path / "exp.py").write_text(textwrap.dedent(f'''
      from reparam_jax.sweeps.experiment import Experiment, Metric
      def get_experiment():
        return Experiment(name="kd", config={str(tmp_path / "cfg.py")!r}, seeds=2,
                          variants={{"student": {{"size": 2, "teacher": "{{variant:teacher}}"}},
                                    "teacher": {{"size": 1}}}},
                          metrics=[Metric("eval/loss", fmt=".2f")])
  '''))
  exp = experiment.load_experiment(tmp_path / "exp.py")
  points, entries = experiment.expand(exp, tmp_path / "root")
  workdir = {(e.labels["variant"], e.labels["seed"]): e.point.workdir for e in entries}
  student = {e.labels["seed"]: e.point for e in entries if e.labels["variant"] == "student"}
  for seed in (0, 1):
    assert student[seed].overrides["teacher"] == workdir[("teacher", seed)]
  assert [len(w) for w in experiment.run_waves(points)] == [2, 2]
  assert all(p.overrides.get("teacher") is None for p in experiment.run_waves(points)[0])

  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  out = run_ablate(str(tmp_path / "exp.py"), f"--workdir={tmp_path / 'root'}",
                   "--train_module=fake_train", "--parallel=2")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "| student | 1.25 ± 0.35 |" in (tmp_path / "root" / "table.md").read_text()

  exp.variants["student"]["teacher"] = "{variant:nobody}"
  with pytest.raises(UserError, match="names no variant 'nobody'"):
    experiment.expand(exp, tmp_path / "root")


def test_a_chain_of_references_runs_link_by_link_and_a_cycle_is_refused(tmp_path: Path) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG.replace('"size": 1', '"size": 1, "teacher": ""'))
  (tmp_path / "exp.py").write_text(textwrap.dedent(f'''
      from reparam_jax.sweeps.experiment import Experiment, Metric
      def get_experiment():
        return Experiment(name="chain", config={str(tmp_path / "cfg.py")!r}, seeds=1,
                          variants={{"compressed": {{"size": 3, "teacher": "{{variant:lora}}"}},
                                    "lora": {{"size": 2, "teacher": "{{variant:base}}"}},
                                    "base": {{"size": 1}}}},
                          metrics=[Metric("eval/loss", fmt=".2f")])
  '''))
  exp = experiment.load_experiment(tmp_path / "exp.py")
  points, entries = experiment.expand(exp, tmp_path / "root")
  label = {e.point.name: e.labels["variant"] for e in entries}
  waves = experiment.run_waves(points)
  assert [[label[p.name] for p in w] for w in waves] == [["base"], ["lora"], ["compressed"]]
  exp.variants["base"]["teacher"] = "{variant:compressed}"
  points, _ = experiment.expand(exp, tmp_path / "root2")
  with pytest.raises(UserError, match="form a cycle"):
    experiment.run_waves(points)


def test_a_failed_row_holds_back_only_the_rows_that_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG.replace('"size": 1', '"size": 1, "teacher": ""'))
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  (tmp_path / "exp.py").write_text(textwrap.dedent(f'''
      from reparam_jax.sweeps.experiment import Experiment, Metric
      def get_experiment():
        return Experiment(name="chain", config={str(tmp_path / "cfg.py")!r}, seeds=1,
                          variants={{"base": {{"size": 1}},
                                    "lora": {{"size": 2, "teacher": "{{variant:base}}"}},
                                    "broken": {{"size": 99, "teacher": "{{variant:base}}"}},
                                    "of lora": {{"size": 3, "teacher": "{{variant:lora}}"}},
                                    "of broken": {{"size": 4, "teacher": "{{variant:broken}}"}}}},
                          metrics=[Metric("eval/loss", fmt=".2f")])
  '''))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  out = run_ablate(str(tmp_path / "exp.py"), f"--workdir={tmp_path / 'root'}",
                   "--train_module=fake_train")
  assert out.returncode == 1, out.stdout + out.stderr
  assert "1 points need results of unfinished points" in out.stdout
  table = (tmp_path / "root" / "table.md").read_text()
  assert "| of lora | 1.00 |" in table and "| of broken | — |" in table, table


def test_variant_flag_runs_and_tabulates_only_those_rows(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG.replace('"size": 1', '"size": 1, "teacher": ""'))
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  (tmp_path / "exp.py").write_text(textwrap.dedent(f'''
      from reparam_jax.sweeps.experiment import Experiment, Metric
      def get_experiment():
        return Experiment(name="kd", config={str(tmp_path / "cfg.py")!r}, seeds=2,
                          variants={{"student": {{"size": 2, "teacher": "{{variant:teacher}}"}},
                                    "teacher": {{"size": 1}}, "other": {{"size": 4}}}},
                          metrics=[Metric("eval/loss", fmt=".2f")])
  '''))
  exp = experiment.load_experiment(tmp_path / "exp.py")
  assert list(experiment.select_variants(exp, ["other"]).variants) == ["other"]
  # The student needs its teacher's runs, so selecting it brings the teacher.
  assert list(experiment.select_variants(exp, ["student"]).variants) == ["student", "teacher"]
  assert experiment.select_variants(exp, []) is exp

  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  root = tmp_path / "root"
  out = run_ablate(str(tmp_path / "exp.py"), f"--workdir={root}", "--train_module=fake_train",
                   "--variant=other")
  assert out.returncode == 0, out.stdout + out.stderr
  assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["size=4,seed=0",
                                                                   "size=4,seed=1"]
  table = (root / "table.md").read_text()
  assert "| other | 1.12 ± 0.18 |" in table and "student" not in table

  out = run_ablate(str(tmp_path / "exp.py"), f"--workdir={root}", "--variant=others")
  assert out.returncode == 2
  assert out.stderr.strip() == ("error: experiment kd: no variant 'others' "
                                "(variants: 'student', 'teacher', 'other')")


@pytest.mark.parametrize("name,n_points,n_rows", [
    ("lowrank_rank_sweep", 6, 6), ("reparam_comparison", 8, 8), ("regularization", 4, 5),
    ("sst2", 3, 3)])
def test_committed_experiments_expand(tmp_path: Path, name: str, n_points: int,
                                      n_rows: int) -> None:
  exp = experiment.load_experiment(REPO / "experiments" / f"{name}.py")
  points, entries = experiment.expand(exp, tmp_path)
  assert len(points) == n_points
  assert len({e.labels["variant"] for e in entries}) == n_rows
  md = tables.render_markdown(tables.collect(exp, entries))  # renders with nothing run
  assert md.count("—") >= n_rows


def test_rank_sweep_uses_rank_override(tmp_path: Path) -> None:
  exp = experiment.load_experiment(REPO / "experiments" / "lowrank_rank_sweep.py")
  points, _ = experiment.expand(exp, tmp_path)
  names = {p.name for p in points}
  assert "reparam.rank=16,seed=0" in names and "config=lm.shakespeare_char,seed=0" in names
  p16 = next(p for p in points if p.name == "reparam.rank=16,seed=0")
  assert p16.config == "configs/lm/shakespeare_char_lowrank.py"
  assert "--config.reparam.rank=16" in p16.train_args()


def test_plot_cli_writes_png(tmp_path: Path) -> None:
  for i, name in enumerate(["a", "b"]):
    write_run(tmp_path / name, None, [
        {"step": s, "train/loss": 3 - s / 100 + i, "train/step_time_ms": 5} for s in (0, 50, 100)
    ] + [{"step": 100, "eval/loss": 2.5 + i}, "torn" and {"step": 50, "eval/loss": 2.8}])
  with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
    f.write('{"step": 150, "train/lo')  # a run killed mid-write
  out = tmp_path / "curves.png"
  assert plot.main([str(tmp_path / "a"), str(tmp_path / "b"), f"--out={out}"]) == 0
  assert out.read_bytes()[:4] == b"\x89PNG"
  assert plots.series(rundir.read_metrics(tmp_path / "a"), "eval/loss") == ([50.0, 100.0], [2.8, 2.5])
  with pytest.raises(SystemExit):
    plot.main([str(tmp_path / "missing"), f"--out={out}"])


def test_reference_must_be_a_row_and_comes_along_with_selected_rows():
  with pytest.raises(UserError, match="reference='nope' is not a row"):
    Experiment(name="r", config="c.py", variants={"a": {}, "b": {}}, metrics=["eval/loss"],
               reference="nope")
  exp = Experiment(name="r", config="c.py", variants={"a": {}, "b": {}, "c": {}},
                   metrics=["eval/loss"], reference="a")
  assert list(experiment.select_variants(exp, ["c"]).variants) == ["a", "c"]
  assert Experiment(name="d", config="c.py", variants={"a": {}}, metrics=["x"]).seeds == 3
  from reparam_jax.sweeps.budget import Budget  # noqa: PLC0415
  budgeted = Experiment(name="b", config="c.py", metrics=["x"], variants={
      "dense": {}, "other": {},
      "lora": Variant({}, budget=Budget("trainable_params", 0.01, relative_to="dense"))})
  assert list(experiment.select_variants(budgeted, ["lora"]).variants) == ["dense", "lora"]
