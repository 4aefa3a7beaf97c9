"""Per-row tuning (sweeps/tuning.py): the halving schedule and its cost, the choice, the checks
that keep it fair and off the reported split, and the rungs run through the local launcher
(a stand-in trainer, then the real one on a held-out split)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import textwrap
from pathlib import Path

import pytest

from reparam_jax.errors import UserError
from reparam_jax.sweeps import experiment, tuning
from reparam_jax.sweeps.experiment import Experiment, Metric, Variant
from reparam_jax.sweeps.launchers import run_points
from reparam_jax.sweeps.tuning import Tuning

REPO = Path(__file__).resolve().parent.parent
HOLDOUT = {"data.holdout_examples": 40, "data.evaluate_on": "holdout"}

CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
      return ml_collections.ConfigDict({
          "task": "classify", "seed": 0, "num_steps": 8, "size": 1,
          "optimizer": {"lr": 0.001, "warmup_steps": 4},
          "data": {"holdout_examples": 0, "evaluate_on": "validation"}})
''')

# A stand-in for reparam_jax.train: eval/accuracy peaks at lr = 0.01 on the held-out
# split and at lr = 0.1 on the validation split, grows with the steps, and lr = 1 diverges.
FAKE_TRAINER = textwrap.dedent('''
    import json, math, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    wd = args["workdir"]
    os.makedirs(wd, exist_ok=True)
    with open(os.path.join(wd, "invocations.txt"), "a") as f:
      f.write(" ".join(sys.argv[1:]) + "\\n")
    lr, steps = float(args["config.optimizer.lr"]), int(args.get("config.num_steps", 8))
    if lr >= 1:  # what exit_on_user_error prints for TrainingDiverged, and its exit status
      print("error: training diverged: non-finite loss at step 1; lower the lr", file=sys.stderr)
      sys.exit(3)
    best = 0.01 if args.get("config.data.evaluate_on") == "holdout" else 0.1
    size = int(args.get("config.size", 1))
    acc = 0.9 - 0.1 * abs(math.log10(lr / best)) - 0.2 / steps + 0.01 * size
    with open(os.path.join(wd, "done.json"), "w") as f:
      json.dump({"step": steps, "eval/accuracy": acc}, f)
''')


# --- the schedule and its cost -------------------------------------------------------------

@pytest.mark.parametrize("n", range(2, 28))
def test_halving_costs_at_most_one_full_run_per_setting(n: int) -> None:
  rungs = tuning.halving_schedule(n)
  cost = tuning.halving_cost(n)
  assert cost == pytest.approx(sum(r.settings * r.fraction for r in rungs))
  assert 0 < cost <= n
  # The documented bounds of the default schedule (eta 3, first rung >= 1/9).
  if n <= 3:
    assert [(r.settings, r.fraction) for r in rungs] == [(n, pytest.approx(1 / 3))]
  elif n <= 9:
    assert len(rungs) == 2 and cost <= 2 * n / 9 + 4 / 9 + 1e-9
  else:
    assert len(rungs) == 3 and rungs[-1].fraction == 1.0 and cost <= n / 3 + 13 / 9 + 1e-9
  # Each rung keeps ceil(n / eta) of the last, with eta times the steps.
  for a, b in itertools.pairwise(rungs):
    assert b.settings == -(-a.settings // 3) and b.fraction == pytest.approx(min(1, 3 * a.fraction))


def test_schedule_examples_other_etas_and_one_setting() -> None:
  plan = lambda n, eta=3, f=None: [(r.settings, round(r.fraction, 4))
                                   for r in tuning.halving_schedule(n, eta, f)]
  assert plan(1) == [] and tuning.halving_cost(1) == 0
  assert plan(9) == [(9, 0.1111), (3, 0.3333)] and tuning.halving_cost(9) == pytest.approx(2)
  assert plan(27) == [(27, 0.1111), (9, 0.3333), (3, 1.0)]
  assert plan(100) == [(100, 0.1111), (34, 0.3333), (12, 1.0)]  # stops at the full budget
  assert plan(4, eta=2) == [(4, 0.25), (2, 0.5)]
  assert plan(3, eta=3, f=0.5) == [(3, 0.5)]  # min_fraction above eta**-R wins
  for eta in (2, 3, 4):
    assert all(tuning.halving_cost(n, eta) <= n for n in range(2, 200)), eta


def test_rank_breaks_ties_by_declaration_and_puts_diverged_last() -> None:
  assert tuning.rank([0.5, 0.7, 0.7, None, float("nan")], "max") == [1, 2, 0, 3, 4]
  assert tuning.rank([0.5, 0.3, 0.3, None], "min") == [1, 2, 0, 3]
  assert tuning.settings_of({"config.optimizer.lr": [1, 2], "b": ["x", "y"]}) == [
      {"optimizer.lr": 1, "b": "x"}, {"optimizer.lr": 1, "b": "y"},
      {"optimizer.lr": 2, "b": "x"}, {"optimizer.lr": 2, "b": "y"}]
  assert tuning.row_dir("lora r=8") == f"lora_r=8-{tuning.row_dir('lora r=8')[-6:]}"
  assert tuning.row_dir("dense") == "dense" and tuning.row_dir("a_b") != tuning.row_dir("a b")


# --- the checks ------------------------------------------------------------------------------

def _exp(config: str = "cfg.py", **kwargs) -> Experiment:
  fields = dict(
      name="tuned", config=config, seeds=2, metrics=[Metric("eval/accuracy", goal="max")],
      variants={"small": Variant({"size": 1}, search={"optimizer.lr": [0.001, 0.01, 0.1, 1.0]}),
                "big": Variant({"size": 2}, search={"optimizer.lr": [0.003, 0.03, 0.3, 1.0]})},
      tuning=Tuning("eval/accuracy", holdout=HOLDOUT, eta=2), curves=())
  fields.update(kwargs)
  return Experiment(**fields)


@pytest.mark.parametrize("kwargs,message", [
    ({"holdout": {}}, r"Tuning\(holdout=...\) is empty"),
    ({"holdout": HOLDOUT, "goal": "best"}, "use 'max' or 'min'"),
    ({"holdout": HOLDOUT, "eta": 1}, "integer >= 2"),
    ({"holdout": HOLDOUT, "min_fraction": 0}, r"in \(0, 1\]"),
])
def test_bad_tuning_fields_are_one_line_errors(kwargs, message) -> None:
  with pytest.raises(UserError, match=message):
    Tuning("eval/accuracy", **kwargs)


def test_unequal_search_sizes_are_refused_unless_allowed() -> None:
  exp = _exp()
  tuning.check_tuning(exp)
  exp.variants["dense"] = {"size": 3}  # no search: 1 setting against 4
  with pytest.raises(UserError, match=r"rows search different numbers of settings \(small: 4, "
                                      r"big: 4, dense: 1\).*allow_unequal=True"):
    tuning.check_tuning(exp)
  tuning.check_tuning(_exp(variants=exp.variants,
                           tuning=Tuning("eval/accuracy", holdout=HOLDOUT, allow_unequal=True)))
  with pytest.raises(UserError, match="no tuning=Tuning"):
    tuning.check_tuning(_exp(tuning=None))
  with pytest.raises(UserError, match="searches seed"):
    tuning.check_tuning(_exp(variants={"a": Variant(search={"seed": [1, 2]})}))


@pytest.mark.parametrize("metrics,variant_reduce", [
    ([Metric("eval/loss", reduce="min")], {}),
    ([Metric("train/loss", reduce="at_max:eval/accuracy")], {}),
    (["eval/accuracy"], {"eval/accuracy": "max"}),
])
def test_a_reduction_that_selects_on_the_reported_split_is_refused(metrics, variant_reduce) -> None:
  variants = {"a": Variant({"size": 1}, reduce=variant_reduce, search={"optimizer.lr": [1, 2]})}
  with pytest.raises(UserError, match="picks the best evaluation .* reduce='final'"):
    tuning.check_tuning(_exp(metrics=metrics, variants=variants))
  # The same reductions of training metrics, or the final evaluation, read no eval step.
  tuning.check_tuning(_exp(metrics=[Metric("train/loss", reduce="min"), "eval/loss"],
                           variants={"a": Variant(search={"optimizer.lr": [1, 2]})}))


def test_holdout_overrides_a_task_does_not_read_are_refused() -> None:
  from reparam_jax.config.base import base_config
  config = base_config()
  assert tuning.holdout_unread(config) is None  # evaluates the reported split: nothing to check
  config.data.evaluate_on = "holdout"
  assert tuning.holdout_unread(config) is None  # lm on tiny_shakespeare carves it
  config.task = "classify"
  assert tuning.holdout_unread(config) is None
  config.task, config.data.prepared = "lm", "/shards"
  assert "not read: data.prepared carves no held-out split" in tuning.holdout_unread(config)
  config.task, config.data.prepared = "mlm", ""
  assert "not read: task 'mlm' carves no held-out split" in tuning.holdout_unread(config)
  # The trainer refuses such a run before any compute, in the same words.
  from reparam_jax.config.validate import validate_config
  with pytest.raises(UserError, match="task 'mlm' carves no held-out split"):
    validate_config(config)


def test_early_stopping_in_a_tuned_row_is_refused(tmp_path: Path) -> None:
  """The reported runs would keep their best checkpoint by the reported split's evaluations."""
  (tmp_path / "cfg.py").write_text(CONFIG.replace(
      '"optimizer":', '"early_stopping": {"metric": ""}, "optimizer":'))
  exp = _exp(str(tmp_path / "cfg.py"))
  stopping = dataclasses.replace(exp, variants={
      **exp.variants, "big": dataclasses.replace(
          exp.variants["big"], overrides={**exp.variants["big"].overrides,
                                          "early_stopping.metric": "eval/accuracy"})})
  submitted: list[str] = []
  with pytest.raises(UserError, match="row 'big': early_stopping.metric='eval/accuracy' would "
                                      "keep the reported runs' best checkpoint"):
    tuning.run_tuning(stopping, tmp_path, lambda pts: submitted.extend(p.name for p in pts))
  assert submitted == []  # refused before anything ran
  tuning.run_tuning(exp, tmp_path, lambda pts: submitted.extend(p.name for p in pts))
  assert submitted  # the same rows without it start their rungs


