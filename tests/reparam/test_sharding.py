"""On an 8-device CPU mesh every θ leaf gets the sharding derived from its weight."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import jax
import pytest

from tests.helpers import xla_flags
from tests.reparam.specs import COMPOSITIONS, EXAMPLES, initializable  # noqa: E402

# Hand-derived shardings for some; every registered example is also checked
# against the axes its transform declares (`leaf_axes`).
SPECS = ["lowrank(rank=4)", "spherical", "lora(rank=2)", "variational", "latent(dim=4)",
         "hypersphere", "spherical|lora(rank=2)"]


def check_shardings() -> None:
  import flax.linen as nn  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import Mesh  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P

  from reparam_jax import reparam  # noqa: PLC0415
  from reparam_jax.models import Transformer, TransformerConfig  # noqa: PLC0415
  from reparam_jax.reparam.rules import parse_spec  # noqa: PLC0415

  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("fsdp", "tensor"))
  rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))
  cfg = TransformerConfig(vocab_size=32, num_layers=1, num_heads=4, embed_dim=16, mlp_dim=32,
                          max_len=8)
  ids = jnp.zeros((2, 8), jnp.int32)
  expected = {  # fc_in kernel is ('embed', 'mlp') → (fsdp, tensor)
      "lowrank(rank=4)": {"u": P("fsdp", None), "v": P("tensor", None)},
      "spherical": {"radius": P("tensor"), "angles": P(None, "tensor")},
      "lora(rank=2)": {"base": P("fsdp", "tensor"), "lora_a": P("fsdp", None),
                       "lora_b": P(None, "tensor")},
      "variational": {"mu": P("fsdp", "tensor"), "rho": P("fsdp", "tensor")},
      "latent(dim=4)": {"z_mu": P(None, None), "z_rho": P(None, None), "dec_in": P("fsdp", None),
                        "dec_out": P(None, "tensor")},
      "hypersphere": {"direction": P("fsdp", "tensor"), "scale": P("tensor")},
      "spherical|lora(rank=2)": {"base": {"radius": P("tensor"), "angles": P(None, "tensor")},
                                 "lora_a": P("fsdp", None), "lora_b": P(None, "tensor")},
  }
  for spec in dict.fromkeys(SPECS + initializable(EXAMPLES + COMPOSITIONS)):
    rc = ml_collections.ConfigDict(dict(rules=((r"block_\d+/mlp/fc_in/kernel", spec),)))
    wrapped = reparam.wrap(Transformer(cfg), rc)
    init = lambda k: wrapped.init(k, ids)  # noqa: E731
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    # What the trainer's init (jit with these out_shardings) places each θ leaf on.
    got = jax.tree.map(lambda s: s.spec, shardings["params"]["block_0"]["mlp"]["fc_in"]["kernel"])
    theta = abstract["params"]["block_0"]["mlp"]["fc_in"]["kernel"]
    node = parse_spec(spec)
    declared = node.box(jax.tree.map(lambda b: b.value, theta,
                                     is_leaf=lambda x: isinstance(x, nn.Partitioned)),
                        ("embed", "mlp"), lambda v, names: nn.logical_to_mesh_axes(names, rules))
    want = jax.tree.map(lambda s: s, expected.get(spec, declared), is_leaf=lambda x: isinstance(x, P))
    flat_got = jax.tree_util.tree_flatten_with_path(got, is_leaf=lambda x: isinstance(x, P))[0]
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, P))[0])
    assert len(flat_got) == len(flat_want), spec
    for path, s in flat_got:
      w = flat_want[path]
      assert tuple(s) + (None,) * (len(w) - len(s)) == tuple(w), (spec, path, s, w)
    if spec not in SPECS:
      continue
    # Sharded values compute the same as on one device (the hand-derived specs: a compile
    # each, so not for every registered example).
    params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))["params"]
    placed = jax.tree.map(lambda b: b.value.sharding.spec, params["block_0"]["mlp"]["fc_in"]
                          ["kernel"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert placed == got, (spec, placed, got)
    forward = jax.jit(lambda p: wrapped.apply({"params": p}, ids)["logits"])  # noqa: B023
    y, y_ref = forward(params), forward(jax.device_get(params))
    assert len(y_ref.sharding.device_set) == 1 < len(y.sharding.device_set)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5)


def on_8_devices(check: str) -> None:
  """Runs this module's `check` here with 8 devices, or in a fresh process started with 8
  (JAX fixes the device count when it starts, e.g. when a conftest imported it first)."""
  if jax.device_count() >= 8:
    globals()[check]()
    return
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = f"from tests.reparam.test_sharding import {check}; {check}()"
  proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                        text=True, timeout=300)
  if proc.returncode != 0:
    pytest.fail(proc.stderr[-3000:])


@pytest.mark.heavy
def test_theta_shardings_follow_weight_axes():
  on_8_devices("check_shardings")


def check_fsdp_stores_every_theta() -> None:
  """The trainer's shardings (`logical_to_sharding`), pure FSDP and FSDP × tensor: a θ leaf
  with a dimension 8 divides is split 8 ways.  LoRA's B is [rank, mlp] (mlp → tensor = 1)
  and spherical's angles are [embed − 1, mlp] or [mlp − 1, embed] (odd row counts): the
  rules table alone leaves them whole on every device of some mesh axis, and with their
  Adam moments they hold the memory FSDP is meant to divide."""
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from reparam_jax import reparam  # noqa: PLC0415
  from reparam_jax.config.base import DEFAULT_AXIS_RULES  # noqa: PLC0415
  from reparam_jax.models import Transformer, TransformerConfig  # noqa: PLC0415
  from reparam_jax.pytree.paths import flatten_with_paths  # noqa: PLC0415
  from reparam_jax.training import sharding  # noqa: PLC0415

  meshes = [sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}),
            sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})]
  cfg = TransformerConfig(vocab_size=32, num_layers=2, num_heads=4, embed_dim=64, mlp_dim=128,
                          max_len=8, scan_layers=True)
  ids = jnp.zeros((2, 8), jnp.int32)
  for mesh, spec in itertools.product(meshes, ("lora(rank=8)", "spherical", "lowrank(rank=8)",
                                               "spherical|lora(rank=8)")):
    rules = ((r"block_\d+/(attn/\w+|mlp/fc_(in|out))/kernel", spec),)
    wrapped = reparam.wrap(Transformer(cfg), {"rules": rules})
    abstract = jax.eval_shape(lambda k: wrapped.init(k, ids), jax.random.key(0))  # noqa: B023
    shardings = sharding.logical_to_sharding(abstract, mesh, DEFAULT_AXIS_RULES)
    shapes = flatten_with_paths(nn_unbox(abstract))
    for (path, leaf), (_, s) in zip(shapes, flatten_with_paths(shardings)):
      stacked = "/blocks/" in path  # its first axis is the scan's: it stays whole
      splittable = any(d % 8 == 0 for d in leaf.shape[int(stacked):])
      shard = s.shard_shape(leaf.shape)
      if splittable:
        assert np.prod(shard) * 8 == np.prod(leaf.shape), (mesh.shape, spec, path, s.spec)
      if stacked:
        assert shard[0] == leaf.shape[0], (spec, path, s.spec)


def nn_unbox(tree):
  import flax.linen as nn  # noqa: PLC0415
  return nn.meta.unbox(tree)


def test_fsdp_stores_every_theta():
  on_8_devices("check_fsdp_stores_every_theta")
