"""The scanned stack's loop: `model.scan_unroll` layers per iteration, and what the
backward loop reads (SCANNED_REMAT_POLICIES), change the program, not the math.

bench/scan_vs_unrolled.py times it; its `--smoke` run and HLO reading are tested here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from reparam_jax.models import Transformer, transformer_config
from reparam_jax.pytree import layers

BASE = dict(vocab_size=50, num_layers=3, num_heads=2, embed_dim=16, mlp_dim=32, max_len=16)


def _loss(model, params, ids, train):
  out = model.apply({"params": params}, ids, train=train, rngs={"dropout": jax.random.key(2)})
  return jnp.mean(out["logits"] ** 2)


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("remat,unroll", [("none", 2), ("full", 3)])
def test_unrolled_scan_loop_equals_the_unrolled_stack(remat, unroll):
  """3 layers at 2 per iteration (a remainder layer) and at 3 (no loop left): the same
  loss and gradients as the unrolled stack on the same weights; with dropout (whose
  per-layer keys differ between the layouts), the same as one layer per iteration."""
  cfg = transformer_config(dict(BASE, remat=remat, residual_dropout=0.1))
  unrolled = Transformer(cfg)
  one = Transformer(dataclasses.replace(cfg, scan_layers=True))
  scanned = Transformer(dataclasses.replace(cfg, scan_layers=True, scan_unroll=unroll))
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 50)
  params = meta.unbox(unrolled.init(jax.random.key(0), ids)["params"])
  stacked = layers.stack_layers(params)
  grad = lambda model, p, train: jax.value_and_grad(  # noqa: E731
      lambda q: _loss(model, q, ids, train))(p)
  (l0, g0), (l1, g1) = grad(unrolled, params, False), grad(scanned, stacked, False)
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  _close(layers.stack_layers(g0), g1)
  (l2, g2), (l3, g3) = grad(one, stacked, True), grad(scanned, stacked, True)
  assert float(l2) != float(l1)  # dropout is on
  np.testing.assert_allclose(float(l2), float(l3), rtol=1e-6)
  _close(g2, g3)


def _stacked_residual_bytes(remat: str) -> int:
  """Bytes the forward loop of the scanned stack writes for its backward loop: the
  stacked outputs of the first scan in the gradient's jaxpr, its carry aside."""
  cfg = transformer_config(dict(BASE, remat=remat, scan_layers=True))
  model = Transformer(cfg)
  ids = jnp.ones((2, 8), jnp.int32)
  params = meta.unbox(model.init(jax.random.key(0), ids)["params"])
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, ids)["logits"])))(
      params).jaxpr
  forward = next(e for e in jaxpr.eqns if e.primitive.name == "scan")
  return sum(v.aval.size * v.aval.dtype.itemsize for v in forward.outvars
             if v.aval.shape[:1] == (cfg.num_layers,))


def test_scanned_stack_without_remat_stacks_matmul_outputs_only():
  """Without remat the scan would stack every intermediate (the weights as the dots see
  them, the GELU's terms) through its loop; it keeps what policy `dots` keeps."""
  none, dots, full = (_stacked_residual_bytes(r) for r in ("none", "dots", "full"))
  assert none == dots
  assert full < dots


def test_scan_unroll_must_be_positive():
  from bench.lm_step import quickstart_config
  from reparam_jax.config.validate import validate_config
  from reparam_jax.errors import UserError

  with pytest.raises(ValueError, match="scan_unroll=0"):
    transformer_config(dict(BASE, scan_layers=True, scan_unroll=0))
  with pytest.raises(UserError, match="model.scan_unroll"):
    validate_config(quickstart_config(**{"model.scan_unroll": 0}))


def test_hlo_reading_counts_moves_in_loops():
  from bench import scan_vs_unrolled as bench

  text = """HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %u = f32[1,8]{1,0} slice(%x), slice={[0:1], [0:8]}
  %d = f32[4,8]{1,0} dynamic-update-slice(%x, %u, %i, %i)
  %c = f32[4,8]{1,0} copy(%d)
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %c)
}

ENTRY %main (a: f32[4,8]) -> f32[8,4] {
  %a = f32[4,8]{1,0} parameter(0)
  %w = (s32[], f32[4,8]{1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %tr = f32[8,4]{1,0} transpose(%a), dimensions={1,0}
}
"""
  comps, entry = bench.parse_hlo(text)
  moves = bench.count_moves(comps, entry)
  # The update's 32 bytes and the copy's 128, three times; the transpose outside.
  assert moves["loop"]["dynamic-update-slice"] == {"count": 3, "mib": 96 / 2**20}
  assert moves["loop"]["copy"] == {"count": 3, "mib": 384 / 2**20}
  assert "transpose" not in moves["loop"] and moves["total"]["transpose"]["count"] == 1
  assert moves["loops"][0]["trips"] == 3


def test_bench_smoke(capsys):
  """`python -m bench.scan_vs_unrolled --smoke`: the trainer's step both ways, timed."""
  from bench import scan_vs_unrolled as bench

  rows = bench.main(["--smoke", "--remat", "none", "--unroll", "1,2", "--steps", "2"])
  by = {r["variant"]: r for r in rows}
  assert set(by) == {"unrolled", "scanned, unroll 1", "scanned, unroll 2"}
  assert by["unrolled"]["wall_ratio"] == 1.0 and by["scanned, unroll 1"]["wall_ms"] > 0
  # One layer per iteration leaves the two loops (forward, backward) of 2 trips each;
  # 2 layers per iteration on the 2-layer model leaves none.
  assert [l["trips"] for l in by["scanned, unroll 1"]["moves"]["loops"]] == [2, 2]
  assert by["scanned, unroll 2"]["moves"]["loop"] == {}
  assert not by["unrolled"]["moves"]["loops"]
  assert "| tiny | none | scanned, unroll 1 |" in capsys.readouterr().out
