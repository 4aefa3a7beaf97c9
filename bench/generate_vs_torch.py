r"""Decoding speed against transformers' `generate`, same model, same machine.

  python -m bench.generate_vs_torch [--size small|tiny|smollm2_135m|tiny_llama]
      [--prompt 32 --new 64 --rounds 5] [--batch 1] [--device cpu|cuda]
      [--cache dynamic|static] [--compile]
  python -m bench.generate_vs_torch --full [--batches 1,8] [--int8_batches 1] ...

`--size` is a GPT-2 (`small`: GPT-2 small's shape) or a Llama-family decoder
(`smollm2_135m`: SmolLM2-135M's shape, grouped-query attention, tied output).
The peer (bench/generate_torch_peer.py, in the interpreter that has torch)
builds that model with random weights and saves it as a Hugging Face folder; the
JAX side imports that folder (`hf.importer`) and decodes with
`generation.decode.generate`: key/value cache, the loop on device.  Both
decode `--batch` prompts per call (default 1), `--new` tokens after each
`--prompt`-token random prompt, the same prompts.  `--device cuda` puts the
PyTorch model on the GPU (JAX uses its default device, the GPU when there is
one).  `--cache static` gives transformers its preallocated static cache,
`--compile` that cache and `torch.compile` of its decode step (the strongest
transformers path; on the CPU it needs a C++ compiler and compiles for minutes
at GPT-2 size, so it is meant for the GPU run).

Without `--full` each call decodes greedily and the tokens must agree (a check,
not only a race).  `--full` runs every row of one table in one process, calls
interleaved: for each batch of `--batches`, greedy and sampling (temperature 1,
no top-k, no top-p, on both sides), and for each batch of `--int8_batches` the
same two with int8 weights on the JAX side (every block matrix stored as
`packed(bits=8, group=0, sym=True)`: int8 codes and a float32 scale per output
column, decoded inside the loop each step) against transformers' float32.
Greedy rows count token mismatches (0 expected for float32; int8 rounding moves
the logits, so its tokens are compared with the float32 model's given the
dequantized weights instead); sampled tokens come from two different random
number generators and are not comparable.  It also measures this machine's
memory read bandwidth (bench/membw.py) and prints, per row, the bytes a decode
step reads (every weight once, the tied token table as the output layer, plus
the key/value cache as each side attends to it) per generated token, and each
side's achieved bytes/s (bytes per step × new tokens / call time, prefill
included, so a lower bound) as a fraction of that bandwidth.

One call = one whole generation (prefill + loop + copy back).  The first JAX
call of each shape compiles: it is reported apart.  The sides alternate call by
call, the order rotating every round; figures are medians.  Goals (issue 36):
float32 batch 1 ≥ 1.0×, batch 8 ≥ 1.5×, int8 batch 1 ≥ 1.6× transformers'
float32.  Every result names the CPU model, the commit and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Sequence

import subprocess

import jax
import numpy as np
from flax.core import meta

from bench import membw, peer_process
from bench.timing import cpu_model
from reparam_jax.generation import decode
from reparam_jax.hf import importer
from reparam_jax.reparam import Reparam

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate_torch_peer.py")
# --size: (transformers model class, its config fields).
SIZES = {
    "small": ("GPT2LMHeadModel", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                                      vocab_size=50257)),
    "tiny": ("GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     vocab_size=99)),
    "smollm2_135m": ("LlamaForCausalLM", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)),
    "tiny_llama": ("LlamaForCausalLM", dict(
        vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
}
# --full's int8 rows: every block matrix as int8 codes + a float32 scale per output column.
INT8_SPEC = "packed(bits=8, group=0, sym=True)"
BLOCK_KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|gate|out))/kernel"
GOALS = {("float32", 1): 1.0, ("float32", 8): 1.5, ("int8", 1): 1.6}  # issue 36


def machine() -> dict[str, Any]:
  """What every result names: CPU model, commit, versions."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                            capture_output=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           text=True, capture_output=True).stdout.strip()
    commit += " (uncommitted changes)" if dirty else ""
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  return {"cpu": cpu_model(), "commit": commit, "jax": jax.__version__,
          "jax_device": str(jax.devices()[0])}


def peer_options(cache: str, compile_: bool) -> dict[str, Any]:
  return {"cache": cache, "compile": compile_}


