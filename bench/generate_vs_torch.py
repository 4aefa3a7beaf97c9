r"""Decoding speed against transformers' `generate`, same model, same machine.

  python -m bench.generate_vs_torch [--size small|tiny|smollm2_135m|tiny_llama]
      [--prompt 32 --new 64 --rounds 5] [--batch 1] [--device cpu|cuda]

`--size` is a GPT-2 (`small`: GPT-2 small's shape) or a Llama-family decoder
(`smollm2_135m`: SmolLM2-135M's shape, grouped-query attention, tied output).
The peer (bench/generate_torch_peer.py, in the interpreter that has torch)
builds that model with random weights and saves it as a Hugging Face folder; the
JAX side imports that folder (`hf.importer`) and decodes with
`generation.decode.generate`: key/value cache, the loop on device.  Both
decode greedily, `--batch` prompts per call (default 1), `--new` tokens
after each `--prompt`-token random prompt, the same prompts; the tokens must
agree (a check, not only a race).  `--device cuda` puts the PyTorch model on
the GPU (JAX uses its default device, the GPU when there is one).
One call = one whole generation (prefill + loop + copy back).  The first JAX
call compiles: it is reported apart.  The two sides alternate call by call,
the order flipping every round; figures are medians.  Goal (issue 19): ours
≥ 1.0× the PyTorch tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np

from bench import peer_process
from reparam_jax.generation import decode
from reparam_jax.hf import importer

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


def compare(size: str, prompt_len: int, new: int, rounds: int, python: str, batch: int = 1,
            device: str = "cpu") -> dict[str, Any]:
  model_class, sizes = SIZES[size]
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, sizes["vocab_size"], (batch, prompt_len)).tolist()
             for _ in range(rounds)]
  with tempfile.TemporaryDirectory() as folder:
    peer = peer_process.TorchPeer(python, PEER)
    try:
      info = peer.call(cmd="init", folder=folder, model_class=model_class, sizes=sizes,
                       prompts=prompts, new_tokens=new, threads=os.cpu_count(), seed=0,
                       device=device)
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
          "transformers": info["transformers"], "threads": info["threads"]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=list(SIZES), default="small")
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--batch", type=int, default=1, help="prompts per call")
  parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="where the PyTorch model runs")
  parser.add_argument("--torch_python", default=None)
  args = parser.parse_args(argv)
  python = peer_process.require_torch_python(parser, args.torch_python)
  out = compare(args.size, args.prompt, args.new, args.rounds, python, args.batch, args.device)
  print(f"{out['model_class']} {args.size} ({out['params']:,} params), greedy, batch "
        f"{args.batch}, {args.new} "
        f"tokens after {args.prompt}, median of {args.rounds} calls each; torch on "
        f"{args.device}, JAX on {out['jax_device']}:")
  print(f"  reparam_jax {out['tokens_per_s']['jax']:.1f} tokens/s   transformers "
        f"{out['tokens_per_s']['torch']:.1f} tokens/s (torch {out['torch']}, {out['threads']} "
        f"threads)   ratio {out['ratio']:.2f} (goal ≥ 1.0)")
  print(f"  JAX first call (compile included) {out['jax_first_call_s']:.1f} s; "
        f"token mismatches {out['token_mismatches']}/{args.rounds}")
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