def test_early_stopping_in_an_unsearched_row_of_a_tuned_table_is_refused(tmp_path: Path) -> None:
  """An unsearched row's reported runs are evaluated on the reported split like the others."""
  (tmp_path / "cfg.py").write_text(CONFIG.replace(
      '"optimizer":', '"early_stopping": {"metric": ""}, "optimizer":'))
  unequal = Tuning("eval/accuracy", holdout=HOLDOUT, eta=2, allow_unequal=True)
  exp = _exp(str(tmp_path / "cfg.py"), tuning=unequal)
  stopping = dataclasses.replace(exp, variants={
      **exp.variants, "plain": Variant({"size": 1, "early_stopping.metric": "eval/loss"})})
  submitted: list[str] = []
  with pytest.raises(UserError, match="row 'plain': early_stopping.metric='eval/loss' would "
                                      "keep the reported runs' best checkpoint"):
    tuning.run_tuning(stopping, tmp_path, lambda pts: submitted.extend(p.name for p in pts))
  assert submitted == []
  plain = dataclasses.replace(exp, variants={**exp.variants, "plain": Variant({"size": 1})})
  tuning.run_tuning(plain, tmp_path, lambda pts: submitted.extend(p.name for p in pts))
  assert submitted


def test_a_choice_on_the_edge_of_its_range_says_so() -> None:
  """The best setting at the end of a searched range may have a better one beyond it."""
  settings = [{"optimizer.lr": lr, "model.dropout": d, "model.act": "gelu"}
              for lr in (1e-4, 3e-4, 1e-3) for d in (0.0, 0.1)]
  corner = {"optimizer.lr": 1e-3, "model.dropout": 0.0, "model.act": "gelu"}
  assert tuning.at_edge(settings, corner) == {"optimizer.lr": "largest",
                                              "model.dropout": "smallest"}
  inside = {"optimizer.lr": 3e-4, "model.dropout": 0.1, "model.act": "gelu"}
  assert tuning.at_edge(settings, inside) == {"model.dropout": "largest"}
  assert tuning.at_edge([{"lr": 1}], {"lr": 1}) == {}  # one value: no range to be on the edge of
  assert tuning.at_edge([{"on": False}, {"on": True}], {"on": True}) == {}
  assert tuning._describe_choice(settings, corner) == (
      "optimizer.lr=0.001 (largest searched), model.dropout=0.0 (smallest searched), "
      "model.act=gelu")


