r"""The PyTorch peer of bench/generate_vs_torch.py: transformers' `generate`.

Run in the interpreter that has torch and transformers (`.venv-py311`); not
imported by the project.  `init` builds a model of `model_class`
(GPT2LMHeadModel, LlamaForCausalLM, ...) with random weights (seeded) at the
given sizes and saves it as a Hugging Face folder, which the JAX side imports:
both decode the very same model.  A "step" is one whole `model.generate` call
on prompt batch i: the key/value cache on, exactly `max_new_tokens` new tokens
(no end-of-text token: a random model's would end some rows early, and
suppressing it would change the greedy tokens).  Greedy (`do_sample=False`),
or, for a call whose `sample` flag is set, sampling at temperature 1 over the
whole vocabulary (`top_k=0`, `top_p=1`: no filter), seeded per call.

The cache and the compiler (init's `cache`, `compile`):
  cache "dynamic"   transformers' default `DynamicCache` (grows per token), eager
  cache "static"    `cache_implementation="static"` (preallocated, fixed shapes), eager
                    (`disable_compile`, since transformers compiles a static-cache
                    decode on its own on a GPU)
  compile true      static cache and `torch.compile` of the decode forward through
                    transformers' `CompileConfig` (inductor, `fullgraph`; mode
                    "reduce-overhead", i.e. CUDA graphs, on a GPU and "default" on the
                    CPU, where the inductor needs a C++ compiler and is not what
                    transformers picks by itself): the strongest transformers path.
                    Each new shape compiles on its first call (`init`'s warm-up: one
                    call per distinct job shape, untimed).

Protocol (one JSON object per line):
  {"cmd": "init", "folder": DIR, "model_class": "GPT2LMHeadModel", "sizes": {...config...},
   "prompts": [[[ids], ...], ...], "sample": [false, ...], "new_tokens": 64, "threads": 2,
   "seed": 0, "device": "cpu", "cache": "dynamic", "compile": false}
      `prompts[i]` is call i's batch [B, prompt length]; `sample[i]` (default all false)
      whether call i samples.
      -> {"params": N, "torch": "2.13.0", "transformers": "5.24.0", "threads": 2,
          "warmup_s": [...]}
  {"cmd": "steps", "start": 0, "n": 2}   generate for calls start..start+n-1
      -> {"wall_s": [...], "cpu_s": [...], "loss": [new tokens of the last call]}
  {"cmd": "quit"}
"""

from __future__ import annotations

import time

import torch
import transformers
from torch_peer import serve  # bench/ is this script's directory: the shared protocol loop


class Peer:
  def __init__(self, folder: str, model_class: str, sizes: dict, prompts: list, new_tokens: int,
               threads: int, seed: int, device: str = "cpu", sample: list | None = None,
               cache: str = "dynamic", compile: bool = False):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cls = getattr(transformers, model_class)
    self.model = cls(cls.config_class(**sizes)).eval()
    self.model.generation_config.eos_token_id = None
    self.model.save_pretrained(folder, safe_serialization=True)
    self.model.to(device)
    self.versions = {"transformers": transformers.__version__}
    self.prompts = [torch.tensor(p, device=device) for p in prompts]
    self.sample = list(sample or [False] * len(prompts))
    self.new_tokens = new_tokens
    self.seed = seed
    if cache not in ("dynamic", "static"):
      raise ValueError(f"cache={cache!r}: use dynamic or static")
    options: dict = {}
    if compile or cache == "static":
      options["cache_implementation"] = "static"
    if compile:
      options["compile_config"] = transformers.CompileConfig(
          fullgraph=True, mode="reduce-overhead" if device.startswith("cuda") else "default")
      options["compile_config"]._compile_all_devices = True  # the CPU too, when asked
    elif cache == "static":
      options["disable_compile"] = True
    self.options = options
    self.versions["warmup_s"] = self._warm_up() if compile else []

  def _warm_up(self) -> list[float]:
    """One untimed call per distinct (shape, sampling): each compiles its graphs once."""
    seen, times = set(), []
    for i, ids in enumerate(self.prompts):
      key = (tuple(ids.shape), self.sample[i])
      if key not in seen:
        seen.add(key)
        t0 = time.perf_counter()
        self.step(i)
        times.append(time.perf_counter() - t0)
    return times

  def step(self, i: int) -> list[int]:
    i %= len(self.prompts)
    ids = self.prompts[i]
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if self.sample[i] \
        else dict(do_sample=False)
    torch.manual_seed(self.seed + i)
    with torch.no_grad():
      out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=self.new_tokens,
                                pad_token_id=0, **sampling, **self.options)
    return out[:, ids.shape[1]:].tolist()  # .tolist() waits for the device


if __name__ == "__main__":
  serve(lambda m: Peer(m["folder"], m.get("model_class", "GPT2LMHeadModel"), m["sizes"],
                       m["prompts"], m["new_tokens"], m["threads"], m["seed"],
                       m.get("device", "cpu"), m.get("sample"), m.get("cache", "dynamic"),
                       bool(m.get("compile", False))))
