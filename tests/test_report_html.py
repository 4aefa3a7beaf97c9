"""The ablation's HTML page: built from finished points, opened in a real headless Chromium.

The browser tests need Debian's `chromium` (`make test` installs it when run as
root); without one they are skipped, except under CI=true, where a missing
browser fails them.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reparam_jax import report_html
from reparam_jax.sweeps import experiment
from reparam_jax.sweeps import html as html_page
from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

# matplotlib's font-config parsing trips pyparsing deprecations; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")

# Row label -> (stored bytes, trainable params, dev accuracy, eval loss, step ms).
# "bad & <slow>" costs the most bytes for the worst accuracy: dominated, off the front;
# its label also checks that labels are escaped, not injected.
ROWS = {
    "dense": (4.0e6, 1.0e6, 0.90, 0.30, 20.0),
    "LoRA r=8": (4.2e6, 5.0e4, 0.91, 0.28, 15.0),
    "int8": (1.0e6, 1.0e6, 0.88, 0.33, 12.0),
    'bad & <slow> "x"': (5.0e6, 2.0e6, 0.85, 0.40, 40.0),
}
PLOTS = {f"pareto:{y}:{x}" for y in ("eval/accuracy", "eval/loss")
         for x in ("params/bytes", "params/trainable", "train/step_time_ms")} | {
    "plot:eval/loss:params/trainable", "curve:train/loss", "curve:eval/accuracy"}


def toy_experiment(config: str = "cfg.py") -> Experiment:
  return Experiment(
      name="toy html", config=config, seeds=2, description="Four rows, two seeds each.",
      variants={label: {"size": i + 1} for i, label in enumerate(ROWS)},
      metrics=[Metric("eval/accuracy", "dev acc", fmt=".3f", goal="max"),
               Metric("eval/loss", "dev loss", fmt=".3f", goal="min"),
               Metric("params/bytes", "bytes", fmt="si"),
               Metric("params/trainable", "trainable", fmt="si"),
               Metric("train/step_time_ms", "ms", fmt=".1f")],
      plots=[Plot(x="params/trainable", y="eval/loss")],
      curves=("train/loss", "eval/accuracy"))


def write_finished_points(exp: Experiment, root: Path) -> list[experiment.Entry]:
  """Each point as the trainer and launcher leave it: done.json, metrics.jsonl, point.json."""
  _, entries = experiment.expand(exp, root)
  for e in entries:
    nbytes, trainable, acc, loss, ms = ROWS[e.labels["variant"]]
    seed = e.labels["seed"]
    acc, loss = acc + 0.01 * seed, loss + 0.02 * seed  # seed spread: error bars and bands
    wd = Path(e.point.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    records = [{"step": s, "train/loss": loss + 2.0 * math.exp(-s / 100) + 0.01 * (s % 7),
                "train/step_time_ms": ms + seed} for s in range(10, 310, 10)]
    records += [{"step": s, "eval/accuracy": acc - 0.1 * (300 - s) / 300, "eval/loss": loss}
                for s in (100, 200, 300)]
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (wd / "done.json").write_text(json.dumps({
        "step": 300, "eval/accuracy": acc, "eval/loss": loss, "params/bytes": nbytes,
        "params/trainable": trainable}))
    (wd / "point.json").write_text(json.dumps({
        "name": e.point.name, "config": e.point.config, "overrides": e.point.overrides,
        "provenance": {"commit": "abc1234def", "dirty": False, "machine": {"host": "n1"}},
        "start": "2025-01-01T10:00:00", "end": "2025-01-01T11:00:00"}))
  return entries


@pytest.fixture
def page(tmp_path: Path) -> Path:
  exp = toy_experiment()
  return html_page.write_page(exp, write_finished_points(exp, tmp_path / "root"), tmp_path / "root")


class Handles(HTMLParser):
  """The page's stable handles: table rows, plots, and the rows drawn in each plot."""

  def __init__(self, text: str) -> None:
    super().__init__()
    self.table_rows: list[str] = []
    self.plots: dict[str, list[str]] = {}
    self.front: dict[str, list[str]] = {}
    self.external: list[str] = []
    self.ready = False
    self._plot: str | None = None
    self.feed(text)

  def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
    a = dict(attrs)
    if tag == "html":
      self.ready = a.get("data-ready") == "1"
    if tag == "tr" and "data-row" in a:
      self.table_rows.append(a["data-row"])
    if tag == "svg" and "data-plot" in a:
      self._plot = a["data-plot"]
      self.plots[self._plot] = []
      self.front[self._plot] = []
    elif self._plot and tag == "g" and "data-row" in a:
      self.plots[self._plot].append(a["data-row"])
      if a.get("data-front") == "1":
        self.front[self._plot].append(a["data-row"])
    for name in ("src", "href"):  # nothing the page would have to fetch
      if a.get(name):
        self.external.append(a[name])

  def handle_endtag(self, tag: str) -> None:
    if tag == "svg":
      self._plot = None


