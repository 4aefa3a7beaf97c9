"""The Llama family (Llama 2/3, Qwen 2, Mistral) against `transformers`: logits, cached
greedy decoding, the export `from_pretrained` loads, and the presets' parameter counts."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import hf_refs  # noqa: E402

from reparam_jax import convert_hf, export_hf  # noqa: E402
from reparam_jax.errors import UserError  # noqa: E402
from reparam_jax.generation.decode import Sampling  # noqa: E402
from reparam_jax.generation.text import sample_run  # noqa: E402
from reparam_jax.hf import importer  # noqa: E402
from reparam_jax.hf.common import flatten  # noqa: E402
from reparam_jax.models import PRESETS, Transformer, TransformerConfig  # noqa: E402
from tests.helpers import greedy_cached  # noqa: E402

_TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rms_norm_eps=1e-5)
# Each case a family and the options it brings: grouped-query attention everywhere, tied
# and untied output layers, the three RoPE scalings, biases, a sliding window shorter than
# the test sequences, multi-query attention and a head width of its own.
CASES = {
    "llama3": ("LlamaForCausalLM", dict(
        _TINY, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama_linear_bias": ("LlamaForCausalLM", dict(
        _TINY, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        rope_scaling=dict(rope_type="linear", factor=2.0))),
    "llama_mqa_head_dim": ("LlamaForCausalLM", dict(
        _TINY, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)),
    "qwen2_yarn": ("Qwen2ForCausalLM", dict(
        _TINY, tie_word_embeddings=True, rope_theta=1e6,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
    "mistral_window": ("MistralForCausalLM", dict(
        _TINY, sliding_window=5, tie_word_embeddings=False)),
}


def _hf_model(case: str, seed: int = 0, **changes):
  cls_name, fields = CASES[case]
  torch.manual_seed(seed)
  config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
  config = config_cls(**{**fields, **changes})
  config._attn_implementation = "eager"  # the sliding window is honoured by every kernel
  model = getattr(transformers, cls_name)(config).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():  # norms start at 1 and biases at 0: a swapped one would not show
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn(p.shape, generator=g))
  return model


def _saved(case: str, folder) -> tuple:
  model = _hf_model(case)
  hf_refs.save_model(model, str(folder))
  return model, str(folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_logits_equal_transformers(tmp_path, case):
  model, folder = _saved(case, tmp_path / "hf")
  params, cfg, heads, source = importer.import_folder(folder)
  assert source["family"] == model.config.model_type and not heads
  ids = hf_refs.random_ids(cfg.vocab_size, 2, 12)
  with torch.no_grad():
    want = model(torch.from_numpy(ids)).logits.numpy()
  got = Transformer(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32))["logits"]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama3", "mistral_window"])
def test_cached_greedy_decoding_equals_generate(tmp_path, case):
  """Grouped-query heads in the cache, the sliding window over cache slots."""
  model, folder = _saved(case, tmp_path / "hf")
  params, cfg, _, _ = importer.import_folder(folder)
  prompt = hf_refs.random_ids(cfg.vocab_size, 2, 5, seed=3)
  model.generation_config.eos_token_id = None  # eight tokens, whichever they are
  with torch.no_grad():
    want = model.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False,
                          pad_token_id=0).numpy()[:, 5:]
  got, _ = greedy_cached(Transformer(cfg), params, jnp.asarray(prompt, jnp.int32), 8)
  np.testing.assert_array_equal(got, want)
  cache = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                decode=True)["cache"]
  key_shape = cache["block_0"]["attn"]["cached_key"].shape
  assert key_shape == (1, 8, cfg.kv_heads, cfg.head_dim)  # key/value heads only


def test_sample_decodes_a_folder_and_its_conversion_and_stops_where_generate_stops(
    tmp_path, raw_data_dir):
  """`sample` on a Hugging Face Llama folder with its own tokenizer, and on its convert_hf
  output: transformers' greedy tokens, ending at generation_config.json's eos_token_id."""
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    text = f.read()[:200_000]
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text], vocab_size=300, special_tokens=["<|end_of_text|>"])
  model = _hf_model("llama3", vocab_size=bpe.get_vocab_size())
  folder = str(tmp_path / "hf")
  hf_refs.save_model(model, folder)
  bpe.save(os.path.join(folder, "tokenizer.json"))
  prompt = bpe.encode("ROMEO:").ids
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    free = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                          pad_token_id=0)[0, len(prompt):].tolist()
  stop = free[4]
  ends = free.index(stop) + 1  # generate stops after the first stop token
  with open(os.path.join(folder, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": [stop, bpe.token_to_id("<|end_of_text|>")]}, f)
  want = "ROMEO:" + bpe.decode(free[:ends], skip_special_tokens=False)
  convert_hf.convert(folder, str(tmp_path / "ckpt"))
  for where in (folder, str(tmp_path / "ckpt")):
    assert sample_run(where, ["ROMEO:"], 12, Sampling(temperature=0.0)) == [want], where
  everything = "ROMEO:" + bpe.decode(free, skip_special_tokens=False)
  never = next(i for i in range(bpe.get_vocab_size()) if i not in free)
  assert sample_run(folder, ["ROMEO:"], 12, Sampling(temperature=0.0),
                    stop_token_ids=[never]) == [everything]  # given stop tokens win
  export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
  assert transformers.GenerationConfig.from_pretrained(str(tmp_path / "out")).eos_token_id == [
      stop, bpe.token_to_id("<|end_of_text|>")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_loads_in_transformers_and_round_trips(tmp_path, case):
  model, folder = _saved(case, tmp_path / "hf")
  convert_hf.convert(folder, str(tmp_path / "ckpt"))
  export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), max_shard_bytes=20_000)
  assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")  # sharded
  cls_name = CASES[case][0]
  loaded = getattr(transformers, cls_name).from_pretrained(str(tmp_path / "out"))
  want, got = model.state_dict(), loaded.state_dict()
  assert set(want) == set(got)
  for name in want:
    assert torch.equal(want[name], got[name]), name
  assert loaded.config.architectures == [cls_name]
  for field in ("num_key_value_heads", "tie_word_embeddings", "sliding_window"):
    assert getattr(loaded.config, field, None) == getattr(model.config, field, None), field
  head_dim = lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads  # noqa: E731
  assert head_dim(loaded.config) == head_dim(model.config)
  assert loaded.config.rope_parameters == model.config.rope_parameters
  first, _, _, _ = importer.import_folder(folder)
  again, _, _, _ = importer.import_folder(str(tmp_path / "out"))
  a, b = flatten(first), flatten(again)
  assert set(a) == set(b)
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def test_unsupported_options_are_one_line_errors(tmp_path):
  _, folder = _saved("llama3", tmp_path / "hf")
  config_path = os.path.join(folder, "config.json")
  with open(config_path) as f:
    base = json.load(f)
  for changes, message in [
      ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
      ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}, "rope_parameters": None},
       "rope_scaling type 'longrope' is not supported"),
      ({"attention_bias": True}, "attention_bias=True with mlp_bias=False is not supported")]:
    with open(config_path, "w") as f:
      json.dump({**base, **changes}, f)
    with pytest.raises(UserError, match=message):
      importer.import_folder(folder)


# The published config.json fields of each preset's model (the architecture part).
PUBLISHED = {
    "smollm2_135m": ("LlamaForCausalLM", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)),
    "smollm2_360m": ("LlamaForCausalLM", dict(
        vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)),
    "qwen2_5_0_5b": ("Qwen2ForCausalLM", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False)),
    "llama3_2_1b": ("LlamaForCausalLM", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, head_dim=64,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "llama3_1_8b": ("LlamaForCausalLM", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "llama3_1_70b": ("LlamaForCausalLM", dict(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192))),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_are_the_published_models(preset):
  """The preset is what our importer makes of the published config.json, and its
  parameter count is transformers' own (counted on the meta device: no memory)."""
  cls_name, fields = PUBLISHED[preset]
  config = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))(**fields)
  hf_dict = config.to_dict()
  cfg, _ = importer.architecture(hf_dict, {}, "config.json")
  assert cfg == TransformerConfig(**PRESETS[preset])
  with torch.device("meta"):
    hf_params = sum(p.numel() for p in getattr(transformers, cls_name)(config).parameters())
  shapes = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0),
                                                        jnp.zeros((1, 4), jnp.int32)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert ours == hf_params


