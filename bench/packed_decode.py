r"""Cached greedy decoding with packed 4-bit weights against float32, batch 1, on the CPU.

  taskset -c 1 python bench/packed_decode.py            # GPT-2 small's shape
  python bench/packed_decode.py --smoke                 # tiny sizes (CI)

One model of GPT-2 small's shape (12 layers, 768 wide, 3072 MLP, vocabulary 50257,
random weights) decodes `--new` tokens greedily after a `--prompt`-token prompt with
`generation.decode.generate` (key/value cache, the loop on device), twice: with its float32
weights, and with every block matrix (attention query/key/value/out, MLP in/out) stored as
`packed(bits=4, group=128)` and the model wrapped by the reparameterization, so the packed
bytes are what the jitted loop holds and each step decodes them inside the matmul.
Embeddings and norms stay float in both.  One call = one whole generation; the first call
of each compiles and is not timed; then the two alternate call by call, the order flipping
every round; figures are medians.  Goal (issue 35): packed tokens/s ≥ 0.8× float.
A check, untimed: the packed model's tokens must equal those of the float model given the
dequantized weights (`same_tokens`; float rounding may still flip a near-tie).  With random
weights the float32 model's own tokens differ from both: 4-bit rounding moves its logits.  Pin to one core (`taskset -c 1`) for a single-threaded figure; the
load average at the start and end is printed since other jobs share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax.core import meta  # noqa: E402

from bench.timing import cpu_model  # noqa: E402
from reparam_jax.generation import decode  # noqa: E402
from reparam_jax.models import Transformer  # noqa: E402
from reparam_jax.models.config import TransformerConfig  # noqa: E402
from reparam_jax.reparam import Reparam  # noqa: E402

KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"
SIZES = {
    "small": {"vocab_size": 50257, "num_layers": 12, "num_heads": 12, "embed_dim": 768,
              "mlp_dim": 3072, "max_len": 1024},
    "tiny": {"vocab_size": 99, "num_layers": 2, "num_heads": 4, "embed_dim": 256,
             "mlp_dim": 512, "max_len": 128},
}


def nbytes(tree: Any) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def run(size: str, spec: str, prompt_len: int, new: int, rounds: int) -> dict[str, Any]:
  cfg = TransformerConfig(**SIZES[size])
  model = Transformer(cfg)
  params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rp = Reparam.from_config({"rules": ((KERNELS, spec),)})
  packed = jax.device_put(meta.unbox(rp.from_dense(params)))
  packed_model = rp.wrap(model)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, cfg.vocab_size, (1, prompt_len)).tolist() for _ in range(rounds)]
  greedy = decode.Sampling(temperature=0.0)
  sides = {"float32": (model, params), "packed": (packed_model, packed),
           "dequantized": (model, rp.to_dense(packed))}  # the check, untimed

  def call(side: str, i: int) -> list[int]:
    m, p = sides[side]
    return decode.generate(m, p, prompts[i], new, greedy).tokens[0].tolist()

  load_start = os.getloadavg()[0]
  first_s = {}
  for side in ("float32", "packed"):  # compile
    t0 = time.perf_counter()
    call(side, 0)
    first_s[side] = time.perf_counter() - t0
  wall: dict[str, list[float]] = {"float32": [], "packed": []}
  same = 0
  for r in range(rounds):
    out = {}
    for side in (("float32", "packed") if r % 2 == 0 else ("packed", "float32")):
      t0 = time.perf_counter()
      out[side] = call(side, r)
      wall[side].append(time.perf_counter() - t0)
    same += out["packed"] == call("dequantized", r)
  med = {side: statistics.median(v) for side, v in wall.items()}
  tps = {side: new / v for side, v in med.items()}

  def block(tree: Any) -> dict:
    return {k: v for k, v in tree.items() if k.startswith("block_")}

  sides.clear()  # the dequantized copy is not needed any more
  return {"size": size, "spec": spec, "prompt": prompt_len, "new_tokens": new, "rounds": rounds,
          "cpu": cpu_model(), "affinity": sorted(os.sched_getaffinity(0)),
          "load_start": load_start, "load_end": os.getloadavg()[0],
          "call_s": med, "call_s_all": wall, "tokens_per_s": tps,
          "ratio": tps["packed"] / tps["float32"], "first_call_s": first_s,
          "same_tokens": f"{same}/{rounds}",
          "block_bytes": {"float32": nbytes(block(params)), "packed": nbytes(block(packed))}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=list(SIZES), default="small")
  parser.add_argument("--spec", default="packed(bits=4, group=128)")
  parser.add_argument("--prompt", type=int, default=16)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds of 4 tokens")
  args = parser.parse_args(argv)
  if args.smoke:
    args.size, args.new, args.rounds, args.prompt = "tiny", 4, 2, 8
  out = run(args.size, args.spec, args.prompt, args.new, args.rounds)
  print(f"{args.size}, greedy, batch 1, {out['new_tokens']} tokens after {out['prompt']}, "
        f"median of {out['rounds']} calls each, CPU {out['cpu']}, cores {out['affinity']}, "
        f"load {out['load_start']:.1f} → {out['load_end']:.1f}:")
  print(f"  float32 {out['tokens_per_s']['float32']:.1f} tokens/s   {args.spec} "
        f"{out['tokens_per_s']['packed']:.1f} tokens/s   ratio {out['ratio']:.2f} (goal ≥ 0.8)")
  print(f"  block matrices {out['block_bytes']['float32'] / 2**20:.1f} MiB → "
        f"{out['block_bytes']['packed'] / 2**20:.1f} MiB; same tokens {out['same_tokens']}")
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
