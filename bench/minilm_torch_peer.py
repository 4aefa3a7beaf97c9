r"""The PyTorch peer of bench/minilm_vs_torch.py: transformers' fine-tuning step.

Run in the interpreter that has torch and transformers (`.venv-py311`); not
imported by the project.  The model is `BertForSequenceClassification`
loaded from the same Hugging Face folder (all-MiniLM-L6-v2, 2 labels), the
step the plain fine-tuning loop of a PyTorch user: forward with labels,
backward, clip the global norm to 1.0, AdamW (lr 1e-4, weight decay 0.01 on
every parameter, torch's defaults otherwise), zero the gradients.  Eager
mode, dropout on (train mode), as in the JAX run.

Protocol (one JSON object per line):
  {"cmd": "init", "folder": DIR, "batches": NPZ, "threads": 2, "seed": 0}
      -> {"params": N, "torch": "2.13.0", "transformers": "5.24.0", "threads": 2}
  {"cmd": "steps", "start": 0, "n": 10}   batches start..start+n-1 (mod their number)
      -> {"wall_s": [...], "cpu_s": [...], "loss": x}
  {"cmd": "quit"}
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from torch_peer import serve  # bench/ is this script's directory: the shared protocol loop


class Peer:
  def __init__(self, folder: str, batches: str, threads: int, seed: int):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=2).train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
    self.versions = {"transformers": transformers.__version__}
    data = np.load(batches)
    n = len([k for k in data.files if k.startswith("ids_")])
    self.batches = [(torch.from_numpy(data[f"ids_{i}"]).long(),
                     torch.from_numpy(data[f"mask_{i}"]).long(),
                     torch.from_numpy(data[f"label_{i}"]).long()) for i in range(n)]

  def step(self, i: int) -> float:
    ids, mask, labels = self.batches[i % len(self.batches)]
    loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return loss.item()  # a synchronous step, like the JAX side's float()


if __name__ == "__main__":
  serve(lambda msg: Peer(msg["folder"], msg["batches"], msg["threads"], msg["seed"]))
