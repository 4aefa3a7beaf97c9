"""Seeds and significance in ablation tables: t-intervals, paired tests, Δ-vs-reference marks."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from reparam_jax.sweeps import experiment, stats, tables
from reparam_jax.sweeps.experiment import Experiment, Metric, Variant

# matplotlib's font-config parsing trips pyparsing deprecations; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")

N_DEV = 872  # SST-2's dev split
# Student's t 97.5% quantile on 2 df in closed form: (2p − 1) sqrt(2 / (4 p (1 − p))), p = 0.975.
T_2DF = 0.95 * math.sqrt(2 / 0.0975)


def test_summary_is_mean_sample_std_and_t_interval() -> None:
  s = stats.summary([1.0, 2.0, 3.0])
  assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
  assert s.ci_low == pytest.approx(2 - T_2DF / math.sqrt(3), rel=1e-12)  # 2 ± 4.3027 / sqrt(3)
  assert s.ci_high == pytest.approx(2 + T_2DF / math.sqrt(3), rel=1e-12)
  assert stats.t_quantile(10) == pytest.approx(2.228138851986274, rel=1e-12)
  one = stats.summary([0.9])
  assert (one.n, one.mean, one.std, one.ci_low, one.ci_high) == (1, 0.9, None, None, None)
  assert stats.summary([]).mean is None


def test_paired_seeds_is_a_paired_t_test() -> None:
  # Differences 0.5, 1.0, 0.5: mean 2/3, se 1/6, t = 4 on 2 df; p = 1 - 4/sqrt(18) in closed form.
  c = stats.paired_seeds([1.0, 2.0, 3.0], [0.5, 1.0, 2.5])
  assert c.diff == pytest.approx(2 / 3)
  assert c.p == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-9)
  assert c.ci_low == pytest.approx(2 / 3 - T_2DF / 6)
  assert c.significant is False and c.method == stats.SEED_T_TEST and c.n == 3
  # Pairing is what finds it: every seed moved by ~ +1 while the seeds spread by 10.
  c = stats.paired_seeds([11.0, 21.1, 30.9, 41.0], [10.0, 20.0, 30.0, 40.0])
  assert c.significant is True and c.ci_low > 0.8
  one = stats.paired_seeds([1.0], [0.5])
  assert one.diff == 0.5 and not one.testable and one.method == stats.UNTESTED
  with pytest.raises(ValueError, match="same seeds"):
    stats.paired_seeds([1.0, 2.0], [1.0])


def dev_outcomes(seed: int = 0, accuracy: float = 0.85) -> np.ndarray:
  return (np.random.default_rng(seed).random(N_DEV) < accuracy).astype(np.int8)


def flip(correct: np.ndarray, wrong_to_right: int, right_to_wrong: int = 0,
         offset: int = 0) -> np.ndarray:
  out = correct.copy()
  out[np.flatnonzero(correct == 0)[offset:offset + wrong_to_right]] = 1
  out[np.flatnonzero(correct == 1)[offset:offset + right_to_wrong]] = 0
  return out


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one() -> None:
  base = dev_outcomes()
  same = stats.paired_bootstrap(base, base)
  assert (same.diff, same.ci_low, same.ci_high, same.p) == (0.0, 0.0, 0.0, 1.0)
  assert same.significant is False
  # 30 examples flip each way: the rows disagree a lot, the accuracies do not differ.
  churn = stats.paired_bootstrap(flip(base, 30, 30), base)
  assert churn.diff == 0.0 and churn.significant is False and churn.p > 0.5
  assert stats.paired_bootstrap(flip(base, 3), base).significant is False
  better = stats.paired_bootstrap(flip(base, 60), base)
  d = 60 / N_DEV
  assert better.diff == pytest.approx(d) and better.significant is True
  assert better.p == pytest.approx(2 / 10_001)  # no resample reached 0
  # The percentile interval matches the normal one, d ± 1.96 sqrt(d (1 - d) / n), to ~5%.
  half = 1.96 * math.sqrt(d * (1 - d) / N_DEV)
  assert better.ci_low == pytest.approx(d - half, abs=0.05 * half)
  assert better.ci_high == pytest.approx(d + half, abs=0.05 * half)
  worse = stats.paired_bootstrap(base, flip(base, 60))
  assert worse.significant is True and worse.ci_high < 0


def test_paired_bootstrap_is_deterministic_and_checks_shapes() -> None:
  a, b = flip(dev_outcomes(), 12, 4), dev_outcomes()
  first = stats.paired_bootstrap(a, b, seed=0)
  assert stats.paired_bootstrap(a, b, seed=0) == first
  assert stats.paired_bootstrap(a, b, seed=1).ci_low != first.ci_low
  with pytest.raises(ValueError, match="same examples"):
    stats.paired_bootstrap(a, b[:-1])
  with pytest.raises(ValueError, match="same examples"):
    stats.paired_bootstrap(np.stack([a, a]), np.stack([b, b, b]))
  # One seed as a [1, examples] array is the bootstrap over examples, draw for draw.
  assert stats.paired_bootstrap(a[None], b[None], seed=0) == first
  assert first.method == stats.BOOTSTRAP


def test_a_difference_that_flips_sign_between_seeds_is_not_significant() -> None:
  """Resampling the seeds too (Sellam et al.'s multi-bootstrap) keeps the seed spread in the
  interval; averaging each example over the seeds, then resampling examples, drops it."""
  base = [dev_outcomes(s) for s in range(3)]
  # +60, +60 and −40 examples at seeds 0, 1, 2: +80/3 on average, but seed 2 disagrees.
  row = np.stack([flip(base[0], 60), flip(base[1], 60), flip(base[2], 0, 40)])
  ref = np.stack(base)
  examples_only = stats.paired_bootstrap(row.mean(axis=0), ref.mean(axis=0))
  assert examples_only.significant is True  # what the seed-averaged test would claim
  both = stats.paired_bootstrap(row, ref)
  assert both.method == stats.MULTI_BOOTSTRAP and both.n == N_DEV
  assert both.diff == pytest.approx(80 / 3 / N_DEV)
  assert both.ci_low < 0 < both.ci_high and both.significant is False
  # The same mean gain on every seed is significant either way.
  steady = np.stack([flip(base[s], 27) for s in range(3)])
  assert stats.paired_bootstrap(steady, ref).significant is True


def write_finished(workdir: str, done: dict, correct: np.ndarray | None = None) -> None:
  wd = Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  (wd / "metrics.jsonl").write_text(json.dumps({"step": 10, **done}) + "\n")
  (wd / "done.json").write_text(json.dumps({"step": 10, **done}))
  if correct is not None:
    np.savez(wd / "eval_examples.npz", correct=correct.astype(np.int8),
             loss=np.where(correct == 1, 0.1, 2.0).astype(np.float32))


def sst2_like(tmp_path: Path, **kw) -> tuple[Experiment, list]:
  exp = Experiment(
      name="compare", config="cfg.py", seeds=3, reference="full", curves=(),
      variants={"full": {"size": 1}, "better": {"size": 2}, "same": {"size": 3},
                "short": {"size": 4}, "full, best eval": Variant({"size": 1},
                                                                 reduce={"eval/accuracy": "max"})},
      metrics=[Metric("eval/accuracy", "dev accuracy", fmt=".3f", goal="max"),
               Metric("eval/loss", "dev loss", fmt=".3f", goal="min"),
               Metric("params/stored", "params", fmt="si")], **kw)
  _, entries = experiment.expand(exp, tmp_path)
  by_row = {}
  for e in entries:
    by_row.setdefault(e.labels["variant"], {})[e.labels["seed"]] = e.point.workdir
  for seed in range(3):
    base = dev_outcomes(seed)
    rows = {"full": (base, 0.40 + 0.01 * seed),
            # right on 60 more dev examples at every seed; loss lower by 0.05 ± 0.002
            "better": (flip(base, 60), 0.35 + 0.01 * seed + 0.002 * (seed - 1)),
            # 2 more right, 1 more wrong: indistinguishable; loss moves both ways
            "same": (flip(base, 2, 1, offset=seed), 0.40 + 0.01 * seed + 0.01 * (seed - 1)),
            "short": (flip(base, 60), 0.30)}
    for label, (correct, loss) in rows.items():
      if label == "short" and seed == 2:
        continue  # never finished
      write_finished(by_row[label][seed], {"eval/accuracy": float(correct.mean()),
                                           "eval/loss": loss, "params/stored": 1000},
                     correct)
  return exp, entries


def test_table_compares_each_row_with_the_reference_and_marks_not_significant(
    tmp_path: Path) -> None:
  exp, entries = sst2_like(tmp_path)
  extra = {"better": {"chosen": "optimizer.lr=3e-4", "search": "4 settings, 1.33 full runs"},
           "same": {"chosen": "optimizer.lr=1e-4"}}
  tables.render(exp, entries, tmp_path, extra_columns=extra)
  md = (tmp_path / "table.md").read_text()
  header = md.splitlines()[2]
  assert header == ("| variant | chosen | search | dev accuracy | dev accuracy 95% CI | "
                    "Δ dev accuracy vs full | dev loss | dev loss 95% CI | Δ dev loss vs full "
                    "| params |")
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines()[4:9]}
  assert rows["full"][5] == "reference" and rows["full"][1:3] == ["", ""]
  assert rows["better"][1:3] == ["optimizer.lr=3e-4", "4 settings, 1.33 full runs"]
  # Bootstrap over seeds and examples: +60/872 = +0.069 on every seed.
  assert rows["better"][5].startswith("+0.069 [+0.05") and "n.s." not in rows["better"][5]
  assert rows["same"][5].startswith("+0.001 [−0.00") and rows["same"][5].endswith(" n.s.")
  # Losses: paired t-test over seeds; better's loss is lower at every seed.
  assert rows["better"][8].startswith("−0.050 [−0.05") and "n.s." not in rows["better"][8]
  assert rows["same"][8].endswith(" n.s.")
  # The row missing seed 2 is compared on seeds 0 and 1 only, and says so.
  assert rows["short"][5].endswith("(on seeds 0, 1)") and "(n=2/3)" in rows["short"][3]
  # A best-over-training reduction is not the evaluation the per-example arrays hold:
  # it falls back to the seeds test.
  notes = md.split("| params |")[1]
  assert ("dev accuracy (better, same, short): paired bootstrap over the shared seeds and the "
          "872 evaluation examples (10,000 resamples" in notes)
  assert "dev accuracy (full, best eval), dev loss: paired t-test over the seeds" in notes
  assert "n.s. = not significant at 95%" in notes and "(seeds 0, 1, 2)" in notes

  tex = (tmp_path / "table.tex").read_text()
  tex_rows = {line.split(" & ")[0]: line.split(" & ") for line in tex.splitlines()
              if " & " in line}
  assert tex_rows["variant"][5] == r"$\Delta$ dev accuracy vs full"
  assert tex_rows["better"][1] == "optimizer.lr=3e-4"
  assert tex_rows["same"][5].endswith("$ n.s.") and tex_rows["same"][5].startswith("$+0.001")
  assert "n.s." not in tex_rows["better"][5] and tex_rows["full"][5] == "reference"
  assert r"n.s. = not significant at 95\%" in tex

  table = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
  by = {r["variant"]: r for r in table}
  assert by["same"]["eval/accuracy delta mark"] == "n.s." == by["same"]["eval/loss delta mark"]
  assert by["better"]["eval/accuracy delta mark"] == "" == by["better"]["eval/loss delta mark"]
  assert float(by["better"]["eval/accuracy delta"]) == pytest.approx(60 / N_DEV)
  assert by["better"]["eval/accuracy delta test"] == stats.MULTI_BOOTSTRAP
  assert by["full, best eval"]["eval/accuracy delta test"] == stats.SEED_T_TEST
  assert by["short"]["eval/accuracy delta seeds"] == "0 1"
  assert by["better"]["chosen"] == "optimizer.lr=3e-4" and by["full"]["search"] == ""
  assert float(by["full"]["eval/loss ci_low"]) == pytest.approx(0.41 - T_2DF * 0.01
                                                                / math.sqrt(3))
  # seeds.csv: every finished run's value; the row missing seed 2 has seeds 0 and 1.
  seeds = list(csv.DictReader(io.StringIO((tmp_path / "seeds.csv").read_text())))
  accuracy = [(r["variant"], r["seed"]) for r in seeds if r["metric"] == "eval/accuracy"]
  assert [s for v, s in accuracy if v == "short"] == ["0", "1"]
  assert [s for v, s in accuracy if v == "better"] == ["0", "1", "2"]
  cell = tables.collect(exp, entries).cells[(("better",), exp.metrics[0], None)]
  assert [float(r["value"]) for r in seeds if r["variant"] == "better"
          and r["metric"] == "eval/accuracy"] == pytest.approx(cell.values)
  # One mark, the same in every format.
  for text in (md, tex, (tmp_path / "table.csv").read_text()):
    assert text.count(tables.NOT_SIGNIFICANT) >= 2


def test_per_example_arrays_that_do_not_match_the_metric_fall_back_to_seeds(
    tmp_path: Path) -> None:
  exp, entries = sst2_like(tmp_path)
  # "better" at seed 1 wrote arrays of some other evaluation (their mean is not its accuracy).
  wd = next(e.point.workdir for e in entries
            if e.labels["variant"] == "better" and e.labels["seed"] == 1)
  np.savez(Path(wd) / "eval_examples.npz", correct=dev_outcomes(7))
  table = tables.collect(exp, entries)
  acc = exp.metrics[0]
  assert table.comparisons[(("better",), acc, None)].comparison.method == stats.SEED_T_TEST
  assert table.comparisons[(("same",), acc, None)].comparison.method == stats.MULTI_BOOTSTRAP


def test_one_seed_without_examples_is_untested_and_no_reference_means_no_delta(
    tmp_path: Path) -> None:
  exp = Experiment(name="lm", config="cfg.py", seeds=1, reference="a", curves=(),
                   variants={"a": {"size": 1}, "b": {"size": 2}},
                   metrics=[Metric("eval/loss", fmt=".2f", goal="min")])
  _, entries = experiment.expand(exp, tmp_path)
  for e in entries:
    write_finished(e.point.workdir, {"eval/loss": float(e.labels["size"])})
  md = tables.render_markdown(tables.collect(exp, entries))
  assert "| a | **1.00** | reference |" in md and "| b | 2.00 | +1.00 (untested) |" in md
  assert "95% CI" not in md  # one seed: no spread to show
  assert "(untested) = one shared seed and no per-example results" in md
  exp.reference = None
  view = tables.table_view(tables.collect(exp, entries))
  assert view.headers == ["variant", "eval/loss"] and view.rows == [["a", "1.00"], ["b", "2.00"]]
  assert view.best == {(0, 1)} and view.row_labels == ["a", "b"] and view.label_columns == 1
