"""Gemma (v1) against `transformers`: logits, cached greedy decoding, the export
`from_pretrained` loads, the norm fold's round trip, PEFT adapters both ways, and the
gemma_2b preset's parameter count."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_refs  # noqa: E402

from reparam_jax import convert_hf, export_hf  # noqa: E402
from reparam_jax.errors import UserError  # noqa: E402
from reparam_jax.hf import importer  # noqa: E402
from reparam_jax.hf.common import flatten  # noqa: E402
from reparam_jax.models import PRESETS, Transformer, TransformerConfig  # noqa: E402
from tests.helpers import greedy_cached  # noqa: E402

# Weights ~ N(0, 0.2²), not transformers' 0.02: gate pre-activations of order 1, where the
# tanh GELU and the exact one differ by ~1e-3 in the logits (at 0.02 by < 1e-6).
_TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6,
             initializer_range=0.2)
# Multi-query attention with a head width of its own and the tied output layer (Gemma's
# default, gemma-2b's shape); grouped-query attention, an untied output layer and linear
# RoPE scaling.
CASES = {
    "mqa_head_dim": dict(_TINY, num_key_value_heads=1, head_dim=16),
    "gqa_untied_linear": dict(_TINY, num_key_value_heads=2, head_dim=8,
                              tie_word_embeddings=False, rope_theta=50000.0,
                              rope_scaling=dict(rope_type="linear", factor=2.0)),
}
_HALF_ULP_OF_ONE = 2.0 ** -24


def _hf_model(case: str, seed: int = 0, norms_dtype=torch.bfloat16, **changes):
  """A random GemmaForCausalLM.  Its norm weights (zeros at init: a dropped 1 + w would
  not show) are perturbed, rounded to `norms_dtype`: bfloat16 as published checkpoints
  store them, or float32."""
  torch.manual_seed(seed)
  config = transformers.GemmaConfig(**{**CASES[case], **changes})
  config._attn_implementation = "eager"
  model = transformers.GemmaForCausalLM(config).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_((0.1 * torch.randn(p.shape, generator=g)).to(norms_dtype).float())
  return model


def _saved(case: str, folder, **kwargs) -> tuple:
  model = _hf_model(case, **kwargs)
  hf_refs.save_model(model, str(folder))
  return model, str(folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_logits_equal_transformers(tmp_path, case):
  model, folder = _saved(case, tmp_path / "hf")
  params, cfg, heads, source = importer.import_folder(folder)
  assert source["family"] == "gemma" and not heads
  assert cfg.embed_scale and cfg.activation == "gelu" and cfg.gelu_approximate
  ids = hf_refs.random_ids(cfg.vocab_size, 2, 12)
  with torch.no_grad():
    want = model(torch.from_numpy(ids)).logits.numpy()
  got = Transformer(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32))["logits"]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_cached_greedy_decoding_equals_generate(tmp_path):
  model, folder = _saved("mqa_head_dim", tmp_path / "hf")
  params, cfg, _, _ = importer.import_folder(folder)
  prompt = hf_refs.random_ids(cfg.vocab_size, 2, 5, seed=3)
  model.generation_config.eos_token_id = None  # eight tokens, whichever they are
  with torch.no_grad():
    want = model.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False,
                          pad_token_id=0).numpy()[:, 5:]
  got, _ = greedy_cached(Transformer(cfg), params, jnp.asarray(prompt, jnp.int32), 8)
  np.testing.assert_array_equal(got, want)


def _export(tmp_path, folder: str) -> str:
  convert_hf.convert(folder, str(tmp_path / "ckpt"))
  summary = export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"),
                             max_shard_bytes=20_000)
  assert summary["architecture"] == "GemmaForCausalLM"
  return str(tmp_path / "out")


def _assert_reimport_equal(folder: str, out: str) -> None:
  first, _, _, _ = importer.import_folder(folder)
  again, _, _, _ = importer.import_folder(out)
  a, b = flatten(first), flatten(again)
  assert set(a) == set(b)
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_loads_in_transformers_and_round_trips(tmp_path, case):
  """bfloat16-valued norm weights (the published checkpoints'): 1 + w and back is exact,
  so the whole round trip is bit-exact, logits included."""
  model, folder = _saved(case, tmp_path / "hf")
  out = _export(tmp_path, folder)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))  # sharded
  loaded = transformers.GemmaForCausalLM.from_pretrained(out, attn_implementation="eager")
  want, got = model.state_dict(), loaded.state_dict()
  assert set(want) == set(got)
  for name in want:
    assert torch.equal(want[name], got[name]), name
  assert loaded.config.architectures == ["GemmaForCausalLM"]
  for field in ("num_key_value_heads", "tie_word_embeddings", "head_dim", "hidden_act",
                "rms_norm_eps", "rope_parameters"):
    assert getattr(loaded.config, field) == getattr(model.config, field), field
  ids = torch.from_numpy(hf_refs.random_ids(model.config.vocab_size, 2, 12))
  with torch.no_grad():  # the same attention kernel as `model`: the same sums, bit for bit
    assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)
  _assert_reimport_equal(folder, out)


def test_float32_norm_weights_round_trip_within_half_an_ulp_of_one(tmp_path):
  """float32 norm weights: import stores float32 1 + w, which rounds w's low bits away
  when |w| < 1, so HF → ours → HF gives each w back within 2⁻²⁴ (every other tensor
  bit-exact); ours → HF → ours is bit-exact (scale − 1 is exact for scale ≥ ½)."""
  model, folder = _saved("mqa_head_dim", tmp_path / "hf", norms_dtype=torch.float32)
  out = _export(tmp_path, folder)
  loaded = transformers.GemmaForCausalLM.from_pretrained(out)
  want, got = model.state_dict(), loaded.state_dict()
  for name in want:
    if "norm" in name:
      assert (got[name] - want[name]).abs().max().item() <= _HALF_ULP_OF_ONE, name
    else:
      assert torch.equal(want[name], got[name]), name
  _assert_reimport_equal(folder, out)


def test_unsupported_options_are_one_line_errors(tmp_path):
  _, folder = _saved("mqa_head_dim", tmp_path / "hf")
  config_path = os.path.join(folder, "config.json")
  with open(config_path) as f:
    base = json.load(f)
  for changes, message in [
      ({"hidden_act": "silu"}, "hidden_act='silu' is not supported"),
      ({"hidden_activation": "relu"}, "hidden_activation='relu' is not supported"),
      ({"attention_bias": True}, "attention_bias=true is not supported for gemma"),
      ({"use_bidirectional_attention": True}, "use_bidirectional_attention=true is not"),
      ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]},
       "model_type 'gemma2' is not supported"),
      ({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]},
       "model_type 'gemma3_text' is not supported"),
      ({"architectures": ["Gemma2ForCausalLM"]},
       "architecture Gemma2ForCausalLM is not supported; supported: GemmaForCausalLM")]:
    with open(config_path, "w") as f:
      json.dump({**base, **changes}, f)
    with pytest.raises(UserError, match=message) as error:
      importer.import_folder(folder)
    assert "\n" not in str(error.value)
  # google/gemma-2b's own config.json: the legacy "gelu" next to transformers 4's field.
  with open(config_path, "w") as f:
    json.dump({**base, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}, f)
  _, cfg, _, _ = importer.import_folder(folder)
  assert cfg.activation == "gelu" and cfg.gelu_approximate


def test_gemma_2b_preset_is_the_published_model():
  """The preset is what the importer makes of google/gemma-2b's config.json, with
  transformers' parameter count (counted on the meta device: no memory)."""
  import jax  # noqa: PLC0415
  config = transformers.GemmaConfig(
      vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
      num_attention_heads=8, num_key_value_heads=1, head_dim=256,
      max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
      hidden_act="gelu", tie_word_embeddings=True)
  cfg, _ = importer.architecture(config.to_dict(), {}, "config.json")
  assert cfg == TransformerConfig(**PRESETS["gemma_2b"])
  with torch.device("meta"):
    hf_params = sum(p.numel() for p in transformers.GemmaForCausalLM(config).parameters())
  shapes = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0),
                                                        jnp.zeros((1, 4), jnp.int32)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert ours == hf_params == 2_506_172_416