# --- the rungs, through the local launcher ---------------------------------------------------

def _launcher(calls: list[list[str]], parallel: int = 2, train_module: str = "reparam_jax.train"):
  def run(points):
    calls.append([p.name for p in points])
    return run_points(points, parallel=parallel, train_module=train_module)
  return run


def test_rungs_choose_on_the_holdout_resume_and_apply(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG)
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  exp = _exp(str(tmp_path / "cfg.py"))
  root = tmp_path / "root"
  calls: list[list[str]] = []
  outcome = tuning.run_tuning(exp, root, _launcher(calls, train_module="fake_train"))
  assert outcome.complete
  # Chosen on the held-out split (best lr 0.01), not the validation split (0.1).
  assert outcome.chosen == {"small": {"optimizer.lr": 0.01}, "big": {"optimizer.lr": 0.03}}
  # 4 settings, eta 2: rung 0 trains all 4 for 2 of 8 steps, rung 1 the best 2 for 4.
  assert [len(c) for c in calls] == [8, 4]
  assert outcome.cost == {"small": pytest.approx(4 * 0.25 + 2 * 0.5),
                          "big": pytest.approx(2.0)}
  assert outcome.columns["small"] == {"chosen": "optimizer.lr=0.01",
                                      "search": "4 settings, SH eta=2, 2 rungs, 2 full runs"}
  small = root / "tuning" / "small"
  names = sorted(p.name for p in small.iterdir())
  assert len(names) == 6 and all("data.evaluate_on=holdout" in n and n.endswith("seed=0")
                                 for n in names)
  # The warm-up scales with the steps: 4 of 8 -> 1 at 2 steps, 2 at 4 steps.
  assert "num_steps=2,optimizer.lr=0.001,optimizer.warmup_steps=1,size=1" in ",".join(names)
  assert "num_steps=4,optimizer.lr=0.01,optimizer.warmup_steps=2,size=1" in ",".join(names)

  choices = json.loads((root / "tuning" / "choices.json").read_text())
  row = choices["rows"]["small"]
  assert row["chosen"] == {"optimizer.lr": 0.01} and row["complete"] and row["at_edge"] == {}
  rung0, rung1 = row["rungs"]
  assert rung0["steps"] == 2 and rung1["steps"] == 4
  assert [e["status"] for e in rung0["scores"]] == ["done", "done", "done", "diverged"]
  assert rung0["scores"][3]["score"] is None and rung0["scores"][1]["score"] > 0.6
  assert [e["setting"]["optimizer.lr"] for e in rung1["scores"]] == [0.001, 0.01]
  assert row["planned_cost"] == pytest.approx(2.0) and choices["holdout"] == HOLDOUT
  # choices.md: the same record as a table, a line per setting, a column per rung.
  md = (root / "tuning" / "choices.md").read_text().splitlines()
  assert md[0].startswith("Tuning: each setting's eval/accuracy (max) on the held-out split "
                          "(data.holdout_examples=40, data.evaluate_on=holdout), seed 0")
  assert md[2] == "| row | setting | rung 0 | rung 1 | chosen |"
  small_lines = md[4:8]
  assert small_lines[0].startswith("| small | optimizer.lr=0.001 | ")
  assert small_lines[1].startswith("|  | optimizer.lr=0.01 | ")
  assert small_lines[1].endswith(" @ 4 | **chosen** |")
  assert small_lines[3] == "|  | optimizer.lr=1.0 | diverged @ 2 | — |  |"
  assert sum("**chosen**" in line for line in md) == 2

  # Re-running trains nothing: finished points are skipped, the diverged one is not retried.
  invocations = {p: (p / "invocations.txt").read_text() for p in small.iterdir()}
  calls.clear()
  again = tuning.run_tuning(exp, root, _launcher(calls, train_module="fake_train"))
  assert again == outcome and [len(c) for c in calls] == [6, 4]
  assert {p: (p / "invocations.txt").read_text() for p in small.iterdir()} == invocations
  assert tuning.run_tuning(exp, root, None) == outcome  # read only (ablate --render-only)

  # The reported runs: the chosen lr at the experiment's seeds, on the reported split.
  final = tuning.apply_choices(exp, outcome)
  assert final.variants["small"].overrides == {"size": 1, "optimizer.lr": 0.01}
  assert not final.variants["small"].search
  points, _ = experiment.expand(final, root)
  assert sorted(p.name for p in points) == [
      "optimizer.lr=0.01,size=1,seed=0", "optimizer.lr=0.01,size=1,seed=1",
      "optimizer.lr=0.03,size=2,seed=0", "optimizer.lr=0.03,size=2,seed=1"]


