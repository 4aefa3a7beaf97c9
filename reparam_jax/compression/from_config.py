"""A config that compresses instead of training: `compress.recipe` applied to `init_from`.

`python -m reparam_jax.train --config=configs/sst2/minilm_int8.py --workdir=W`
runs the `compress` pipeline (recipe.py) on the trained run the config's
`init_from` names and makes W a finished run like a training run's: done.json
with the task's eval metrics and the stored size, so ablation tables and
sweeps tabulate compressed models beside trained ones.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import ml_collections

from reparam_jax.compression.recipe import compress
from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir


def compress_run(config: ml_collections.ConfigDict, workdir: str,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Compresses `config.init_from` into `workdir` by `config.compress`; returns done.json."""
  spec = config.compress
  source = config.get("init_from", "")
  if not source or rundir.read_done(source) is None:
    raise UserError(f"compress.recipe needs init_from= a finished training run (got "
                    f"{source!r}); train it first (see the config's docstring)")
  report = compress(source, spec.recipe, workdir, int(spec.finetune_steps),
                    float(spec.finetune_lr), spec.kernels, log=log)
  original, final = report["rows"][0], report["final"]
  done = {f"eval/{k.removeprefix('eval_')}": v for k, v in final.items()
          if k.startswith("eval_")}
  done.update({
      "params/stored": final["stored_params"],
      "params/bytes": final["stored_bytes"],  # int8 values count one byte each
      "params/disk_bytes": final["bytes_on_disk"],  # the params checkpoint, as orbax wrote it
      "params/trainable": _finetuned_count(workdir) if spec.finetune_steps else 0,
      "compress/original_bytes": original["stored_bytes"],
      "compress/original_disk_bytes": original["bytes_on_disk"],
      "compress/kernel_sparsity": final["kernel_sparsity"],
      "compress/kernel_bits": final["kernel_bits"],
  })
  rundir.write_done(workdir, done)
  return done


def _finetuned_count(workdir: str) -> int:
  """What the final fine-tuning trained (its done.json), 0 if it wrote none."""
  where = os.path.join(workdir, "finetune", "final", "run")
  done = rundir.read_done(where) if os.path.isdir(where) else None
  return int((done or {}).get("params/trainable", 0))

