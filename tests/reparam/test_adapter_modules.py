"""Adapters that carry whole modules (PEFT's modules_to_save): a task head per adapter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.models import TransformerConfig
from reparam_jax.models.heads import EncoderWithHeads
from reparam_jax.reparam import AdapterBank, Reparam
from reparam_jax.reparam.adapters import extract_adapter, row_index, stack_adapters, stack_modules

CFG = TransformerConfig(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                        max_len=8, causal=False)
IDS = (jnp.arange(32, dtype=jnp.int32).reshape(4, 8) * 7) % 32
MASK = jnp.ones((4, 8), bool)
RC = ml_collections.ConfigDict(
    {"rules": ((r"block_\d+/attn/(query|value)/kernel", "lora(rank=2, alpha=4)"),)})
HEAD = ("classifier",)


def setup():
  model = EncoderWithHeads(CFG, heads=("classifier",), num_classes=3, classifier_norm=False)
  dense = nn.meta.unbox(model.init(jax.random.key(0), IDS, MASK)["params"])
  rp = Reparam.from_config(RC)
  return model, rp, rp.from_dense(dense), rp.wrap(model)


def tuned(params, rp, seed):
  """Params as if fine-tuned for one task: random LoRA factors and a random head."""
  ad = extract_adapter(params, rp, HEAD)
  new = {p: 0.3 * jax.random.normal(jax.random.key(seed + i), v.shape)
         for i, (p, v) in enumerate(sorted(ad.items()))}
  from reparam_jax.reparam import insert_adapter
  return insert_adapter(params, new), new


def logits(wrapped, params, ids=IDS):
  return np.asarray(wrapped.apply({"params": params}, ids, MASK[:len(ids)], train=False)["logits"])


def test_adapter_carries_the_head_and_switching_swaps_it():
  _, rp, params, wrapped = setup()
  ad = extract_adapter(params, rp, HEAD)
  assert {"classifier/out/kernel", "classifier/out/bias"} <= set(ad)
  assert not any(p.startswith("embed") or "pooler" in p for p in ad)
  pa, a = tuned(params, rp, 1)
  pb, _ = tuned(params, rp, 50)
  bank = AdapterBank.create(params, rp, modules_to_save=HEAD).add("a", a).add("b", params=pb)
  assert bank.module_paths == {"classifier/out/kernel", "classifier/out/bias"}
  np.testing.assert_array_equal(logits(wrapped, bank.params(params)), logits(wrapped, pa))
  np.testing.assert_array_equal(logits(wrapped, bank.switch("b").params(params)),
                                logits(wrapped, pb))
  # Back to "a" from "b": a's head, not b's, and the same logits bit for bit.
  back = bank.switch("b").switch("a").params(params)
  np.testing.assert_array_equal(np.asarray(back["classifier"]["out"]["kernel"]),
                                np.asarray(a["classifier/out/kernel"]))
  np.testing.assert_array_equal(logits(wrapped, back), logits(wrapped, pa))
  # Disabled: the base's own head and B = 0, i.e. the params the bank was created from.
  np.testing.assert_array_equal(logits(wrapped, bank.disable().params(params)),
                                logits(wrapped, params))


def test_save_load_with_head(tmp_path):
  _, rp, params, wrapped = setup()
  pa, a = tuned(params, rp, 3)
  bank = AdapterBank.create(params, rp, modules_to_save=HEAD).add("a", a)
  bank.save("a", str(tmp_path / "a"))
  loaded = AdapterBank.create(params, rp, modules_to_save=HEAD).load("a", str(tmp_path / "a"))
  np.testing.assert_array_equal(logits(wrapped, loaded.params(params)), logits(wrapped, pa))
  # A bank without modules_to_save does not accept an adapter that carries a head.
  with pytest.raises(UserError, match="classifier/out/bias is not among"):
    AdapterBank.create(params, rp).load("a", str(tmp_path / "a"))


def test_per_row_routing_with_heads_matches_each_adapter_alone():
  model, rp, params, wrapped = setup()
  pa, a = tuned(params, rp, 5)
  pb, b = tuned(params, rp, 9)
  bank = AdapterBank.create(params, rp, modules_to_save=HEAD).add("a", a).add("b", b)
  params_s, rp_s = stack_adapters(bank, ["a", "b"], params)
  # The head is not stacked into the model (a plain Dense takes one weight) ...
  assert np.shape(params_s["classifier"]["out"]["kernel"]) == (16, 3)
  heads = stack_modules(bank, ["a", "b"])
  assert heads["classifier/out/kernel"].shape == (2, 16, 3)
  idx = jnp.array([0, 1, 1, 0])
  sentence = rp_s.wrap(model).apply({"params": params_s, **row_index(idx)}, IDS, MASK,
                                    train=False)["sentence"]
  # ... each row takes its own adapter's head: logits = sentence · K[idx] + b[idx].
  k, bias = np.asarray(heads["classifier/out/kernel"]), np.asarray(heads["classifier/out/bias"])
  routed = np.einsum("bd,bdc->bc", np.asarray(sentence), k[idx]) + bias[idx]
  expect = np.where(np.asarray(idx)[:, None] == 0, logits(wrapped, pa), logits(wrapped, pb))
  np.testing.assert_allclose(routed, expect, rtol=1e-5, atol=1e-5)


def test_modules_to_save_errors_are_one_line():
  _, rp, params, _ = setup()
  with pytest.raises(UserError, match="'nothing' matches no parameter.*classifier"):
    extract_adapter(params, rp, ("nothing",))
  with pytest.raises(UserError, match="covers adapter leaf block_0/attn/query/kernel/lora_a"):
    extract_adapter(params, rp, (r"block_0/attn/query",))
