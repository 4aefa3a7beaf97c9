r"""The PyTorch peer of bench/generate_vs_torch.py: transformers' `generate`.

Run in the interpreter that has torch and transformers (`.venv-py311`); not
imported by the project.  `init` builds a model of `model_class`
(GPT2LMHeadModel, LlamaForCausalLM, ...) with random weights (seeded) at the
given sizes and saves it as a Hugging Face folder, which the JAX side imports:
both decode the very same model.  A "step" is one whole `model.generate` call
on prompt i: greedy (`do_sample=False`), the key/value cache on (transformers'
default), exactly `max_new_tokens` new tokens (no end-of-text token: a random
model's would end some rows early, and suppressing it would change the
greedy tokens), eager mode.

Protocol (one JSON object per line):
  {"cmd": "init", "folder": DIR, "model_class": "GPT2LMHeadModel", "sizes": {...config...},
   "prompts": [[ids], ...], "new_tokens": 64, "threads": 2, "seed": 0}
      -> {"params": N, "torch": "2.13.0", "transformers": "5.24.0", "threads": 2}
  {"cmd": "steps", "start": 0, "n": 2}   generate for prompts start..start+n-1
      -> {"wall_s": [...], "cpu_s": [...], "loss": [new tokens of the last call]}
  {"cmd": "quit"}
"""

from __future__ import annotations

import torch
import transformers
from torch_peer import serve  # bench/ is this script's directory: the shared protocol loop


class Peer:
  def __init__(self, folder: str, model_class: str, sizes: dict, prompts: list, new_tokens: int,
               threads: int, seed: int, device: str = "cpu"):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cls = getattr(transformers, model_class)
    self.model = cls(cls.config_class(**sizes)).eval()
    self.model.generation_config.eos_token_id = None
    self.model.save_pretrained(folder, safe_serialization=True)
    self.model.to(device)
    self.versions = {"transformers": transformers.__version__}
    # prompts[i] is one call's batch: [batch, prompt length] token ids.
    self.prompts = [torch.tensor(p, device=device) for p in prompts]
    self.new_tokens = new_tokens

  def step(self, i: int) -> list[int]:
    ids = self.prompts[i % len(self.prompts)]
    with torch.no_grad():
      out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=self.new_tokens, do_sample=False,
                                pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()  # .tolist() waits for the device


if __name__ == "__main__":
  serve(lambda m: Peer(m["folder"], m.get("model_class", "GPT2LMHeadModel"), m["sizes"],
                       m["prompts"], m["new_tokens"], m["threads"], m["seed"],
                       m.get("device", "cpu")))
