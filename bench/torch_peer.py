r"""The PyTorch peer: nanoGPT's model and training step, driven over stdin/stdout.

Run by `bench/vs_torch.py` in the interpreter that has torch (the
Python 3.11 test environment, `.venv-py311`); not imported by the project.

The model is nanoGPT's GPT (Karpathy), written out here at the quick start's
sizes: pre-LayerNorm blocks, learned positions, fused q/k/v, causal
`scaled_dot_product_attention`, a 4× MLP, tied token embedding and output
layer, biases, eps 1e-5.  Like the project's model it uses the tanh GELU
(nanoGPT's `nn.GELU()` is the erf form; the cost is the same).  The step is
nanoGPT's: forward, cross-entropy, backward, clip the global norm to 1.0,
AdamW (weight decay on 2-D parameters only, β = (0.9, 0.99)), zero the
gradients.  Eager mode, as nanoGPT runs on CPU (`--compile=False`).

Protocol: one JSON object per line in, one per line out.
  {"cmd": "init", "layers":4, "heads":4, "width":128, "seq":64, "batch":12, "vocab":65,
   "threads":2, "seed":0}            -> {"params": N, "torch": "2.13.0", "threads": 2}
  {"cmd": "steps", "n": 20}          -> {"wall_s": [...], "cpu_s": [...], "loss": x}
  {"cmd": "quit"}
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads = heads
    self.ln_1 = nn.LayerNorm(width, eps=1e-5)
    self.c_attn = nn.Linear(width, 3 * width)
    self.c_proj = nn.Linear(width, width)
    self.ln_2 = nn.LayerNorm(width, eps=1e-5)
    self.c_fc = nn.Linear(width, 4 * width)
    self.mlp_proj = nn.Linear(4 * width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
    q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
  def __init__(self, layers: int, heads: int, width: int, seq: int, vocab: int):
    super().__init__()
    self.wte = nn.Embedding(vocab, width)
    self.wpe = nn.Embedding(seq, width)
    self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
    self.ln_f = nn.LayerNorm(width, eps=1e-5)
    self.lm_head = nn.Linear(width, vocab, bias=False)
    self.lm_head.weight = self.wte.weight  # tied, as in GPT-2 and the project's model
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
        nn.init.normal_(p, 0.0, std)
      elif name.endswith("bias"):
        nn.init.zeros_(p)

  def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(idx.shape[1], device=idx.device)
    x = self.wte(idx) + self.wpe(pos)
    for block in self.blocks:
      x = block(x)
    logits = self.lm_head(self.ln_f(x))
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class Peer:
  def __init__(self, layers: int, heads: int, width: int, seq: int, batch: int, vocab: int,
               threads: int, seed: int):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = GPT(layers, heads, width, seq, vocab)
    decay = [p for p in self.model.parameters() if p.dim() >= 2]
    no_decay = [p for p in self.model.parameters() if p.dim() < 2]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=1e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(seed)
    # A few fixed batches, as the JAX side uses: the timed region is the step only.
    self.batches = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(4)]

  def step(self, i: int) -> float:
    tokens = self.batches[i % len(self.batches)]
    loss = self.model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return loss.item()  # the host value: a synchronous step, like the JAX side's float()


def serve(make_peer: Callable[[dict[str, Any]], Any]) -> None:
  """The stdin/stdout loop: `init` builds the peer with `make_peer(msg)`; `steps` times
  `peer.step(i)` for consecutive i (from `start`, else continuing)."""
  peer, i = None, 0
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "init":
      peer = make_peer(msg)
      out = {"params": sum(p.numel() for p in peer.model.parameters()),
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             **getattr(peer, "versions", {})}
    elif msg["cmd"] == "steps":
      i = msg.get("start", i)
      wall, cpu, loss = [], [], float("nan")
      for _ in range(int(msg["n"])):
        c0, t0 = time.process_time(), time.perf_counter()
        loss = peer.step(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        i += 1
      out = {"wall_s": wall, "cpu_s": cpu, "loss": loss}
    else:
      return
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  serve(lambda msg: Peer(**{k: msg[k] for k in ("layers", "heads", "width", "seq", "batch",
                                                  "vocab", "threads", "seed")}))
