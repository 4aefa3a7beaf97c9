r"""Importing a Hugging Face folder against transformers' `from_pretrained`: wall time and
peak host memory, the same sharded safetensors folder, the same machine.

  python -m bench.import_vs_transformers [--size llama3_2_1b|tiny_llama] [--rounds 3]
      [--workdir /tmp/reparam_import_bench] [--torch_python PATH]

The folder is made once by the interpreter that has torch (`.venv-py311`): a
`LlamaForCausalLM` of Llama-3.2-1B's shape (1,235,814,400 parameters, float32:
4.9 GB) with random weights, `save_pretrained` in 1 GB safetensors shards with
their index.  Each round runs, in fresh processes one after the other (the
order flipping every round), `hf.importer.import_folder` (the parameters as
host arrays, what `convert_hf` then writes) and
`LlamaForCausalLM.from_pretrained(folder)` (the model on the CPU, ready to
run).  Wall time is the call's, after the imports; peak memory is the
process's maximum resident set (`ru_maxrss`) minus what it held before the
call, against the weights' bytes.  Both sides map the safetensors files and read
a tensor only when it is used, so each process then reads every weight once (a
float64 sum per tensor), timed as "import and read", and the peak includes
those pages.  Medians over `--rounds`.  Goals: ≤ 1.2× the wall time of
`from_pretrained`, peak ≤ 1.3× the weights' bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Sequence

from bench import peer_process

SIZES = {
    "llama3_2_1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        max_position_embeddings=131072, rms_norm_eps=1e-5,
                        rope_theta=500000.0, tie_word_embeddings=True,
                        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
    "tiny_llama": dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=128),
}

_MAKE = r"""
import json, sys, torch, transformers
folder, sizes = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
config = transformers.LlamaConfig(**sizes)
with torch.device("meta"):
  model = transformers.LlamaForCausalLM(config)
model = model.to_empty(device="cpu")  # no init on the host: 1.2 B random draws only
model.tie_weights()  # to_empty gave the tied output layer storage of its own
with torch.no_grad():
  for p in model.parameters():
    p.normal_(0.0, 0.02)
model.save_pretrained(folder, max_shard_size="1GB")
print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
"""

# One measured call in a fresh process: the figures on stdout's last line.
_OURS = r"""
import json, resource, sys, time
from reparam_jax.hf import importer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
params, cfg, heads, source = importer.import_folder(sys.argv[1])
wall = time.perf_counter() - start
import jax, numpy as np
total = sum(float(np.sum(x, dtype=np.float64)) for x in jax.tree.leaves(params))
read = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "read_s": read, "peak_mib": peak / 1024,
                  "start_mib": before / 1024, "sum": total}))
"""
_THEIRS = r"""
import json, resource, sys, time
import torch, transformers
torch.set_num_threads(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
wall = time.perf_counter() - start
with torch.no_grad():
  total = sum(float(p.sum(dtype=torch.float64)) for p in model.parameters())
read = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "read_s": read, "peak_mib": peak / 1024,
                  "start_mib": before / 1024, "sum": total}))
"""


def _run(python: str, code: str, *args: str) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(size: str, rounds: int, workdir: str, torch_python: str) -> dict[str, Any]:
  folder = os.path.join(workdir, size)
  if not os.path.exists(os.path.join(folder, "config.json")):
    os.makedirs(folder, exist_ok=True)
    made = _run(torch_python, _MAKE, folder, json.dumps(SIZES[size]))
  else:
    made = {}
  weight_bytes = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                     if f.endswith(".safetensors"))
  runs: dict[str, list[dict[str, Any]]] = {"ours": [], "transformers": []}
  for r in range(rounds):
    order = ("ours", "transformers") if r % 2 == 0 else ("transformers", "ours")
    for side in order:
      if side == "ours":
        runs[side].append(_run(sys.executable, _OURS, folder))
      else:
        runs[side].append(_run(torch_python, _THEIRS, folder))
  wall = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
  read = {k: statistics.median(x["read_s"] for x in v) for k, v in runs.items()}
  grown = {k: statistics.median(x["peak_mib"] - x["start_mib"] for x in v)
           for k, v in runs.items()}
  weights_mib = weight_bytes / 2**20
  return {"size": size, "folder": folder, "weights_mib": weights_mib, "rounds": rounds,
          "params": made.get("params"), "wall_s": wall,
          "wall_ratio": wall["ours"] / wall["transformers"], "read_s": read,
          "read_ratio": read["ours"] / read["transformers"], "peak_growth_mib": grown,
          "peak_over_weights": {k: v / weights_mib for k, v in grown.items()}, "runs": runs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=list(SIZES), default="llama3_2_1b")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workdir", default="/tmp/reparam_import_bench")
  parser.add_argument("--torch_python", default=None)
  args = parser.parse_args(argv)
  python = peer_process.require_torch_python(parser, args.torch_python)
  out = compare(args.size, args.rounds, args.workdir, python)
  print(f"import of {args.size} ({out['weights_mib']:,.0f} MiB of float32 safetensors), median "
        f"of {args.rounds} fresh processes each:")
  print(f"  reparam_jax import_folder {out['wall_s']['ours']:.2f} s, peak +"
        f"{out['peak_growth_mib']['ours']:,.0f} MiB ({out['peak_over_weights']['ours']:.2f}× the "
        f"weights; goal ≤ 1.3)")
  print(f"  transformers from_pretrained {out['wall_s']['transformers']:.2f} s, peak +"
        f"{out['peak_growth_mib']['transformers']:,.0f} MiB "
        f"({out['peak_over_weights']['transformers']:.2f}×)")
  print(f"  wall ratio {out['wall_ratio']:.2f} (goal ≤ 1.2)")
  print(f"  import and read every weight once (a float64 sum per tensor): reparam_jax "
        f"{out['read_s']['ours']:.2f} s, transformers {out['read_s']['transformers']:.2f} s, "
        f"ratio {out['read_ratio']:.2f}; the peaks above include it")
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
