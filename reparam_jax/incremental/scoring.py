"""Scoring the stages: a finished run read back, dev-set logits, accuracy, per-row routing.

Everything here is evaluation only (`train=False`, no dropout), so the same
params on the same batch give the same logits bit for bit: the adapter arm's
"no forgetting" is checked as equality of task 1's logits, not only of its
accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.pytree.paths import dict_leaves, unflatten
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.adapters import AdapterBank, row_index, stack_adapters, stack_modules
from reparam_jax.rundir import workdir as rundir
from reparam_jax.tasks import make_task

PyTree = Any
HEAD = "classifier"  # the task head each adapter carries (models/heads.py)


@dataclasses.dataclass
class LoadedRun:
  """A finished classify run: its params (θ form, as trained), model and dev split."""

  name: str
  params: PyTree
  rp: Reparam
  model: nn.Module  # unwrapped EncoderWithHeads
  batches: list[dict[str, np.ndarray]]  # the dev split, padded (weights 0 on padding rows)
  done: dict[str, Any]

  @property
  def wrapped(self) -> nn.Module:
    return self.rp.wrap(self.model)


def load(workdir: str, name: str) -> LoadedRun:
  run = rundir.load_run(workdir)
  task = make_task(run.config, None)  # None: read-only (no report.txt, tokenizer inherited)
  return LoadedRun(name, nn.meta.unbox(run.params), Reparam.from_config(run.config.reparam),
                   task.model(), list(task.eval_batches()), rundir.read_done(workdir) or {})


def real_rows(batches: list[dict[str, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids, padding_mask, labels) of the real rows (weight 1) of every batch."""
  keep = np.concatenate([b["weights"][:, 0] > 0 for b in batches])
  cat = {k: np.concatenate([b[k] for b in batches]) for k in ("ids", "padding_mask", "label")}
  return cat["ids"][keep], cat["padding_mask"][keep], cat["label"][keep, 0]


def logits(model: nn.Module, params: PyTree, batches: list[dict[str, np.ndarray]],
           batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, C], labels [N]) over the real rows of `batches`."""
  ids, mask, labels = real_rows(batches)
  fn = _forward(model)
  out = [np.asarray(fn(params, ids[i:i + batch_size], mask[i:i + batch_size]))
         for i in range(0, len(ids), batch_size)]
  return np.concatenate(out), labels


def _forward(model: nn.Module) -> Callable:
  @jax.jit
  def fn(params, ids, mask):
    return model.apply({"params": params}, ids, mask, train=False)["logits"]
  return fn


def accuracy(logits_NxC: np.ndarray, labels_N: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits_NxC, -1) == labels_N))


def base_leaves(params: PyTree, bank: AdapterBank) -> dict[str, np.ndarray]:
  """Every leaf of `params` that is not part of an adapter (nor a carried head)."""
  return {p: np.asarray(v) for p, v in dict_leaves(params) if p not in bank.layout}


def identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
  """Same paths, shapes, dtypes and bits."""
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
      and a[k].tobytes() == b[k].tobytes() for k in a)


def routed_logits(model: nn.Module, bank: AdapterBank, names: list[str], base: PyTree,
                  ids: np.ndarray, mask: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Logits [B, C] of one batch whose row b uses adapter `names[index[b]]` and its head.

  The encoder runs once with the adapters stacked (`stack_adapters`: per-row
  LoRA); each carried head (`stack_modules`) is applied to the pooled
  features and row b keeps its own adapter's head's logits.
  """
  params_s, rp_s = stack_adapters(bank, names, base)
  heads = stack_modules(bank, names)
  model_s = rp_s.wrap(model)

  @jax.jit
  def fn(params_s, heads, ids, mask, index):
    sentence = model_s.apply({"params": params_s, **row_index(index)}, ids, mask,
                             train=False)["sentence"]
    per_head = []
    for i in range(len(names)):
      head = unflatten({p: v[i] for p, v in heads.items()})
      per_head.append(model.apply({"params": head}, sentence,
                                  method=lambda m, s: m.classifier(s, False)))
    all_NxBxC = jnp.stack(per_head)
    return jnp.take_along_axis(all_NxBxC, index[None, :, None], axis=0)[0]

  return np.asarray(fn(params_s, heads, ids, mask, jnp.asarray(index, jnp.int32)))