def compare(size: str, prompt_len: int, new: int, rounds: int, python: str, batch: int = 1,
            device: str = "cpu", cache: str = "dynamic", compile_: bool = False
            ) -> dict[str, Any]:
  model_class, sizes = SIZES[size]
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, sizes["vocab_size"], (batch, prompt_len)).tolist()
             for _ in range(rounds)]
  with tempfile.TemporaryDirectory() as folder:
    peer = peer_process.TorchPeer(python, PEER)
    try:
      info = peer.call(cmd="init", folder=folder, model_class=model_class, sizes=sizes,
                       prompts=prompts, new_tokens=new, threads=os.cpu_count(), seed=0,
                       device=device, **peer_options(cache, compile_))
      params, cfg, heads, _ = importer.import_folder(folder)
      model = importer.build_model(cfg, heads)
      params = jax.device_put(params)
      greedy = decode.Sampling(temperature=0.0)

      def ours(i: int) -> list[list[int]]:
        out = decode.generate(model, params, prompts[i], new, greedy)
        return out.tokens.tolist()

      t0 = time.perf_counter()
      ours(0)
      first_call_s = time.perf_counter() - t0
      peer.call(cmd="steps", start=0, n=1)  # warm-up
      wall: dict[str, list[float]] = {"jax": [], "torch": []}
      mismatches = 0
      for r in range(rounds):
        for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
          if side == "torch":
            out = peer.call(cmd="steps", start=r, n=1)
            wall["torch"].append(out["wall_s"][0])
            theirs = out["loss"]
          else:
            t0 = time.perf_counter()
            mine = ours(r)
            wall["jax"].append(time.perf_counter() - t0)
        mismatches += mine != theirs
    finally:
      peer.close()
  med = {k: statistics.median(v) for k, v in wall.items()}
  tps = {k: batch * new / v for k, v in med.items()}
  return {"size": size, "model_class": model_class, "sizes": sizes, "prompt": prompt_len,
          "new_tokens": new, "batch": batch,
          "device": device, "jax_device": str(jax.devices()[0]),
          "rounds": rounds, "call_s": med, "call_s_all": wall, "tokens_per_s": tps,
          "ratio": tps["jax"] / tps["torch"], "jax_first_call_s": first_call_s,
          "token_mismatches": mismatches, "params": info["params"], "torch": info["torch"],
          "transformers": info["transformers"], "threads": info["threads"],
          "torch_cache": cache, "torch_compile": compile_, "torch_warmup_s": info["warmup_s"],
          **machine()}


