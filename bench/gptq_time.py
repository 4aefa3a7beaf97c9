"""Wall time of GPTQ over every block linear of a GPT-2-small-shaped decoder (12 layers,
width 768, random weights and tokens), split into the calibration passes (block
forwards and Hessians) and the method itself.

  python bench/gptq_time.py --n=8 --length=512 [--layers=12] [--method=gptq]

The method's time does not depend on the number of calibration tokens; the calibration
passes grow linearly with them, so a small `--n` measures both and the 128 × 512 total
is `method + passes · 128 / n` (printed).

Memory: the peak resident set (`ru_maxrss`) above the process's before the weights exist
(the Python + JAX runtime), against the issue's budget: the weights, one block's
activations over the calibration set (its input and output rows, float32, which
calibration keeps between blocks; a chunk's intermediates inside the block on top) and
the largest Hessian (float64, d_in²).  Run with `--n=128` for the full figure.
"""

from __future__ import annotations

import argparse
import resource
import time

import flax.linen as nn
import jax
import numpy as np

from reparam_jax.compression import calibration
from reparam_jax.compression.methods import METHODS
from reparam_jax.compression.recipe import METHOD_MODULES  # noqa: F401  (registers them)
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.transformer import Transformer


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--chunk", type=int, default=4)
  parser.add_argument("--method", default="gptq")
  args = parser.parse_args()
  runtime_bytes = _peak_rss_bytes()
  cfg = TransformerConfig(vocab_size=50257, num_layers=args.layers, num_heads=12,
                          embed_dim=768, mlp_dim=3072, max_len=1024)
  model = Transformer(cfg)
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.n, args.length))
  params = nn.meta.unbox(model.init(jax.random.key(0), ids[:1, :8].astype(np.int32))["params"])
  method_s = [0.0]

  def layer(path, w, stats):
    start = time.perf_counter()
    out = METHODS[args.method](w, stats).weight_IxO
    method_s[0] += time.perf_counter() - start
    return out

  start = time.perf_counter()
  calibration.compress_blockwise(
      model, params, {"ids_BxL": ids.astype(np.int32)}, lambda p: "block_" in p, layer,
      calibration.Calibration(n=args.n, length=args.length, chunk=args.chunk),
      log=lambda *_: None)
  total = time.perf_counter() - start
  passes = total - method_s[0]
  print(f"{args.method}, {args.layers} layers × width 768, {args.n} × {args.length} tokens: "
        f"{total:.1f} s ({method_s[0]:.1f} s method, {passes:.1f} s calibration passes); "
        f"at 128 × {args.length}: ≈ {method_s[0] + passes * 128 / args.n:.0f} s")
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  activations = 2 * args.n * args.length * cfg.embed_dim * 4
  chunk_hidden = args.chunk * args.length * cfg.mlp_dim * 4  # a chunk's widest intermediate
  hessian = cfg.mlp_dim ** 2 * 8
  budget = weights + activations + hessian
  used = _peak_rss_bytes() - runtime_bytes
  mib = 2 ** 20
  print(f"peak memory above the runtime ({runtime_bytes / mib:.0f} MiB): {used / mib:.0f} MiB; "
        f"budget {budget / mib:.0f} MiB = weights {weights / mib:.0f} + block activations "
        f"{activations / mib:.0f} + largest Hessian {hessian / mib:.0f} "
        f"(+ a chunk's MLP hidden {chunk_hidden / mib:.0f}); ratio {used / budget:.2f}")


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
  main()
