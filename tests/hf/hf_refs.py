"""Small randomly initialized `transformers` models saved as local model folders."""

from __future__ import annotations

import os

import numpy as np


def save_model(model, folder: str, safetensors: bool = True) -> str:
  """`save_pretrained`; with safetensors=False the same tensors as a `pytorch_model.bin`.

  transformers 5 writes only safetensors; the pickled `.bin` is how older
  checkpoints on the hub and on users' disks are stored, so it is written
  here the way transformers 4 did (`torch.save` of the state dict).
  """
  import torch
  from safetensors.torch import load_file
  model.save_pretrained(folder)
  weights = os.path.join(folder, "model.safetensors")
  if not safetensors:
    torch.save(load_file(weights), os.path.join(folder, "pytorch_model.bin"))
    os.remove(weights)
  assert os.path.exists(weights if safetensors else os.path.join(folder, "pytorch_model.bin"))
  return folder


def gpt2(seed: int = 0, **sizes):
  import torch
  import transformers
  torch.manual_seed(seed)
  config = transformers.GPT2Config(**sizes)
  model = transformers.GPT2LMHeadModel(config).eval()
  _randomize_norms(model, seed)
  return model


def bert(cls_name: str = "BertForMaskedLM", seed: int = 0, **sizes):
  import torch
  import transformers
  torch.manual_seed(seed)
  config = transformers.BertConfig(**sizes)
  model = getattr(transformers, cls_name)(config).eval()
  _randomize_norms(model, seed)
  return model


def _randomize_norms(model, seed: int) -> None:
  """LayerNorms and biases start at 1/0; perturb them so a swapped or dropped
  scale/bias would change the logits."""
  import torch
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or ".ln_" in name:
        p.add_(0.1 * torch.randn(p.shape, generator=g))


def random_ids(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int64)


def random_adapters(params, rules, seed: int = 0):
  """θ of dense `params` under reparam `rules` with every adapter leaf random and non-zero
  (B = 0 at init would make the adapter invisible); DoRA's m a perturbed ‖V‖."""
  import jax
  import jax.numpy as jnp

  from reparam_jax.pytree.paths import key_path
  from reparam_jax.reparam import Reparam
  theta = Reparam.from_config({"rules": rules}).from_dense(params, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = key_path(path).rsplit("/", 1)[-1]
    if name in ("lora_a", "lora_b"):
      return jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype)
    if name == "magnitude":
      return x * jnp.asarray(1 + 0.2 * rng.standard_normal(x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(fill, theta)