def _nbytes(tree: Any) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def step_weight_bytes(params: Any) -> int:
  """Bytes of weights one decode step reads: every leaf, but of a learned position table
  only the row of the position decoded (the token table is read whole: it is the tied
  output layer)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    size = int(leaf.size) * leaf.dtype.itemsize
    if "position" in jax.tree_util.keystr(path) and leaf.ndim == 2:
      size = leaf.shape[1] * leaf.dtype.itemsize
    total += size
  return total


def full(size: str, prompt_len: int, new: int, rounds: int, python: str,
         batches: Sequence[int] = (1, 8), int8_batches: Sequence[int] = (1,),
         device: str = "cpu", cache: str = "dynamic", compile_: bool = False,
         bandwidth_gib: float = 1.0) -> dict[str, Any]:
  """Every row of the issue-36 table (module docstring, `--full`) in one process."""
  model_class, sizes = SIZES[size]
  bw = membw.measure(bandwidth_gib, rounds=5) if bandwidth_gib > 0 else None
  jobs = [(b, mode) for b in dict.fromkeys([*batches, *int8_batches])
          for mode in ("greedy", "sample")]
  rng = np.random.default_rng(0)
  prompts = {job: [rng.integers(0, sizes["vocab_size"], (job[0], prompt_len)).tolist()
                   for _ in range(rounds)] for job in jobs}
  flat = [p for job in jobs for p in prompts[job]]  # peer call index: job · rounds + round
  sample_flags = [job[1] == "sample" for job in jobs for _ in range(rounds)]
  samplings = {"greedy": decode.Sampling(temperature=0.0),
               "sample": decode.Sampling(temperature=1.0, top_k=0, top_p=1.0)}
  with tempfile.TemporaryDirectory() as folder:
    peer = peer_process.TorchPeer(python, PEER)
    try:
      info = peer.call(cmd="init", folder=folder, model_class=model_class, sizes=sizes,
                       prompts=flat, sample=sample_flags, new_tokens=new,
                       threads=os.cpu_count(), seed=0, device=device,
                       **peer_options(cache, compile_))
      params, cfg, heads, _ = importer.import_folder(folder)
      model = importer.build_model(cfg, heads)
      params = jax.device_put(params)
      sides = {"float32": (model, params)}
      if int8_batches:
        rp = Reparam.from_config({"rules": ((BLOCK_KERNELS, INT8_SPEC),)})
        packed = jax.device_put(meta.unbox(rp.from_dense(params)))
        sides["int8"] = (rp.wrap(model), packed)
        sides["dequantized"] = (model, rp.to_dense(packed))  # the int8 check, untimed

      def ours(weights: str, job: tuple[int, str], r: int) -> list[list[int]]:
        m, p = sides[weights]
        out = decode.generate(m, p, prompts[job][r], new, samplings[job[1]],
                              rng=jax.random.key(r))
        return out.tokens.tolist()

      first_call_s: dict[str, float] = {}
      for job in jobs:
        for weights in ("float32", "int8") if job[0] in int8_batches else ("float32",):
          if weights == "int8" or job[0] in batches:
            t0 = time.perf_counter()
            ours(weights, job, 0)
            first_call_s[f"{weights} batch {job[0]} {job[1]}"] = time.perf_counter() - t0
      for i in range(len(jobs)):
        peer.call(cmd="steps", start=i * rounds, n=1)  # warm-up
      wall: dict[str, list[float]] = {}
      checks: dict[str, int] = {}
      for r in range(rounds):
        for j, job in enumerate(jobs):
          names = ["torch"] + (["float32"] if job[0] in batches else []) + (
              ["int8"] if job[0] in int8_batches else [])
          shift = r % len(names)
          tokens = {}
          for side in names[shift:] + names[:shift]:
            key = f"{side} batch {job[0]} {job[1]}"
            t0 = time.perf_counter()
            if side == "torch":
              out = peer.call(cmd="steps", start=j * rounds + r, n=1)
              wall.setdefault(key, []).append(out["wall_s"][0])
              tokens[side] = out["loss"]
            else:
              tokens[side] = ours(side, job, r)
              wall.setdefault(key, []).append(time.perf_counter() - t0)
          if job[1] == "greedy":
            if "float32" in tokens:
              name = f"float32 batch {job[0]} mismatches with transformers"
              checks[name] = checks.get(name, 0) + (tokens["float32"] != tokens["torch"])
            if "int8" in tokens:
              name = f"int8 batch {job[0]} mismatches with its dequantized float32 model"
              checks[name] = checks.get(name, 0) + (
                  tokens["int8"] != ours("dequantized", job, r))
      weight_bytes = {w: step_weight_bytes(p) for w, (_, p) in sides.items()
                      if w != "dequantized"}
    finally:
      peer.close()
  med = {k: statistics.median(v) for k, v in wall.items()}
  pad = -(-prompt_len // decode.PROMPT_MULTIPLE) * decode.PROMPT_MULTIPLE
  kv_slot = 2 * model.cfg.num_layers * model.cfg.kv_heads * model.cfg.head_dim * 4  # f32 k, v
  rows = []
  for b, mode in jobs:
    torch_key = f"torch batch {b} {mode}"
    # Slots attended per step: JAX all of its cache (masked); transformers' dynamic cache
    # the tokens so far (on average prompt + new/2), its static cache all prompt + new.
    torch_slots = prompt_len + (new if cache == "static" or compile_ else new / 2)
    for weights in ("float32", "int8"):
      if (weights == "float32" and b not in batches) or (weights == "int8"
                                                         and b not in int8_batches):
        continue
      key = f"{weights} batch {b} {mode}"
      step_bytes = {"jax": weight_bytes[weights] + kv_slot * b * (pad + new),
                    "torch": weight_bytes["float32"] + kv_slot * b * torch_slots}
      call_s = {"jax": med[key], "torch": med[torch_key]}
      achieved = {k: step_bytes[k] * new / call_s[k] / 1e9 for k in call_s}
      row = {"weights": weights, "batch": b, "mode": mode,
             "tokens_per_s": {k: b * new / v for k, v in call_s.items()},
             "call_s": call_s, "call_s_all": {"jax": wall[key], "torch": wall[torch_key]},
             "jax_first_call_s": first_call_s[key],
             "bytes_per_token": {k: v / b for k, v in step_bytes.items()},
             "achieved_gbps": achieved,
             "fraction_of_bandwidth": ({k: v / bw["best_gbps"] for k, v in achieved.items()}
                                       if bw else None),
             "goal": GOALS.get((weights, b))}
      row["ratio"] = row["tokens_per_s"]["jax"] / row["tokens_per_s"]["torch"]
      if mode == "greedy":
        row["mismatches"] = checks[
            f"float32 batch {b} mismatches with transformers" if weights == "float32"
            else f"int8 batch {b} mismatches with its dequantized float32 model"]
      rows.append(row)
  return {"size": size, "model_class": model_class, "sizes": sizes, "prompt": prompt_len,
          "new_tokens": new, "rounds": rounds, "device": device, "rows": rows,
          "int8_spec": INT8_SPEC, "weight_bytes": weight_bytes, "bandwidth": bw,
          "params": info["params"], "torch": info["torch"],
          "transformers": info["transformers"], "threads": info["threads"],
          "torch_cache": cache, "torch_compile": compile_, "torch_warmup_s": info["warmup_s"],
          **machine()}


def print_full(out: dict[str, Any]) -> None:
  print(f"{out['model_class']} {out['size']} ({out['params']:,} params), {out['new_tokens']} "
        f"tokens after {out['prompt']}, median of {out['rounds']} calls each, calls "
        f"interleaved; CPU {out['cpu']}, commit {out['commit']}, jax {out['jax']} on "
        f"{out['jax_device']}, torch {out['torch']} / transformers {out['transformers']} "
        f"({out['threads']} threads, {out['torch_cache']} cache"
        f"{', torch.compile' if out['torch_compile'] else ''}) on {out['device']}")
  bw = out["bandwidth"]
  if bw:
    print(f"  memory read bandwidth (bench/membw.py, {bw['array_bytes'] / 2**30:.0f} GiB): " +
          ", ".join(f"{k} {v:.1f}" for k, v in bw["gbps"].items()) +
          f" GB/s; best {bw['best_gbps']:.1f} GB/s")
  print(f"  weights read per step: float32 {out['weight_bytes']['float32'] / 1e6:.1f} MB" +
        (f", int8 {out['weight_bytes']['int8'] / 1e6:.1f} MB ({out['int8_spec']})"
         if "int8" in out["weight_bytes"] else ""))
  print("  weights batch mode   | JAX tok/s  torch tok/s  ratio (goal) | MB/token JAX, torch |"
        " GB/s JAX, torch (of bandwidth) | first JAX call | greedy mismatches")
  for row in out["rows"]:
    tps, bpt, gb = row["tokens_per_s"], row["bytes_per_token"], row["achieved_gbps"]
    frac = row["fraction_of_bandwidth"]
    goal = f"≥ {row['goal']}" if row["goal"] else "—"
    share = f" ({frac['jax']:.0%}, {frac['torch']:.0%})" if frac else ""
    check = f"{row['mismatches']}/{out['rounds']}" if "mismatches" in row else "n/a (sampled)"
    print(f"  {row['weights']:7s} {row['batch']:5d} {row['mode']:6s} | {tps['jax']:9.1f} "
          f"{tps['torch']:12.1f} {row['ratio']:6.2f} ({goal}) | {bpt['jax'] / 1e6:7.1f}, "
          f"{bpt['torch'] / 1e6:7.1f} | {gb['jax']:5.1f}, {gb['torch']:5.1f}{share} | "
          f"{row['jax_first_call_s']:5.1f} s | {check}")
  print("  (int8 greedy tokens are checked against the float32 model given the dequantized "
        "weights; sampled tokens come from different generators and are not compared)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=list(SIZES), default="small")
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--batch", type=int, default=1, help="prompts per call")
  parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="where the PyTorch model runs")
  parser.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                      help="transformers' key/value cache")
  parser.add_argument("--compile", action="store_true",
                      help="transformers with its static cache and torch.compile")
  parser.add_argument("--full", action="store_true",
                      help="greedy and sampling, float32 and int8 rows, bandwidth (docstring)")
  parser.add_argument("--batches", default="1,8", help="--full: float32 batches")
  parser.add_argument("--int8_batches", default="1", help="--full: int8 batches ('' for none)")
  parser.add_argument("--bandwidth_gib", type=float, default=1.0,
                      help="--full: array size of the bandwidth measurement (0: skip it)")
  parser.add_argument("--torch_python", default=None)
  args = parser.parse_args(argv)
  python = peer_process.require_torch_python(parser, args.torch_python)
  if args.full:
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    out = full(args.size, args.prompt, args.new, args.rounds, python, ints(args.batches),
               ints(args.int8_batches), args.device, args.cache, args.compile,
               args.bandwidth_gib)
    print_full(out)
    print(json.dumps(out))
    return out
  out = compare(args.size, args.prompt, args.new, args.rounds, python, args.batch, args.device,
                args.cache, args.compile)
  print(f"{out['model_class']} {args.size} ({out['params']:,} params), greedy, batch "
        f"{args.batch}, {args.new} "
        f"tokens after {args.prompt}, median of {args.rounds} calls each; torch on "
        f"{args.device} ({args.cache} cache{', torch.compile' if args.compile else ''}), "
        f"JAX on {out['jax_device']}; CPU {out['cpu']}, commit {out['commit']}, "
        f"jax {out['jax']}:")
  print(f"  reparam_jax {out['tokens_per_s']['jax']:.1f} tokens/s   transformers "
        f"{out['tokens_per_s']['torch']:.1f} tokens/s (torch {out['torch']}, {out['threads']} "
        f"threads)   ratio {out['ratio']:.2f} (goal ≥ 1.0)")
  print(f"  JAX first call (compile included) {out['jax_first_call_s']:.1f} s; "
        f"token mismatches {out['token_mismatches']}/{args.rounds}")
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
