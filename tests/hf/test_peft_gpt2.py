"""PEFT LoRA / rsLoRA / DoRA adapters on GPT-2, both ways, against the real `peft`: its fused
`c_attn` Conv1D (fan_in_fan_out) splits into our query/key/value adapters, and ours are
written as one c_attn adapter in block form; float32 logits equal to within 1e-4."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import hf_refs
from test_import import GPT2_SIZES

from reparam_jax.errors import UserError
from reparam_jax.hf import importer
from reparam_jax.hf import peft as peft_io
from reparam_jax.reparam import Reparam

TOL = 1e-4
C_ATTN = "base_model.model.transformer.h.{i}.attn.c_attn"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _base(tmp_path):
  model = hf_refs.gpt2(**GPT2_SIZES["tiny"])
  params, cfg, heads, _ = importer.import_folder(hf_refs.save_model(model, str(tmp_path / "hf")))
  return model, params, cfg, heads


def _ids(cfg):
  return hf_refs.random_ids(cfg.vocab_size, 2, cfg.max_len, seed=3)


def _ours(params, rules, cfg, heads, ids):
  model = Reparam.from_config({"rules": rules}).wrap(importer.build_model(cfg, heads))
  return np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32))["logits"])


def _theirs(model, ids):
  with torch.no_grad():
    return model(torch.from_numpy(ids)).logits.numpy()


def _close(ours, theirs):
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).max() <= TOL


def _tensors(folder):
  return safetensors_numpy.load_file(str(folder / "adapter_model.safetensors"))


# --- import: peft's c_attn adapter split into query/key/value ---------------------------------

IMPORT_CASES = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_peft_gpt2_adapter_imports_with_equal_logits_and_exports_back(tmp_path, case):
  model, params, cfg, heads = _base(tmp_path)
  torch.manual_seed(5)
  wrapped = peft.get_peft_model(model, peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], init_lora_weights=False,
      rank_pattern={"h.1.mlp.c_fc": 2}, **IMPORT_CASES[case])).eval()
  with torch.no_grad():  # DoRA's m = ‖W‖ at creation; perturb it so it matters
    for name, p in wrapped.named_parameters():
      if "lora_magnitude_vector" in name:
        p.mul_(1 + 0.2 * torch.randn(p.shape))
  wrapped.save_pretrained(str(tmp_path / "theirs"))
  theta, rules = peft_io.import_peft_adapter(str(tmp_path / "theirs"), params)
  ids = _ids(cfg)
  _close(_ours(theta, rules, cfg, heads, ids), _theirs(wrapped, ids))

  # c_attn's A is each of query/key/value's; B's [3D] rows are theirs in order.
  theirs = _tensors(tmp_path / "theirs")
  a = theirs[f"{C_ATTN.format(i=0)}.lora_A.weight"]
  b = theirs[f"{C_ATTN.format(i=0)}.lora_B.weight"]
  d = cfg.embed_dim
  attn = theta["block_0"]["attn"]
  for j, name in enumerate(("query", "key", "value")):
    kernel = attn[name]["kernel"]
    lora = kernel["base"] if case == "dora" else kernel
    np.testing.assert_array_equal(lora["lora_a"], a.T)
    np.testing.assert_array_equal(lora["lora_b"], b[j * d:(j + 1) * d].T)
  # And back: the same folder, tensor for tensor (q/k/v sharing A are one c_attn adapter).
  peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "again"))
  again = _tensors(tmp_path / "again")
  assert set(again) == set(theirs)
  for key in theirs:
    np.testing.assert_array_equal(again[key], theirs[key], err_msg=key)
  config = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
  assert config["fan_in_fan_out"] is True and config["rank_pattern"] == {
      "transformer.h.1.mlp.c_fc": 2}


# --- export: our query/key/value adapters as one block-form c_attn adapter --------------------

EXPORT_CASES = {
    # different ranks and scales on q, k, v; attn/out and mlp too
    "lora": ((r"block_\d+/attn/query/kernel", "lora(rank=2, alpha=4)"),
             (r"block_\d+/attn/key/kernel", "lora(rank=3, alpha=3)"),
             (r"block_\d+/attn/value/kernel", "lora(rank=1, alpha=8)"),
             (r"block_\d+/(attn/out|mlp/fc_in|mlp/fc_out)/kernel", "lora(rank=2, alpha=4)")),
    "rslora": ((r"block_\d+/attn/(query|value)/kernel", "lora(rank=2, alpha=4, rslora=True)"),
               (r"block_1/attn/key/kernel", "lora(rank=3, alpha=5, rslora=True)")),
    # key unadapted: its magnitude block is ‖W₀_k‖ per column
    "dora": ((r"block_\d+/attn/query/kernel", "lora(rank=2, alpha=4)|magnitude"),
             (r"block_\d+/attn/value/kernel", "lora(rank=3, alpha=6)|magnitude"),
             (r"block_0/mlp/fc_out/kernel", "lora(rank=2, alpha=4)")),
    "query_only": ((r"block_\d+/attn/query/kernel", "lora(rank=4, alpha=8)"),),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_our_gpt2_adapters_load_in_peft_with_equal_logits_and_import_back(tmp_path, case):
  model, params, cfg, heads = _base(tmp_path)
  rules = EXPORT_CASES[case]
  theta = hf_refs.random_adapters(params, rules)
  summary = peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "ours"))
  loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "ours")).eval()
  ids = _ids(cfg)
  ours = _ours(theta, rules, cfg, heads, ids)
  _close(ours, _theirs(loaded, ids))
  config = summary["config"]
  tensors = _tensors(tmp_path / "ours")
  rank = {"lora": 6, "rslora": 2 + 2, "dora": 5, "query_only": 4}[case]
  assert tensors[f"{C_ATTN.format(i=0)}.lora_A.weight"].shape == (rank, cfg.embed_dim)
  assert tensors[f"{C_ATTN.format(i=0)}.lora_B.weight"].shape == (3 * cfg.embed_dim, rank)
  assert config["fan_in_fan_out"] is True
  if case == "lora":  # c_proj is attention's and the MLP's leaf name: short names suffice here
    assert config["target_modules"] == ["c_attn", "c_fc", "c_proj"]
  if case == "dora":  # mlp.c_proj of block 1 is not adapted: full names
    assert isinstance(config["target_modules"], str)

  # Import again: each block gets its own rank components back, the same θ products.
  again, again_rules = peft_io.import_peft_adapter(str(tmp_path / "ours"), params)
  _close(_ours(again, again_rules, cfg, heads, ids), ours)
  for i in range(cfg.num_layers):
    for name in ("query", "key", "value"):
      old = theta[f"block_{i}"]["attn"][name]["kernel"]
      new = again[f"block_{i}"]["attn"][name]["kernel"]
      if not isinstance(old, dict) and case != "dora":  # unadapted: stays W₀
        np.testing.assert_array_equal(new, old)
        continue
      if not isinstance(old, dict):  # DoRA keeps an unadapted block's ‖W₀‖ with B = 0
        assert not np.any(new["base"]["lora_b"])
        continue
      old_ab, new_ab = (old["base"], new["base"]) if "magnitude" in old else (old, new)
      np.testing.assert_array_equal(new_ab["lora_a"], old_ab["lora_a"])
      if name == "query":  # the fused scale is the query's: its B is written unchanged
        np.testing.assert_array_equal(new_ab["lora_b"], old_ab["lora_b"])
      if "magnitude" in old:
        np.testing.assert_array_equal(new["magnitude"], old["magnitude"])
  # key's and value's B carry sᵢ/s_q (alpha rescaled back): the same weights up to rounding.
  dense = Reparam.from_config({"rules": rules}).to_dense(theta)
  dense_again = Reparam.from_config({"rules": again_rules}).to_dense(again)
  for i in range(cfg.num_layers):
    for name in ("query", "key", "value"):
      np.testing.assert_allclose(dense_again[f"block_{i}"]["attn"][name]["kernel"],
                                 dense[f"block_{i}"]["attn"][name]["kernel"], rtol=1e-6,
                                 atol=1e-6)
  specs = {s for _, s in again_rules}
  if case == "query_only":
    assert again_rules == ((r"block_\d+/attn/query/kernel", "lora(rank=4, alpha=8)"),)
  if case == "lora":  # each block its own rank, at the query's scale 2 (fused c_attn's)
    assert specs == {"lora(rank=2, alpha=4)", "lora(rank=3, alpha=6)", "lora(rank=1, alpha=2)"}


def test_gpt2_query_key_value_become_one_block_matrix(tmp_path):
  """The written factors are exactly [A_q; A_k; A_v] and blockdiag(B_q, s_k/s_q·B_k, ...),
  with lora_alpha = alpha_q·R/r_q (PEFT's scale then is the query's)."""
  _, params, cfg, _ = _base(tmp_path)
  rules = EXPORT_CASES["lora"][:3]
  theta = hf_refs.random_adapters(params, rules)
  summary = peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "ours"))
  t = _tensors(tmp_path / "ours")
  a, b = t[f"{C_ATTN.format(i=1)}.lora_A.weight"], t[f"{C_ATTN.format(i=1)}.lora_B.weight"]
  attn = theta["block_1"]["attn"]
  q, k, v = (attn[n]["kernel"] for n in ("query", "key", "value"))
  np.testing.assert_array_equal(a, np.concatenate([q["lora_a"], k["lora_a"], v["lora_a"]], 1).T)
  d = cfg.embed_dim
  want_b = np.zeros((3 * d, 6), np.float32)
  want_b[:d, :2] = np.asarray(q["lora_b"]).T
  want_b[d:2 * d, 2:5] = np.asarray(k["lora_b"]).T * np.float32((3 / 3) / (4 / 2))
  want_b[2 * d:, 5:] = np.asarray(v["lora_b"]).T * np.float32((8 / 1) / (4 / 2))
  np.testing.assert_array_equal(b, want_b)
  assert summary["config"]["r"] == 6 and summary["config"]["lora_alpha"] == 12
  assert summary["modules"] == cfg.num_layers


def test_gpt2_adapter_of_another_width_is_a_user_error(tmp_path):
  model, _, _, _ = _base(tmp_path)
  wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["c_attn"]))
  wrapped.save_pretrained(str(tmp_path / "theirs"))
  odd = hf_refs.gpt2(**GPT2_SIZES["odd"])
  other, _, _, _ = importer.import_folder(hf_refs.save_model(odd, str(tmp_path / "odd")))
  with pytest.raises(UserError, match=r"do not fit parameters block_0/attn/query, block_0/attn/"
                                      r"key, block_0/attn/value \(fused, \[48, 144\] together\)"):
    peft_io.import_peft_adapter(str(tmp_path / "theirs"), other)