def test_an_unfinished_rung_is_incomplete_and_says_what_it_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  (tmp_path / "cfg.py").write_text(CONFIG)
  exp = _exp(str(tmp_path / "cfg.py"))
  submitted: list[str] = []
  outcome = tuning.run_tuning(exp, tmp_path, lambda pts: submitted.extend(p.name for p in pts))
  assert not outcome.complete and outcome.chosen == {} and len(submitted) == 8
  assert outcome.columns["big"]["chosen"] == ""
  row = json.loads((tmp_path / "tuning" / "choices.json").read_text())["rows"]["big"]
  assert not row["complete"] and "has no result yet" in row["waiting_for"]
  with pytest.raises(UserError, match="row 'small' has no chosen setting yet"):
    tuning.apply_choices(exp, outcome)
  # An experiment without searches passes through untouched.
  plain = _exp(variants={"a": {"size": 1}}, tuning=None)
  assert tuning.apply_choices(plain, tuning.run_tuning(plain, tmp_path, None)) is plain


@pytest.mark.heavy
def test_real_runs_choose_on_the_held_out_split(tmp_path: Path) -> None:
  """Three learning rates through the real trainer on a tiny labelled corpus: the tuning
  runs evaluate the 40 held-out training examples (not the 60 of the dev split), the
  lowest held-out loss is chosen, a re-run trains nothing, and a row without a search
  (accepted with allow_unequal) is left as it is."""
  from tests.helpers import tiny_labelled_corpus
  data = tiny_labelled_corpus(str(tmp_path), train=200, dev=60)
  tiny = {"data.vocab_size": 40, "model.num_layers": 1, "model.num_heads": 2,
          "model.embed_dim": 16, "model.mlp_dim": 32, "seq_len": 16, "batch_size": 16,
          "eval_batch_size": 64, "num_steps": 6, "log_every": 6, "eval_every": 6,
          "checkpoint_every": 6, "optimizer.warmup_steps": 3, "encoder.length_buckets": (),
          "model.embed_dropout": 0.0, "model.residual_dropout": 0.0,
          "encoder.classifier_dropout": 0.0}
  exp = Experiment(
      name="real", config=str(REPO / "configs" / "sst2" / "encoder.py"), seeds=1,
      overrides={**data, **tiny}, metrics=[Metric("eval/accuracy")], curves=(),
      variants={"tuned": Variant({}, search={"optimizer.lr": [1e-4, 3e-3, 3e-2]}),
                "fixed": Variant({"optimizer.lr": 1e-3})},
      tuning=Tuning("eval/loss", goal="min", holdout=HOLDOUT, allow_unequal=True))
  calls: list[list[str]] = []
  outcome = tuning.run_tuning(exp, tmp_path / "root", _launcher(calls))
  assert outcome.complete and [len(c) for c in calls] == [3]  # 3 settings: one rung at 1/3
  assert outcome.columns["fixed"] == {"chosen": "", "search": "not searched"}
  choices = json.loads((tmp_path / "root" / "tuning" / "choices.json").read_text())
  (rung,) = choices["rows"]["tuned"]["rungs"]
  assert rung["steps"] == 2 and list(choices["rows"]) == ["tuned"]
  losses = []
  for entry in rung["scores"]:
    wd = tmp_path / "root" / "tuning" / "tuned" / entry["point"]
    done = json.loads((wd / "done.json").read_text())
    assert done["step"] == 2 and entry["score"] == done["eval/loss"]
    # The evaluation's support is the held-out examples, not the dev split's 60.
    total = (wd / "report.txt").read_text().splitlines()[-3].split()[-1]
    assert total == "40", (wd / "report.txt").read_text()
    losses.append(done["eval/loss"])
  assert outcome.chosen == {"tuned": rung["scores"][losses.index(min(losses))]["setting"]}
  calls.clear()
  assert tuning.run_tuning(exp, tmp_path / "root", _launcher(calls)) == outcome
  final = tuning.apply_choices(exp, outcome)
  assert final.variants["fixed"] is exp.variants["fixed"]


