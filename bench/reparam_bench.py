r"""Train-step time and optimizer-state ratios of reparameterized vs dense Transformers.

  python bench/reparam_bench.py            # width 1024, 2 layers, seq 64, batch 8 (CPU: minutes)
  python bench/reparam_bench.py --smoke    # tiny sizes, 2 steps (CI)

All variants live in one process and are timed interleaved (round-robin, so
machine-load drift hits all of them alike) after a warm-up; each ratio is
the ratio of medians.  Goals: identity interceptor ≤ 1.02× no transform,
low-rank r=128 ≤ 0.5× dense, LoRA r=8 optimizer state ≤ 2% of dense.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402

from reparam_jax import reparam  # noqa: E402
from reparam_jax.models import Transformer, TransformerConfig  # noqa: E402
from reparam_jax.training import optim  # noqa: E402

KERNELS = r"block_\d+/(attn|mlp)/\w+/kernel"


def make_step(model, rc, ids):
  rp = reparam.Reparam.from_config(rc)
  wrapped = rp.wrap(model)
  params = nn.meta.unbox(wrapped.init(jax.random.key(0), ids[:, :-1])["params"])
  tx = optax.adam(1e-3)
  if rc is not None:
    tx = optim.freeze(tx, rp.trainable_mask(params))
  opt = tx.init(params)

  def loss_fn(p, k):
    logits = wrapped.apply({"params": p}, ids[:, :-1], train=True,
                           rngs={"reparam": k, "dropout": k})["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

  @jax.jit
  def step(p, o, k):
    loss, g = jax.value_and_grad(loss_fn)(p, k)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  state = [params, opt]
  run_hlo = step.lower(params, opt, jax.random.key(0)).compile().as_text()

  def run(i):
    state[0], state[1], loss = step(state[0], state[1], jax.random.key(i))
    loss.block_until_ready()

  run.hlo = re.sub(r"metadata=\{[^}]*\}", "", run_hlo)  # source locations differ, ops must not
  return run, opt


def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=3)
  args = parser.parse_args()
  if args.smoke:
    width, mlp, layers, heads, seq, batch, vocab, rank = 64, 256, 1, 2, 16, 2, 64, 8
    args.steps, args.warmup = 2, 1
  else:
    width, mlp, layers, heads, seq, batch, vocab, rank = 1024, 4096, 2, 16, 64, 8, 1024, 128
  cfg = TransformerConfig(vocab_size=vocab, num_layers=layers, num_heads=heads, embed_dim=width,
                          mlp_dim=mlp, max_len=seq)
  model = Transformer(cfg)
  ids = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, vocab)
  rc = lambda *rules: ml_collections.ConfigDict(dict(rules=rules))  # noqa: E731
  variants = {
      "dense": None,
      "identity": rc((".*", "identity")),
      f"lowrank(r={rank})": rc((KERNELS, f"lowrank(rank={rank})")),
  }
  runs, opts = {}, {}
  for name, r in variants.items():
    runs[name], opts[name] = make_step(model, r, ids)
  lora_rc = rc((KERNELS, "lora(rank=8, alpha=16)"), (".*", "frozen"))
  _, opts["lora(r=8)"] = make_step(model, lora_rc, ids)

  for i in range(args.warmup):
    for run in runs.values():
      run(i)
  times = {n: [] for n in runs}
  names = list(runs)
  for i in range(args.steps):
    # Alternate the order every round so no variant always runs right after another.
    for n in (names if i % 2 == 0 else names[::-1]):
      run = runs[n]
      t0 = time.perf_counter()
      run(1000 + i)
      times[n].append(time.perf_counter() - t0)
  med = {n: statistics.median(t) for n, t in times.items()}

  print(f"# Transformer width {width}, mlp {mlp}, {layers} layers, seq {seq}, batch {batch}, "
        f"vocab {vocab}; {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{args.steps} timed steps after {args.warmup} warm-up, medians")
  print("| comparison | measured | goal |")
  print("|---|---|---|")
  for n in runs:
    print(f"| step time {n} | {med[n] * 1e3:.1f} ms | |")
  same = runs["identity"].hlo == runs["dense"].hlo
  print(f"| identity interceptor / no transform | {med['identity'] / med['dense']:.3f} "
        f"(compiled step identical to dense: {same}) | ≤ 1.02 |")
  lr = f"lowrank(r={rank})"
  print(f"| {lr} / dense step time | {med[lr] / med['dense']:.3f} | ≤ 0.5 |")
  ratio = nbytes(opts["lora(r=8)"]) / nbytes(opts["dense"])
  print(f"| LoRA r=8 Adam state / dense Adam state | {100 * ratio:.2f}% "
        f"({nbytes(opts['lora(r=8)']):,} / {nbytes(opts['dense']):,} B) | ≤ 2% |")


if __name__ == "__main__":
  main()
