"""LoftQ's init and the TIES / DARE-TIES merges against `peft.utils`' own functions.

`peft.utils.merge_utils.ties` / `dare_ties` run as they are.  `peft.utils.loftq_utils.
loftq_init` needs bitsandbytes on a GPU: here it runs on the CPU with a stand-in
`bitsandbytes` module whose 4-bit round trip is this project's quantizer, so
both sides quantize identically and PEFT's own loop is what is compared.
"""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from peft.utils import loftq_utils, merge_utils

from reparam_jax.reparam import Reparam, materialize
from reparam_jax.reparam.adapters import merge_deltas
from reparam_jax.reparam.rules import parse_spec

# --- LoftQ --------------------------------------------------------------------------------------


def _stand_in_bitsandbytes(quantizer_spec):
  """A `bitsandbytes` module for `loftq_init(num_bits=4)`: Params4bit + dequantize_4bit round
  trip a torch [d_out, d_in] weight through the project's quantizer ([d_in, d_out] layout)."""
  node = parse_spec(quantizer_spec)

  class Params4bit:
    def __init__(self, data, **_):
      w = jnp.asarray(data.detach().numpy().T)
      self.data = torch.from_numpy(np.array(materialize(node.apply(node.from_dense(w)))).T)
      self.quant_state = None

    def to(self, *_):
      return self

  bnb = types.ModuleType("bitsandbytes")
  bnb.nn = types.SimpleNamespace(Params4bit=Params4bit, Linear4bit=object)
  bnb.functional = types.SimpleNamespace(dequantize_4bit=lambda data, state: data.clone())
  return bnb


@pytest.fixture
def peft_loftq_on_cpu(monkeypatch):
  """`loftq_init` with the stand-in bitsandbytes, its GPU moves turned into no-ops."""
  def install(quantizer_spec):
    monkeypatch.setitem(sys.modules, "bitsandbytes", _stand_in_bitsandbytes(quantizer_spec))
    for name in ("is_bnb_available", "is_bnb_4bit_available"):
      monkeypatch.setattr(loftq_utils, name, lambda: True)
    monkeypatch.setattr(loftq_utils, "is_xpu_available", lambda: False)
    monkeypatch.setattr(loftq_utils, "clear_device_cache", lambda: None)
    to = torch.Tensor.to

    def cpu_to(self, *args, **kwargs):
      if kwargs.get("device") in ("cuda", "xpu"):
        kwargs.pop("device")
      args = tuple(a for a in args if a not in ("cuda", "xpu"))
      return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", cpu_to)
    return loftq_utils.loftq_init
  return install


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("alpha", [4.0, 8.0])
def test_loftq_matches_peft_loftq_init(peft_loftq_on_cpu, iters, alpha):
  quantizer = "q4(format=nf4, block_size=16)"  # bitsandbytes' layout: blocks along d_in
  loftq_init = peft_loftq_on_cpu(quantizer)
  w = np.asarray(jax.random.normal(jax.random.key(3), (32, 24)))  # [d_in, d_out]
  q_peft, lora_a, lora_b = loftq_init(torch.from_numpy(w.T.copy()), num_bits=4, reduced_rank=4,
                                      num_iter=iters)
  node = parse_spec(f"{quantizer}|lora(rank=4, alpha={alpha}, init=loftq, iters={iters})")
  theta = node.from_dense(jnp.asarray(w))
  base = np.asarray(materialize(parse_spec(quantizer).apply(theta["base"])))
  np.testing.assert_allclose(base, q_peft.numpy().T, atol=1e-5)  # the same Q_T
  # PEFT's lora_B lora_A is the unscaled SVD fit; here s·A B is (s = alpha / rank), so the two
  # models are the same at lora_alpha = r (s = 1) and ours stays Algorithm 1 at any alpha.
  ours = alpha / 4 * np.asarray(theta["lora_a"]) @ np.asarray(theta["lora_b"])
  np.testing.assert_allclose(ours, (lora_b @ lora_a).numpy().T, atol=1e-4)
  if alpha == 4.0:
    np.testing.assert_allclose(np.asarray(materialize(node.apply(theta))),
                               (q_peft + lora_b @ lora_a).numpy().T, atol=1e-4)


# --- TIES / DARE-TIES ---------------------------------------------------------------------------

RANK, ALPHA = 2, 4.0


def _adapter(seed, d_in=12, d_out=10):
  ka, kb = jax.random.split(jax.random.key(seed))
  return {"w/kernel/lora_a": jax.random.normal(ka, (d_in, RANK)),
          "w/kernel/lora_b": jax.random.normal(kb, (RANK, d_out))}


def _task_vector(ad):
  return ALPHA / RANK * np.asarray(ad["w/kernel/lora_a"]) @ np.asarray(ad["w/kernel/lora_b"])


ADS = [_adapter(1), _adapter(2), _adapter(3)]
RP = Reparam.from_config({"rules": ((r"w/kernel", f"lora(rank={RANK}, alpha={ALPHA})"),)})


@pytest.mark.parametrize("sign_method", ["total", "frequency"])
@pytest.mark.parametrize("weights", [[0.2, 1.5, 0.6], [1.0, 0.3, -0.8]])
def test_ties_matches_peft_ties(weights, sign_method):
  taus = [torch.from_numpy(_task_vector(ad)) for ad in ADS]
  want = merge_utils.ties(taus, torch.tensor(weights), 0.4, majority_sign_method=sign_method)
  got = merge_deltas(RP, ADS, weights, "ties", density=0.4,
                     majority_sign_method=sign_method)["w/kernel"]
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_dare_ties_without_drops_matches_peft_dare_ties(sign_method):
  # drop=0 (PEFT: density 1) keeps every entry, so the random masks agree and what is compared
  # is the sign election and how the weights enter.
  weights = [0.2, 1.5, -0.6]
  taus = [torch.from_numpy(_task_vector(ad)) for ad in ADS]
  with pytest.warns(UserWarning, match="no pruning"):
    want = merge_utils.dare_ties(taus, torch.tensor(weights), 1.0,
                                 majority_sign_method=sign_method)
  got = merge_deltas(RP, ADS, weights, "dare_ties", drop=0.0, key=jax.random.key(0),
                     majority_sign_method=sign_method)["w/kernel"]
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
