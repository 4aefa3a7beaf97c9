"""VeRA and (IA)³ adapters exported in PEFT's format (peft_type VERA / IA3): the real `peft`
loads them onto the base model with our outputs (float32, max |Δ| ≤ 1e-4), on tiny random
BERT, GPT-2 and Llama models; and what PEFT cannot hold is a one-line UserError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import hf_refs
import test_llama
import test_peft
import test_peft_gpt2

from reparam_jax.errors import UserError
from reparam_jax.hf import importer
from reparam_jax.hf import peft as peft_io
from reparam_jax.pytree.paths import key_path
from reparam_jax.reparam.transforms.vera import projections


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _randomized(params, rules, seed=0):
  """θ with every trained vector random: VeRA's b starts at 0, (IA)³'s l at 1, either of
  which would hide the adapter."""
  from reparam_jax.reparam import Reparam
  theta = Reparam.from_config({"rules": rules}).from_dense(params, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = key_path(path).rsplit("/", 1)[-1]
    if name in ("vera_d", "vera_b"):
      return jnp.asarray(rng.standard_normal(x.shape), x.dtype)
    if name == "ia3_l":
      return jnp.asarray(1 + 0.3 * rng.standard_normal(x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(fill, theta)


def _zero_biases(model, names):
  """Zero the biases (or the column ranges of a fused bias) that side=output (IA)³ scales:
  PEFT scales (x W₀ + b) ⊙ l, ours x W₀ ⊙ l + b (transforms/ia3.py)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      for suffix, cols in names.items():
        if name.endswith(suffix):
          p[cols] = 0


def _bert(tmp_path, zero=None):
  model = hf_refs.bert("BertModel", **test_peft.BERT_SIZES["tiny"])
  _zero_biases(model, zero or {})
  params, cfg, heads, _ = importer.import_folder(hf_refs.save_model(model, str(tmp_path / "hf")))
  return model, params, cfg, heads


def _gpt2(tmp_path, zero=None):
  model = hf_refs.gpt2(**test_peft_gpt2.GPT2_SIZES["tiny"])
  _zero_biases(model, zero or {})
  params, cfg, heads, _ = importer.import_folder(hf_refs.save_model(model, str(tmp_path / "hf")))
  return model, params, cfg, heads