def check_handles(h: Handles) -> None:
  assert h.table_rows == list(ROWS)
  assert set(h.plots) == PLOTS
  for plot_id, rows in h.plots.items():
    assert sorted(rows) == sorted(ROWS), plot_id
  assert h.external == []


def test_page_holds_every_row_and_plot_and_is_self_contained(page: Path) -> None:
  text = page.read_text(encoding="utf-8")
  check_handles(Handles(text))
  assert "<title>toy html</title>" in text and "Four rows, two seeds each." in text
  # The label is text, never markup.
  assert "bad &amp; &lt;slow&gt; &quot;x&quot;" in text and "<slow>" not in text
  # bytes vs accuracy: the bad row costs most for the least; every other row is on the front.
  h = Handles(text)
  assert sorted(h.front["pareto:eval/accuracy:params/bytes"]) == sorted(
      ["dense", "LoRA r=8", "int8"])
  # trainable vs loss: LoRA trains least for the lowest loss, and beats everything else.
  assert h.front["pareto:eval/loss:params/trainable"] == ["LoRA r=8"]
  assert "abc1234def" in text and 'data-provenance="machine.host"' in text
  assert "8 of 8 points finished" in text
  assert len(text.encode()) < 200_000


def test_unfinished_points_leave_their_row_out_of_the_plots_not_the_table(tmp_path: Path) -> None:
  exp = toy_experiment()
  entries = write_finished_points(exp, tmp_path)
  for e in entries:  # int8 never finished; LoRA's seed 1 was interrupted
    if e.labels["variant"] == "int8" or (e.labels["variant"] == "LoRA r=8" and e.labels["seed"]):
      (Path(e.point.workdir) / "done.json").unlink()
  h = Handles(html_page.page_html(exp, entries))
  assert h.table_rows == list(ROWS)
  assert set(h.plots) == PLOTS
  for plot_id, rows in h.plots.items():
    assert sorted(rows) == sorted(set(ROWS) - {"int8"}), plot_id
  assert "5 of 8 points finished" in html_page.page_html(exp, entries)


def test_labels_that_would_overlap_move_or_are_left_out() -> None:
  box = (0.0, 0.0, 400.0, 300.0)
  spots = html_page.place_labels([(100, 100, "first"), (100, 100, "second"),
                                  (100, 100, "third"), (100, 100, "fourth"),
                                  (100, 100, "fifth"), (395, 100, "edge")],
                                 [0, 1, 2, 3, 4, 5], box)
  assert spots[0] == (107, 94, "start") and spots[1] == (93, 94, "end")  # right, then left
  assert spots[2] == (107, 114, "start") and spots[3] == (93, 114, "end")  # then below
  assert spots[4] is None  # all four spots taken
  assert spots[5] == (388, 94, "end")  # at the right edge: to the left


def test_pareto_front_known_answers() -> None:
  pts = [(1.0, 0.88), (4.0, 0.90), (4.2, 0.91), (5.0, 0.85), (4.0, 0.89), (0.5, 0.80)]
  assert html_page.pareto_front(pts, "max") == [5, 0, 1, 2]
  assert html_page.pareto_front(pts, "min") == [5]
  assert html_page.pareto_front([(1, 3), (2, 2), (3, 2.5), (4, 1)], "min") == [0, 1, 3]