@pytest.mark.parametrize("name", ["adapters", "sst2_pretrained", "adapters_budget"])
def test_committed_tuned_experiments_are_well_formed(name: str) -> None:
  """The MiniLM ablations tune every trainable row on the held-out split, at 3 seeds, with
  a reference row and without reductions that would select on the dev set."""
  from tests.helpers import REPO  # noqa: PLC0415
  exp = experiment.load_experiment(os.path.join(REPO, "experiments", f"{name}.py"))
  tuning.check_tuning(exp)
  assert exp.seeds == 3 and exp.reference in exp.variants
  searched = tuning.searched_rows(exp)
  assert exp.reference in searched and len(searched) >= 4
  sizes = {len(tuning.settings_of(v.search)) for v in searched.values()}
  assert len(sizes) == 1 and sizes <= {3, 4}  # one search budget for every row


def test_rows_shared_by_adapters_and_sst2_pretrained_are_the_same_points() -> None:
  """Given one --workdir, the second ablation reuses the first's runs of the rows they share:
  only when those rows, the experiment-wide overrides and the tuning are declared alike."""
  from tests.helpers import REPO  # noqa: PLC0415
  adapters, pretrained = (experiment.load_experiment(
      os.path.join(REPO, "experiments", f"{name}.py")) for name in ("adapters", "sst2_pretrained"))
  shared = sorted(set(adapters.variants) & set(pretrained.variants))
  assert shared == ["LoRA all r=8", "LoRA q,v r=8", "full fine-tuning"]
  for label in shared:
    assert adapters.variants[label] == pretrained.variants[label], label
  assert adapters.overrides == pretrained.overrides and adapters.seeds == pretrained.seeds
  same = ("metric", "goal", "holdout", "seed", "eta", "min_fraction", "steps_key", "scale_keys")
  assert all(getattr(adapters.tuning, f) == getattr(pretrained.tuning, f) for f in same)