def _check(family, tmp_path, rules, zero=None):
  """Export `rules`' adapters of a random θ and compare PeftModel's outputs with ours;
  returns (adapter_config, tensors)."""
  out = str(tmp_path / "adapter")
  if family == "bert":
    model, params, cfg, heads = _bert(tmp_path, zero)
    theta = _randomized(params, rules)
    summary = peft_io.export_peft_adapter(theta, {"rules": rules}, out)
    inputs = test_peft._inputs(cfg)
    loaded = peft.PeftModel.from_pretrained(model, out).eval()
    test_peft._close(test_peft._ours(theta, rules, cfg, heads, inputs),
                     test_peft._theirs(loaded, inputs))
  elif family == "gpt2":
    model, params, cfg, heads = _gpt2(tmp_path, zero)
    theta = _randomized(params, rules)
    summary = peft_io.export_peft_adapter(theta, {"rules": rules}, out)
    ids = test_peft_gpt2._ids(cfg)
    loaded = peft.PeftModel.from_pretrained(model, out).eval()
    test_peft_gpt2._close(test_peft_gpt2._ours(theta, rules, cfg, heads, ids),
                          test_peft_gpt2._theirs(loaded, ids))
  else:
    model, folder = test_llama._saved("llama3", tmp_path / "hf")
    params, cfg, _, _ = importer.import_folder(folder)
    theta = _randomized(params, rules)
    summary = peft_io.export_peft_adapter(theta, {"rules": rules}, out)
    ids = hf_refs.random_ids(cfg.vocab_size, 2, 10, seed=4)
    loaded = peft.PeftModel.from_pretrained(model, out).eval()
    with torch.no_grad():
      want = loaded(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(test_llama._logits(theta, rules, cfg, ids), want, atol=1e-4,
                               rtol=1e-4)
  return summary["config"], safetensors_numpy.load_file(f"{out}/adapter_model.safetensors")


# --- VeRA -------------------------------------------------------------------------------------

VERA_CASES = {
    # d_in 32 (query, value) and 64 (fc_out): one shared A needs one fan-in
    "bert": ((r"block_\d+/(attn/(query|value)|mlp/fc_out)/kernel",
              "vera(rank=4, seed=3, fan_in=64)"),),
    "gpt2": ((r"block_\d+/(attn/out|mlp/fc_in)/kernel", "vera(rank=5, d_initial=0.5)"),),
    "llama": ((r"block_\d+/attn/(query|value)/kernel", "vera(rank=3, seed=7)"),),
}


@pytest.mark.parametrize("family", list(VERA_CASES))
def test_vera_export_loads_in_peft_with_equal_outputs(tmp_path, family):
  config, tensors = _check(family, tmp_path, VERA_CASES[family])
  assert config["peft_type"] == "VERA" and config["save_projection"] is True
  assert config["fan_in_fan_out"] is (family == "gpt2")
  # The written pair is our own counter-based one, sized for the largest adapted layer.
  rank, d_in = tensors["base_model.vera_A"].shape
  d_out = tensors["base_model.vera_B"].shape[0]
  fan_in = {"bert": 64, "gpt2": 32, "llama": d_in}[family]
  a, b = projections({"bert": 3, "gpt2": 0, "llama": 7}[family], rank, d_in, d_out, fan_in)
  np.testing.assert_array_equal(tensors["base_model.vera_A"], np.asarray(a).T)
  np.testing.assert_array_equal(tensors["base_model.vera_B"], np.asarray(b).T)


def test_vera_that_peft_cannot_hold_is_a_user_error(tmp_path):
  _, params, _, _ = _bert(tmp_path)
  from reparam_jax.reparam import Reparam
  cases = [
      (((r"block_0/(attn/query|mlp/fc_out)/kernel", "vera(rank=4)"),),
       r"fan-ins \[32, 64\] .* set vera\(fan_in=64\) on every layer"),
      (((r"block_0/attn/query/kernel", "vera(rank=4)"), (r"block_0/attn/value/kernel",
                                                          "vera(rank=2)")),
       "vera rank=4 and 2; PEFT's VeRA shares one projection pair"),
      (((r"block_0/attn/query/kernel", "vera(rank=4)"), (r"block_0/attn/value/kernel",
                                                          "lora(rank=2)")),
       r"\(vera\) and block_0/attn/value/kernel \(lora\) hold different adapter types"),
  ]
  for rules, message in cases:
    theta = Reparam.from_config({"rules": rules}).from_dense(params, jax.random.key(0))
    with pytest.raises(UserError, match=message) as e:
      peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))
    assert "\n" not in str(e.value)
  _, params, _, _ = _gpt2(tmp_path / "g")
  rules = ((r"block_0/attn/key/kernel", "vera(rank=4)"),)
  theta = Reparam.from_config({"rules": rules}).from_dense(params, jax.random.key(0))
  with pytest.raises(UserError, match=r"PEFT's VeRA on the fused transformer.h.0.attn.c_attn"):
    peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))


# --- (IA)³ ------------------------------------------------------------------------------------

IA3_CASES = {
    "bert": (((r"block_\d+/attn/(key|value)/kernel", "ia3"),
              (r"block_\d+/mlp/fc_out/kernel", "ia3(side=input)")),
             {"attention.self.key.bias": slice(None), "attention.self.value.bias": slice(None)}),
    # key and value are c_attn's columns 32:96 (l = 1 on the query's, whose bias stays)
    "gpt2": (((r"block_\d+/attn/(key|value)/kernel", "ia3"),
              (r"block_\d+/mlp/fc_out/kernel", "ia3(side=input)")),
             {"attn.c_attn.bias": slice(32, 96)}),
    "llama": (((r"block_\d+/attn/(key|value)/kernel", "ia3"),
               (r"block_\d+/mlp/fc_out/kernel", "ia3(side=input)")), None),
}


@pytest.mark.parametrize("family", list(IA3_CASES))
def test_ia3_export_loads_in_peft_with_equal_outputs(tmp_path, family):
  rules, zero = IA3_CASES[family]
  config, tensors = _check(family, tmp_path, rules, zero)
  assert config["peft_type"] == "IA3"
  assert len(config["feedforward_modules"]) == 2  # fc_out of each of the two layers
  assert set(config["feedforward_modules"]) <= set(config["target_modules"])
  if family == "gpt2":
    l = tensors["base_model.model.transformer.h.0.attn.c_attn.ia3_l"]
    assert l.shape == (96, 1) and np.all(l[:32] == 1) and not np.all(l[32:] == 1)