def test_curves_are_means_over_seeds_with_a_band_and_downsampled() -> None:
  steps = [float(s) for s in range(1, 1001)]
  seed0 = (steps, [1.0] * 1000)
  seed1 = (steps, [3.0] * 1000)
  c = html_page.mean_curve("r", "#000", [seed0, seed1], max_points=200)
  assert len(c.steps) == 200 and c.seeds == 2
  assert set(c.mean) == {2.0} and set(c.lo) == {1.0} and set(c.hi) == {3.0}
  assert c.steps[0] == pytest.approx(3.0) and c.steps[-1] == pytest.approx(998.0)
  short = html_page.mean_curve("r", "#000", [([0.0, 10.0], [5.0, 4.0])])
  assert short.steps == [0.0, 10.0] and short.mean == [5.0, 4.0] and short.seeds == 1
  assert html_page.mean_curve("r", "#000", []) is None


def test_log_axes_only_when_values_span_more_than_ten_times() -> None:
  assert html_page.wants_log([1e3, 1e6]) and not html_page.wants_log([1e6, 5e6])
  assert not html_page.wants_log([0.0, 1e6])  # a frozen row's 0 trainable params
  axis = html_page.Axis.fit([1e3, 1e6], True, 0.0, 100.0)
  assert {1e3, 1e4, 1e5, 1e6} <= set(axis.ticks())
  assert axis(1e3) < axis(1e4) < axis(1e6) <= 100.0
  linear = html_page.Axis.fit([0.85, 0.91], False, 300.0, 30.0)  # y: pixels grow downward
  assert linear(0.91) < linear(0.85) and all(0.84 < t < 0.92 for t in linear.ticks())


def test_command_writes_the_page_from_finished_points(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
  exp_file = tmp_path / "exp.py"
  exp_file.write_text(textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {str(Path(__file__).parent)!r})
      from test_report_html import toy_experiment
      def get_experiment():
        return toy_experiment()
  '''))
  root = tmp_path / "root"
  write_finished_points(toy_experiment(), root)
  assert report_html.main([str(exp_file), f"--workdir={root}"]) == 0
  assert "wrote" in capsys.readouterr().out
  check_handles(Handles((root / "index.html").read_text(encoding="utf-8")))
  # Only some rows: only those rows.
  out = tmp_path / "two.html"
  assert report_html.main([str(exp_file), f"--workdir={root}", "--variant=int8",
                           f"--out={out}"]) == 0
  assert Handles(out.read_text(encoding="utf-8")).table_rows == ["int8"]
  with pytest.raises(SystemExit) as exit_info:
    report_html.main([str(exp_file), f"--workdir={tmp_path / 'nowhere'}"])
  assert exit_info.value.code == 2
  assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def chromium() -> str:
  exe = html_page.find_chromium()
  if exe is None:
    message = ("no Chromium (apt-get install chromium, or `make browser` as root); the HTML "
               "page's browser tests need one")
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  return exe


def test_chromium_renders_every_row_and_plot_without_console_errors(
    page: Path, tmp_path: Path, chromium: str) -> None:
  from PIL import Image

  shot = tmp_path / "page.png"
  seen = html_page.render_in_chromium(page, screenshot=shot, window=(1360, 1800),
                                      chromium=chromium)
  assert seen.console == []
  h = Handles(seen.dom)
  assert h.ready  # the page's script ran to its end
  check_handles(h)
  with Image.open(shot) as img:
    assert img.size == (1360, 1800)
    colors = img.convert("RGB").getcolors(maxcolors=1 << 16)
  # Not blank: text, plot lines and the row colors make many distinct colors.
  assert colors is None or len(colors) > 50


def test_console_check_catches_a_throw_and_a_console_error(page: Path, tmp_path: Path,
                                                           chromium: str) -> None:
  broken = tmp_path / "broken.html"
  text = page.read_text(encoding="utf-8")
  broken.write_text(text.replace("</body>", "<script>console.error('logged on purpose');"
                                 "</script><script>throw new Error('deliberate');</script>"
                                 "</body>"), encoding="utf-8")
  seen = html_page.render_in_chromium(broken, chromium=chromium)
  assert any("Uncaught Error: deliberate" in line for line in seen.console), seen.console
  assert any("logged on purpose" in line for line in seen.console), seen.console
