"""Classification metrics from a confusion matrix: the numbers, the text report, the plot.

The confusion matrix is exact (summed over the whole eval split), so
accuracy, per-class precision/recall/F1 and their macro and support-weighted
averages derived here are exact too.  `format_report` lays them out like
scikit-learn's `classification_report`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _pyplot() -> Any:
  """matplotlib's pyplot, imported when a plot is drawn: every trainer imports this module,
  and matplotlib costs half a second of each start."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def per_class(cm_CxC: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class (rows = true, columns = predicted)."""
  cm = np.asarray(cm_CxC, np.float64)
  tp = np.diag(cm)
  predicted, support = cm.sum(0), cm.sum(1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def summary(cm_CxC: np.ndarray, names: Sequence[str]) -> dict[str, float]:
  """Flat metrics for logging: accuracy, macro averages, and per-class values."""
  cm = np.asarray(cm_CxC, np.float64)
  pc = per_class(cm)
  out = {"accuracy": float(np.trace(cm) / max(cm.sum(), 1.0)),
         "precision_macro": float(pc["precision"].mean()),
         "recall_macro": float(pc["recall"].mean()), "f1_macro": float(pc["f1"].mean())}
  for i, name in enumerate(names):
    for key in ("precision", "recall", "f1"):
      out[f"{key}/{name}"] = float(pc[key][i])
  return out


def format_report(cm_CxC: np.ndarray, names: Sequence[str], digits: int = 4) -> str:
  cm = np.asarray(cm_CxC, np.float64)
  pc = per_class(cm)
  total = cm.sum()
  width = max(len("weighted avg"), *(len(n) for n in names))
  head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
  row = lambda n, p, r, f, s: (f"{n:>{width}} {p:>9.{digits}f} {r:>9.{digits}f} "  # noqa: E731
                                f"{f:>9.{digits}f} {int(round(s)):>9d}")
  lines = [head, ""]
  for i, name in enumerate(names):
    lines.append(row(name, pc["precision"][i], pc["recall"][i], pc["f1"][i], pc["support"][i]))
  lines.append("")
  acc = np.trace(cm) / max(total, 1.0)
  lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {acc:>9.{digits}f} {int(round(total)):>9d}")
  w = pc["support"] / max(total, 1.0)
  lines.append(row("macro avg", pc["precision"].mean(), pc["recall"].mean(), pc["f1"].mean(),
                   total))
  lines.append(row("weighted avg", (pc["precision"] * w).sum(), (pc["recall"] * w).sum(),
                   (pc["f1"] * w).sum(), total))
  return "\n".join(lines) + "\n"


def plot_confusion(cm_CxC: np.ndarray, names: Sequence[str], path: str, title: str = "") -> None:
  cm = np.asarray(cm_CxC)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(3.2 + 0.4 * len(names), 2.8 + 0.4 * len(names)))
  ax.imshow(cm, cmap="Blues")
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
              color="white" if cm[i, j] > cm.max() / 2 else "black")
  ax.set_xticks(range(len(names)), names)
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
