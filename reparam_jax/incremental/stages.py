"""The training stages of the incremental-learning protocol, and running one.

Arm `adapters`: task 1 (SST-2) trains LoRA adapter A + head A on the frozen
pretrained MiniLM; task 2 (word order) trains adapter B + head B on the same
frozen base.  Arm `full`: task 1 fine-tunes every weight; task 2 continues
from that run (`init_from` = its workdir), every weight training again.
"""

from __future__ import annotations

import dataclasses
import os
import time

from reparam_jax.config import load as config_load
from reparam_jax.hf import pretrained
from reparam_jax.rundir import workdir as rundir
from reparam_jax.training.loop import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # also the run's folder under the experiment's root
  config: str  # a config file path
  init_from_stage: str = ""  # start from this earlier stage's run (its workdir)


ARMS: dict[str, tuple[Stage, Stage]] = {
    "adapters": (Stage("sst2_lora", "configs/incremental/sst2_lora.py"),
                 Stage("order_lora", "configs/incremental/order_lora.py")),
    "full": (Stage("sst2_full", "configs/incremental/sst2_full.py"),
             Stage("order_full", "configs/incremental/order_full.py", init_from_stage="sst2_full")),
}


def stage_dir(root: str, stage: Stage) -> str:
  return os.path.join(os.path.abspath(root), stage.name)


def run_stage(root: str, stage: Stage, overrides: dict[str, str] | None = None) -> float:
  """Trains `stage` into `root/<name>` (a finished run is kept as it is); returns seconds."""
  config = config_load.load_config_file(stage.config)
  pairs = dict(overrides or {})
  if stage.init_from_stage:
    pairs["init_from"] = stage_dir(root, Stage(stage.init_from_stage, ""))
  config = config_load.apply_overrides(config, list(pairs.items()))
  t0 = time.perf_counter()
  if not rundir.is_done(stage_dir(root, stage)):
    train_and_evaluate(pretrained.resolve(config), stage_dir(root, stage))
  return time.perf_counter() - t0
