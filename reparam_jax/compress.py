r"""Compresses a trained checkpoint with a recipe of steps, optionally fine-tunes, reports.

  python -m reparam_jax.compress --workdir=TRAINED --out=DIR \
      --recipe="svd(rank=32),prune(magnitude,0.5),quantize(int8)" [--finetune_steps=N]

Steps (applied in order to the block kernels, `--kernels` regex):
  svd(rank=R[, method=svd|als])    W ≈ U Vᵀ via the lowrank transform's from_dense
  prune(METHOD, S[, …])            METHOD: magnitude | threshold | sensitivity
      magnitude: S = target sparsity; scope=layer|global; pattern=unstructured|'2:4'|heads|neurons;
                 rounds=R: iterative (s_r = 1 − (1 − S)^(r/R)), fine-tuning
                 `--finetune_steps` between rounds
      threshold: S = τ, zero |w| ≤ τ (after L1 training: config.reg); reports the sparsity reached
      sensitivity: S = fraction of units; granularity=heads|neurons|both, per_round, max_drop
  quantize(int8|int4)              post-training symmetric per-channel weights (stored as int8)
  calibration(n=128, length=512, seed=0)   the calibration set of the steps after it
  gptq(bits=4, group=128, sym=False, act_order=False, damp=0.01)   GPTQ on the group grid
  sparsegpt(0.5|'2:4'), wanda(0.5|'2:4')   one-shot pruning from the calibration set
  rtn(bits=4, group=128)           round-to-nearest on the group grid (GPTQ's baseline)
      (docs/calibration.md: the procedure, each method's options, what composes)

Pruned entries are folded into the weights (stored zeros), so every step's
checkpoint is self-contained.  With `--finetune_steps=N` the real trainer
(`reparam_jax.train`, `--config.init_from=`) fine-tunes the float weights with
the pruned entries held at zero (`mask(method=threshold, threshold=0)` at step
0) and, when quantized, fake-quantized (`quant`), then the result is
re-quantized.  Writes DIR/params (final checkpoint), DIR/config.json (its
rules), DIR/steps/<i>_<name>/ (each step's checkpoint), DIR/report.{md,json}.

Multi-host: every process runs the same command with the trainer's flags
(`--distributed`, or `--coordinator_address=... --num_processes=N
--process_id=I`); the weights stay split over the processes (each reads,
compresses, evaluates and writes its shards) and process 0 writes the reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax

from reparam_jax.compression.recipe import KERNELS, compress
from reparam_jax.errors import exit_on_user_error
from reparam_jax.training import devices


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.compress", allow_abbrev=False)
  parser.add_argument("--workdir", required=True, help="trained run (training workdir)")
  parser.add_argument("--recipe", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--finetune_steps", type=int, default=0)
  parser.add_argument("--finetune_lr", type=float, default=3e-4)
  parser.add_argument("--kernels", default=KERNELS, help="regex of the weights compressed")
  devices.add_distributed_flags(parser)
  args = parser.parse_args(argv)
  devices.init_distributed_from_args(args)
  log = print if jax.process_index() == 0 else (lambda *_: None)  # once, not per process
  return compress(args.workdir, args.recipe, args.out, args.finetune_steps, args.finetune_lr,
                  args.kernels, log=log)


if __name__ == "__main__":
  main(sys.argv[1:])
