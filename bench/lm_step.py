"""The trainer's own train step on synthetic tokens, ready to time.

Built from the same pieces `reparam_jax.train` uses (`create_train_state`,
`make_train_step`, the LM task's loss, the configured optimizer, jit with
the same shardings and donation), so a benchmark measures what training
runs — minus the data pipeline, which would need the raw dataset.
"""

from __future__ import annotations

import os
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from reparam_jax.config import load as config_load
from reparam_jax.perf import rng as rng_lowering
from reparam_jax.reparam import Reparam
from reparam_jax.tasks.lm import LanguageModelTask, lm_model
from reparam_jax.training import optim, sharding, steps

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "lm", "shakespeare_char.py")


class SyntheticLMTask(LanguageModelTask):
  """The LM task's loss and model on random tokens of a fixed vocabulary."""

  def __init__(self, config: ml_collections.ConfigDict, vocab_size: int):  # noqa: D107
    # No data: skip the parent's text loading; only `loss` and `model` are used.
    self.config = config
    self.vocab_size = vocab_size

  def model(self) -> nn.Module:
    return lm_model(self.config, self.vocab_size)

  def batch(self, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, self.vocab_size, (self.config.batch_size, self.config.seq_len + 1))
    return {"tokens": tokens.astype(np.int32)}


class StepRunner:
  """Holds a sharded train state; `run(i)` does one synchronous train step.

  The task is the synthetic LM (`vocab_size`) unless `task` is given, with its
  own host `batches` (e.g. real SST-2 batches of the classification task).
  """

  def __init__(self, config: ml_collections.ConfigDict, vocab_size: int = 0, n_batches: int = 4,
               devices: list[Any] | None = None, task: Any = None,
               batches: list[dict[str, np.ndarray]] | None = None):
    self.config = config
    # As the trainer compiles its step (training/loop.py).
    rng_lowering.use_configured_lowering(config)
    self.task = task if task is not None else SyntheticLMTask(config, vocab_size)
    self.reparam = Reparam.from_config(config.reparam)
    self.model = self.reparam.wrap(self.task.model())
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.rules_tuple(config.axis_rules)
    batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    rng = jax.random.key(config.seed)
    # As in train.py: the state is created outside the mesh context (its
    # shardings are explicit); under one, eager unboxing would constrain
    # abstract values to the mesh.
    with nn.logical_axis_rules(self.rules):
      self.state, self.state_shardings, tx = steps.create_train_state(
          steps.init_variables_fn(self.model, self.task.init_args()),
          lambda p: optim.make_optimizer(config.optimizer, config.num_steps,
                                         self.reparam.trainable_mask(p),
                                         default_decay=self.reparam.decay_mask),
          self.mesh, self.rules, rng)
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_steps)
    self.step_fn = jax.jit(
        steps.make_train_step(self.model, self.task, tx, self.reparam, schedule,
                                config.optimizer.grad_accum_steps, jax.random.fold_in(rng, 1)),
        in_shardings=(self.state_shardings, batch_sharding),
        out_shardings=(self.state_shardings, None), donate_argnums=(0,))
    # A few fixed batches already on device: the timed region is the step only.
    host = batches if batches is not None else [self.task.batch(i) for i in range(n_batches)]
    self.batches = [jax.device_put(b, batch_sharding) for b in host]

  def run(self, i: int) -> float:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      self.state, metrics = self.step_fn(self.state, self.batches[i % len(self.batches)])
    return float(metrics["loss"])  # the host fetch is the synchronisation point

  def lower(self) -> Any:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self.step_fn.lower(self.state, self.batches[0])

  def compile_seconds(self) -> tuple[float, float]:
    """(trace + lower, XLA compile) wall seconds of the train step, ahead of time."""
    t0 = time.perf_counter()
    lowered = self.lower()
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def quickstart_config(**overrides: Any) -> ml_collections.ConfigDict:
  """configs/lm/shakespeare_char.py with dotted-key overrides."""
  config = config_load.load_config_file(QUICKSTART)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config