def test_ablate_tunes_then_runs_the_choices_and_report_html_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  """One `ablate` call: the rungs, then the reported runs at the chosen lr; the table and the
  page (also rebuilt by `report_html`, which runs nothing) show each row's choice."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from reparam_jax import report_html  # noqa: PLC0415
  (tmp_path / "cfg.py").write_text(CONFIG)
  (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
  (tmp_path / "exp.py").write_text(textwrap.dedent(f'''
      from reparam_jax.sweeps.experiment import Experiment, Metric, Variant
      from reparam_jax.sweeps.tuning import Tuning
      def get_experiment():
        return Experiment(
            name="tuned", config={str(tmp_path / "cfg.py")!r}, seeds=2, reference="small",
            metrics=[Metric("eval/accuracy", goal="max", fmt=".3f")], curves=(),
            variants={{"small": Variant({{"size": 1}}, search={{"optimizer.lr": [0.001, 0.01, 0.1]}}),
                      "big": Variant({{"size": 2}}, search={{"optimizer.lr": [0.003, 0.03, 0.3]}})}},
            tuning=Tuning("eval/accuracy", holdout={HOLDOUT!r}))
  '''))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
  root = tmp_path / "root"
  args = [str(tmp_path / "exp.py"), f"--workdir={root}", "--no_validate"]
  out = subprocess.run([sys.executable, "-m", "reparam_jax.ablate", *args,
                        "--train_module=fake_train"], cwd=REPO, capture_output=True, text=True,
                       check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  # The reported runs are at the choices (held-out best 0.01 and 0.03), 2 seeds each.
  assert (root / "optimizer.lr=0.01,size=1,seed=1" / "done.json").exists()
  assert (root / "optimizer.lr=0.03,size=2,seed=0" / "done.json").exists()
  md = (root / "table.md").read_text()
  assert "| small | optimizer.lr=0.01 | 3 settings, SH eta=3, 1 rung" in md
  (root / "index.html").unlink()
  assert report_html.main(args[:2]) == 0
  page = (root / "index.html").read_text()
  assert "optimizer.lr=0.03" in page and 'data-row="big"' in page
  assert "0.843" in page  # big at lr 0.03, scored on the reported split: a real cell