def test_ia3_that_peft_cannot_hold_is_a_user_error(tmp_path):
  from reparam_jax.reparam import Reparam
  _, params, _, _ = _gpt2(tmp_path)
  cases = [
      (((r"block_0/attn/value/kernel", "ia3"),),
       r"ia3\(side=output\) on a layer with a non-zero bias computes x W₀ ⊙ l \+ b"),
      (((r"block_0/mlp/fc_out/kernel", "ia3(side=input)"),
        (r"block_0/attn/query/kernel", "ia3(side=input)")),
       r"ia3\(side=input\) on part of the fused transformer.h.0.attn.c_attn"),
  ]
  for rules, message in cases:
    theta = Reparam.from_config({"rules": rules}).from_dense(params, jax.random.key(0))
    with pytest.raises(UserError, match=message) as e:
      peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))
    assert "\n" not in str(e.value)


# --- import -----------------------------------------------------------------------------------

def test_peft_ia3_adapter_imports_with_equal_logits(tmp_path):
  """PEFT's IA3 on GPT-2's c_attn (output, biased: our bias becomes l ⊙ b) and mlp.c_proj
  (feedforward input)."""
  model, params, cfg, heads = _gpt2(tmp_path)
  wrapped = peft.get_peft_model(model, peft.IA3Config(
      target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"])).eval()
  torch.manual_seed(2)
  with torch.no_grad():
    for name, p in wrapped.named_parameters():
      if "ia3_l" in name:
        p.copy_(1 + 0.3 * torch.randn_like(p))
  wrapped.save_pretrained(str(tmp_path / "theirs"))
  theta, rules = peft_io.import_peft_adapter(str(tmp_path / "theirs"), params)
  assert sorted(s for _, s in rules) == ["ia3", "ia3(side=input)"]
  ids = test_peft_gpt2._ids(cfg)
  test_peft_gpt2._close(test_peft_gpt2._ours(theta, rules, cfg, heads, ids),
                        test_peft_gpt2._theirs(wrapped, ids))
  l = safetensors_numpy.load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))[
      "base_model.model.transformer.h.1.attn.c_attn.ia3_l"][:, 0]
  np.testing.assert_array_equal(theta["block_1"]["attn"]["key"]["kernel"]["ia3_l"], l[32:64])
  np.testing.assert_array_equal(theta["block_1"]["attn"]["key"]["bias"],
                                params["block_1"]["attn"]["key"]["bias"] * l[32:64])


def test_vera_export_imports_back_and_peft_own_pair_is_refused(tmp_path):
  model, params, cfg, heads = _gpt2(tmp_path)
  rules = VERA_CASES["gpt2"]
  theta = _randomized(params, rules)
  peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "ours"))
  again, again_rules = peft_io.import_peft_adapter(str(tmp_path / "ours"), params)
  assert again_rules == ((r"block_\d+/(attn/out|mlp/fc_in)/kernel",
                          "vera(rank=5, d_initial=0.5, seed=0, fan_in=32)"),)
  for path in ("attn", "out"), ("mlp", "fc_in"):
    for leaf in ("vera_d", "vera_b"):
      np.testing.assert_array_equal(again["block_1"][path[0]][path[1]]["kernel"][leaf],
                                    theta["block_1"][path[0]][path[1]]["kernel"][leaf])
  ids = test_peft_gpt2._ids(cfg)
  np.testing.assert_array_equal(test_peft_gpt2._ours(again, again_rules, cfg, heads, ids),
                                test_peft_gpt2._ours(theta, rules, cfg, heads, ids))
  peft.get_peft_model(model, peft.VeraConfig(r=4, target_modules=["c_fc"],
                                             save_projection=True)).save_pretrained(
      str(tmp_path / "theirs"))
  with pytest.raises(UserError, match="not a projection pair this project generates"):
    peft_io.import_peft_adapter(str(tmp_path / "theirs"), params)