GEMMA_ALL = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|gate|out))/kernel"


def _logits(params, rules, cfg, ids):
  from reparam_jax.reparam import Reparam  # noqa: PLC0415
  model = Reparam.from_config({"rules": rules}).wrap(Transformer(cfg))
  return np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32))["logits"])


def test_peft_adapters_both_ways_with_equal_logits(tmp_path, monkeypatch):
  """Ours on every projection, loaded by the real `peft` onto a GemmaForCausalLM; `peft`'s
  on q/v/gate, loaded here: the Llama table's module names serve Gemma."""
  peft = pytest.importorskip("peft")
  from reparam_jax.hf import peft as peft_io  # noqa: PLC0415
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  model, folder = _saved("gqa_untied_linear", tmp_path / "hf")
  params, cfg, _, _ = importer.import_folder(folder)
  ids = hf_refs.random_ids(cfg.vocab_size, 2, 10, seed=4)
  rules = ((GEMMA_ALL, "lora(rank=4, alpha=8)"),)
  theta = hf_refs.random_adapters(params, rules)
  summary = peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "ours"))
  assert summary["modules"] == 7 * cfg.num_layers
  loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "ours")).eval()
  with torch.no_grad():
    want = loaded(torch.from_numpy(ids)).logits.numpy()
  np.testing.assert_allclose(_logits(theta, rules, cfg, ids), want, atol=1e-4, rtol=1e-4)

  base = _hf_model("gqa_untied_linear")
  torch.manual_seed(5)
  wrapped = peft.get_peft_model(base, peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"],
      init_lora_weights=False)).eval()
  wrapped.save_pretrained(str(tmp_path / "theirs"))
  theirs, their_rules = peft_io.import_peft_adapter(str(tmp_path / "theirs"), params)
  with torch.no_grad():
    want = wrapped(torch.from_numpy(ids)).logits.numpy()
  np.testing.assert_allclose(_logits(theirs, their_rules, cfg, ids), want, atol=1e-4, rtol=1e-4)