# --- PEFT adapters on the Llama family -------------------------------------------------------

LLAMA_ALL = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|gate|out))/kernel"


def _logits(params, rules, cfg, ids):
  from reparam_jax.reparam import Reparam  # noqa: PLC0415
  model = Reparam.from_config({"rules": rules}).wrap(Transformer(cfg))
  return np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32))["logits"])


@pytest.mark.parametrize("case,spec", [("llama3", "lora(rank=4, alpha=8)"),
                                       ("qwen2_yarn", "lora(rank=2, alpha=4, rslora=True)"),
                                       ("mistral_window", "lora(rank=3, alpha=6)|magnitude")])
def test_peft_adapters_both_ways_with_equal_logits(tmp_path, monkeypatch, case, spec):
  """Ours on every projection (q … down_proj), loaded by the real `peft`; `peft`'s on
  q/v/gate, loaded here; the same logits as PEFT's model both ways."""
  peft = pytest.importorskip("peft")
  from reparam_jax.hf import peft as peft_io  # noqa: PLC0415
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  model, folder = _saved(case, tmp_path / "hf")
  params, cfg, _, _ = importer.import_folder(folder)
  ids = hf_refs.random_ids(cfg.vocab_size, 2, 10, seed=4)
  rules = ((LLAMA_ALL, spec),)
  theta = hf_refs.random_adapters(params, rules)
  summary = peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "ours"))
  assert summary["modules"] == 7 * cfg.num_layers
  assert sorted(summary["config"]["target_modules"]) == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "ours")).eval()
  with torch.no_grad():
    want = loaded(torch.from_numpy(ids)).logits.numpy()
  np.testing.assert_allclose(_logits(theta, rules, cfg, ids), want, atol=1e-4, rtol=1e-4)

  base = _hf_model(case)
  torch.manual_seed(5)
  wrapped = peft.get_peft_model(base, peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"],
      init_lora_weights=False, use_dora="magnitude" in spec)).eval()
  wrapped.save_pretrained(str(tmp_path / "theirs"))
  theirs, their_rules = peft_io.import_peft_adapter(str(tmp_path / "theirs"), params)
  with torch.no_grad():
    want = wrapped(torch.from_numpy(ids)).logits.numpy()
  np.testing.assert_allclose(_logits(theirs, their_rules, cfg, ids), want, atol=1e-4, rtol=1e-4)
  peft_io.export_peft_adapter(theirs, {"rules": their_rules}, str(tmp_path / "again"))
  import safetensors.numpy  # noqa: PLC0415
  a = safetensors.numpy.load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
  b = safetensors.numpy.load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
