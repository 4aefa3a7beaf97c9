"""Merging LoRA adapters (linear, TIES, DARE) into the base or a new adapter, and unmerging,
checked against independent numpy implementations of the papers' formulas (TIES in PEFT's
form: trim and sign election on the unweighted task vectors, weights applied after)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.adapters import (
  merge_deltas,
  merge_into_base,
  merge_to_adapter,
  unmerge_from_base,
)

RANK, ALPHA, D_IN, D_OUT = 2, 4.0, 12, 10
S = ALPHA / RANK


def rp_for(spec=f"lora(rank={RANK}, alpha={ALPHA})"):
  return Reparam.from_config({"rules": ((r"(w|v)/kernel", spec),)})


def base(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"w": {"kernel": jax.random.normal(k1, (D_IN, D_OUT))},
          "v": {"kernel": jax.random.normal(k2, (D_IN, D_OUT))}}


def adapter(seed, rank=RANK):
  ks = jax.random.split(jax.random.key(seed), 4)
  return {"w/kernel/lora_a": jax.random.normal(ks[0], (D_IN, rank)),
          "w/kernel/lora_b": jax.random.normal(ks[1], (rank, D_OUT)),
          "v/kernel/lora_a": jax.random.normal(ks[2], (D_IN, rank)),
          "v/kernel/lora_b": jax.random.normal(ks[3], (rank, D_OUT))}


def np_delta(ad, w="w", scale=S):
  return scale * np.asarray(ad[f"{w}/kernel/lora_a"]) @ np.asarray(ad[f"{w}/kernel/lora_b"])


def np_trim(t, density):
  k = int(density * t.size)
  flat = t.ravel()
  keep = np.argsort(-np.abs(flat), kind="stable")[:k]
  out = np.zeros_like(flat)
  out[keep] = flat[keep]
  return out.reshape(t.shape)


def np_ties(taus, weights, sign_method="total"):
  """PEFT's `ties` on trimmed task vectors (peft/utils/merge_utils.py), restated in numpy:
  the sign is elected on the unweighted τ_i (their sum, or with "frequency" the sum of their
  signs; a tie elects +), the weights enter after, and the weighted entries that agree with
  the sign are averaged (the count of agreeing entries, at least 1, divides)."""
  ts = np.stack(taus)
  votes = ts.sum(0) if sign_method == "total" else np.sign(ts).sum(0)
  elected = np.where(votes >= 0, 1.0, -1.0)
  num, den = np.zeros(ts.shape[1:]), np.zeros(ts.shape[1:])
  for t, w in zip(ts, weights):
    agree = np.sign(t) == elected
    num += np.where(agree, w * t, 0)
    den += agree
  return num / np.maximum(den, 1)


ADS = [adapter(1), adapter(2), adapter(3)]
WEIGHTS = [0.5, 1.0, -0.7]


def test_linear_and_ties_match_numpy():
  rp = rp_for()
  got = merge_deltas(rp, ADS, WEIGHTS, "linear")
  for w in ("w", "v"):
    want = sum(wi * np_delta(ad, w) for wi, ad in zip(WEIGHTS, ADS))
    np.testing.assert_allclose(got[f"{w}/kernel"], want, rtol=1e-5, atol=1e-5)
  for sign_method in ("total", "frequency"):
    got = merge_deltas(rp, ADS, WEIGHTS, "ties", density=0.3, majority_sign_method=sign_method)
    want = np_ties([np_trim(np_delta(ad), 0.3) for ad in ADS], WEIGHTS, sign_method)
    np.testing.assert_allclose(got["w/kernel"], want, rtol=1e-5, atol=1e-5)
  # Not the plain weighted sum: TIES changes the result.
  assert np.abs(want - sum(wi * np_delta(ad) for wi, ad in zip(WEIGHTS, ADS))).max() > 0.1


def test_ties_trims_and_elects_on_the_unweighted_task_vectors():
  # One entry, by hand: τ = (+1, −3) with weights (4, 1).  The sign is elected on τ (sum −2:
  # minus), so only the second survives and the result is 1·(−3); electing on w·τ = (+4, −3)
  # would keep the first instead (+4).  Trimming at density 1/2 keeps each τ's larger entry
  # (the 0.1 and 0.2 are trimmed).
  ad = lambda a, b: {"w/kernel/lora_a": np.array([[a], [b]], np.float32),
                     "w/kernel/lora_b": np.array([[1.0]], np.float32)}
  rp = Reparam.from_config({"rules": ((r"w/kernel", "lora(rank=1, alpha=1)"),)})
  got = merge_deltas(rp, [ad(1.0, 0.1), ad(-3.0, 0.2)], [4.0, 1.0], "ties", density=0.5)
  np.testing.assert_allclose(np.asarray(got["w/kernel"]), [[-3.0], [0.0]], rtol=1e-6)
  # A tied vote (+2, −2, weights 1, 1) elects + as PEFT does: the + entry survives alone.
  got = merge_deltas(rp, [ad(2.0, 0.0), ad(-2.0, 0.0)], [1.0, 1.0], "ties", density=1.0)
  np.testing.assert_allclose(np.asarray(got["w/kernel"]), [[2.0], [0.0]])
  # "frequency" counts signs: (+1, +1, −5) elects + where "total" elects −.
  three = [ad(1.0, 0.0), ad(1.0, 0.0), ad(-5.0, 0.0)]
  for method, want in (("total", -5.0), ("frequency", 1.0)):
    got = merge_deltas(rp, three, [1.0] * 3, "ties", density=1.0, majority_sign_method=method)
    assert float(got["w/kernel"][0, 0]) == pytest.approx(want)


def test_dare_drops_rescales_and_combines_like_numpy():
  rp, key, p = rp_for(), jax.random.key(5), 0.4
  # Each adapter's drop mask, recovered alone (the others weighted 0): the masks are drawn
  # per (adapter, weight), so they are the same inside the three-adapter merge.
  masked = []
  for i in range(3):
    alone = [1.0 if j == i else 0.0 for j in range(3)]
    m = np.asarray(merge_deltas(rp, ADS, alone, "dare", drop=p, key=key)["w/kernel"])
    t = np_delta(ADS[i])
    kept = m != 0
    np.testing.assert_allclose(m[kept], t[kept] / (1 - p), rtol=1e-5)  # rescaled by 1/(1-p)
    masked.append(m)
  frac = 1 - np.mean([np.mean(m != 0) for m in masked])
  assert abs(frac - p) < 0.1, frac  # 360 entries: dropped fraction near p
  got = merge_deltas(rp, ADS, WEIGHTS, "dare", drop=p, key=key)["w/kernel"]
  np.testing.assert_allclose(got, sum(w * m for w, m in zip(WEIGHTS, masked)), rtol=1e-5,
                             atol=1e-5)
  got = merge_deltas(rp, ADS, WEIGHTS, "dare_ties", drop=p, key=key)["w/kernel"]
  np.testing.assert_allclose(got, np_ties(masked, WEIGHTS), rtol=1e-5, atol=1e-5)


def test_merge_into_base_and_unmerge_round_trip():
  rp = rp_for()
  dense = base()
  params = rp.from_dense(dense)
  deltas = merge_deltas(rp, ADS[:2], WEIGHTS[:2])
  merged = merge_into_base(params, rp, deltas)
  eff = rp.to_dense(merged)["w"]["kernel"]
  want = np.asarray(dense["w"]["kernel"]) + sum(
      wi * np_delta(ad) for wi, ad in zip(WEIGHTS[:2], ADS[:2]))
  np.testing.assert_allclose(eff, want, rtol=1e-5, atol=1e-5)
  assert not np.asarray(merged["w"]["kernel"]["lora_b"]).any()  # adapter leaves at "no change"
  back = unmerge_from_base(merged, rp, deltas)
  np.testing.assert_allclose(back["w"]["kernel"]["base"], dense["w"]["kernel"], atol=1e-5)


def test_merge_to_adapter_linear_concat_is_exact_svd_is_truncated():
  rp = rp_for()
  new, rp_new = merge_to_adapter(rp, ADS[:2], WEIGHTS[:2], "linear")
  assert new["w/kernel/lora_a"].shape == (D_IN, 2 * RANK)
  lora = rp_new.plan.match("w/kernel").node.outer
  assert lora.rank == 2 * RANK and lora.alpha == ALPHA
  got = lora.scale * np.asarray(new["w/kernel/lora_a"]) @ np.asarray(new["w/kernel/lora_b"])
  want = sum(wi * np_delta(ad) for wi, ad in zip(WEIGHTS[:2], ADS[:2]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The new adapter runs on a model built from rp_new.
  params = rp_new.from_dense(base())
  from reparam_jax.reparam.adapters import insert_adapter
  eff = rp_new.to_dense(insert_adapter(params, new))["w"]["kernel"]
  np.testing.assert_allclose(eff, np.asarray(base()["w"]["kernel"]) + want, rtol=1e-5, atol=1e-5)
  # TIES at the adapters' own rank: the best rank-2 approximation of the TIES delta.
  new, rp_same = merge_to_adapter(rp, ADS, WEIGHTS, "ties", density=0.5)
  assert rp_same.plan.match("w/kernel").node.outer.rank == RANK
  tau = np_ties([np_trim(np_delta(ad), 0.5) for ad in ADS], WEIGHTS)
  u, s, vt = np.linalg.svd(tau)
  best = (u[:, :RANK] * s[:RANK]) @ vt[:RANK]
  got = S * np.asarray(new["w/kernel/lora_a"]) @ np.asarray(new["w/kernel/lora_b"])
  np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-4)


def test_bad_merges_are_one_line_errors():
  rp = rp_for()
  only_w = {k: v for k, v in ADS[1].items() if k.startswith("w/")}
  with pytest.raises(UserError, match=r"adapters 'a' and 'b' target different weights: only "
                                      r"'a' has v/kernel/lora_a"):
    merge_deltas(rp, [ADS[0], only_w], [1, 1], names=["a", "b"])
  with pytest.raises(UserError, match="2 adapters but 1 weights"):
    merge_deltas(rp, ADS[:2], [1.0])
  with pytest.raises(UserError, match="unknown merge method 'avg'"):
    merge_deltas(rp, ADS[:2], [1, 1], "avg")
  with pytest.raises(UserError, match="majority_sign_method='count'; expected total or frequency"):
    merge_deltas(rp, ADS[:2], [1, 1], "ties", majority_sign_method="count")
  with pytest.raises(UserError, match="pass key="):
    merge_deltas(rp, ADS[:2], [1, 1], "dare")
  dora_like = rp_for("lowrank(rank=2)")
  with pytest.raises(UserError, match=r"cannot merge at v/kernel \(.lowrank\(rank=2\).\): "
                                      "merging works on"):
    merge_deltas(dora_like, ADS[:2], [1, 1])
