"""Named adapters on one base (AdapterBank) and adapter save/load through orbax with shardings."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reparam_jax import reparam
from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import AdapterBank, Reparam
from reparam_jax.reparam.adapters import extract_adapter, read_adapter, write_adapter

CFG = TransformerConfig(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                        max_len=8)
IDS = (jnp.arange(16, dtype=jnp.int32).reshape(2, 8) * 5) % 32
KERNELS = r"block_\d+/(attn|mlp)/\w+/kernel"
RC = ml_collections.ConfigDict({"rules": ((KERNELS, "lora(rank=2, alpha=4)"),)})


def setup():
  model = Transformer(CFG)
  dense = nn.meta.unbox(model.init(jax.random.key(0), IDS)["params"])
  rp = Reparam.from_config(RC)
  return model, dense, rp, rp.from_dense(dense), rp.wrap(model)


def trained(params, rp, seed):
  """An adapter as if fine-tuned: random A and B at every adapted weight."""
  out = extract_adapter(params, rp)
  return {p: 0.3 * jax.random.normal(jax.random.key(seed + i), v.shape)
          for i, (p, v) in enumerate(sorted(out.items()))}


def logits(wrapped, params):
  return np.asarray(wrapped.apply({"params": params}, IDS)["logits"])


def test_add_switch_disable_delete():
  model, dense, rp, params, wrapped = setup()
  a, b = trained(params, rp, 1), trained(params, rp, 100)
  bank = AdapterBank.create(params, rp).add("a", a).add("b", b)
  assert bank.names == ("a", "b") and bank.active == "a"  # the first added is active
  y_base = np.asarray(model.apply({"params": dense}, IDS)["logits"])
  y_a, y_b = logits(wrapped, bank.params(params)), logits(wrapped, bank.switch("b").params(params))
  assert np.abs(y_a - y_b).max() > 1e-2 and np.abs(y_a - y_base).max() > 1e-2
  # The active adapter is exactly the one inserted by hand.
  np.testing.assert_array_equal(y_a, logits(wrapped, reparam.insert_adapter(params, a)))
  # Disabled: the base θ with B = 0, bit-identical to the freshly converted base.
  off = bank.switch("b").disable()
  np.testing.assert_array_equal(logits(wrapped, off.params(params)), logits(wrapped, params))
  np.testing.assert_allclose(logits(wrapped, off.params(params)), y_base, atol=1e-5)
  np.testing.assert_array_equal(logits(wrapped, off.enable().params(params)), y_b)
  # Delete the active one: nothing active, the base model runs.
  gone = bank.switch("b").delete("b")
  assert gone.names == ("a",) and gone.active is None
  np.testing.assert_array_equal(logits(wrapped, gone.params(params)), logits(wrapped, params))
  assert bank.names == ("a", "b")  # banks are values: the old one is unchanged


def test_partial_adapter_takes_no_change_elsewhere():
  _, _, rp, params, wrapped = setup()
  full = trained(params, rp, 1)
  only_query = {p: v for p, v in full.items() if "/query/" in p}
  bank = AdapterBank.create(params, rp).add("full", full).add("q", only_query).switch("q")
  # Switching from "full" to "q" must not leave "full"'s value/mlp leaves behind.
  expect = reparam.insert_adapter(params, only_query)
  np.testing.assert_array_equal(logits(wrapped, bank.params(params)), logits(wrapped, expect))


def test_one_line_errors_name_the_problem():
  _, _, rp, params, _ = setup()
  bank = AdapterBank.create(params, rp).add("a", trained(params, rp, 1))
  with pytest.raises(UserError, match=r"unknown adapter 'nope'; known: a$"):
    bank.switch("nope")
  with pytest.raises(UserError, match="known: a"):
    bank.delete("nope")
  with pytest.raises(UserError, match="already exists"):
    bank.add("a", trained(params, rp, 2))
  wrong_rank = dict(trained(params, rp, 1))
  path = "block_0/attn/query/kernel/lora_a"
  wrong_rank[path] = jnp.zeros((16, 3))
  with pytest.raises(UserError, match=f"{path} has shape \\(16, 3\\).*expects \\(16, 2\\)"):
    bank.add("r3", wrong_rank)
  with pytest.raises(UserError, match="embed/token/embedding is not among"):
    bank.add("bad", {"embed/token/embedding": jnp.zeros((32, 16))})
  with pytest.raises(UserError) as e:
    bank.switch("nope")
  assert "\n" not in str(e.value)


def test_add_from_params_and_save_load_npz_and_orbax(tmp_path):
  _, _, rp, params, wrapped = setup()
  tuned = reparam.insert_adapter(params, trained(params, rp, 7))
  bank = AdapterBank.create(params, rp).add("t", params=tuned)
  bank.save("t", str(tmp_path / "t_orbax"))
  bank.save("t", str(tmp_path / "t.npz"))
  for path in ("t_orbax", "t.npz"):
    loaded = AdapterBank.create(params, rp).load("t", str(tmp_path / path))
    np.testing.assert_array_equal(logits(wrapped, loaded.params(params)), logits(wrapped, tuned))
  # The module-level functions take both formats too (orbax: a directory).
  reparam.save_adapter(str(tmp_path / "fn"), tuned, rp)
  restored = reparam.load_adapter(str(tmp_path / "fn"), params)
  np.testing.assert_array_equal(logits(wrapped, restored), logits(wrapped, tuned))
  with pytest.raises(UserError, match="no adapter at"):
    bank.load("x", str(tmp_path / "missing"))


def test_orbax_restore_lands_on_the_target_sharding(tmp_path):
  _, _, rp, params, _ = setup()
  mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
  assert len(jax.devices()) >= 8

  def place(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    spec = P("x", None) if name.endswith("lora_a") else (
        P(None, "x") if name.endswith("lora_b") else P())
    return jax.device_put(leaf, NamedSharding(mesh, spec))

  sharded = jax.tree_util.tree_map_with_path(place, params)
  adapter = trained(params, rp, 3)
  on_mesh = {p: jax.device_put(v, extract_adapter(sharded, rp)[p].sharding)
             for p, v in adapter.items()}
  write_adapter(str(tmp_path / "a"), on_mesh)
  like = extract_adapter(sharded, rp)
  back = read_adapter(str(tmp_path / "a"), like)
  for p, v in back.items():
    assert isinstance(v.sharding, NamedSharding) and v.sharding.spec == like[p].sharding.spec, p
    assert v.sharding.mesh.shape == {"x": 8}
    np.testing.assert_array_equal(np.asarray(v), np.asarray(adapter[p]))
  # Through a bank created from sharded params and through load_adapter.
  bank = AdapterBank.create(sharded, rp).load("a", str(tmp_path / "a"))
  q = bank.get("a")["block_0/mlp/fc_in/kernel/lora_b"]
  assert q.sharding.spec == P(None, "x") and len(q.sharding.device_set) == 8
  loaded = reparam.load_adapter(str(tmp_path / "a"), sharded)
  assert loaded["block_1"]["attn"]["value"]["kernel"]["lora_a"].sharding.spec == P("x", None)
