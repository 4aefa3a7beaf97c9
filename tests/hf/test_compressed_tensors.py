"""The compressed-tensors format (hf/compressed_tensors.py): `packed` kernels exported as
pack-quantized weights and read back here; against the compressed-tensors package (its
compressor's bytes, its decompression, transformers' `from_pretrained` with it) in the
peer leg."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tokenizers

from reparam_jax import convert_hf, export_hf, sample, train
from reparam_jax.errors import UserError
from reparam_jax.hf import compressed_tensors as ct_format
from reparam_jax.hf import exporter, importer, pretrained
from reparam_jax.hf.common import flatten, unflatten
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.transforms import packed
from reparam_jax.rundir import checkpoint
from tests.helpers import tiny_args

LLAMA = {"vocab_size": 97, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "embed_dim": 64,
         "mlp_dim": 128, "max_len": 32, "norm": "rms", "activation": "silu", "mlp_gated": True,
         "rope": True, "use_bias": False, "tie_embeddings": False, "layer_norm_eps": 1e-5,
         "causal": True}
ALL = r"block_\d+/(attn|mlp)/\w+/kernel"
ATTN = r"block_\d+/attn/\w+/kernel"
# (kernels, spec): symmetric 4 and 8 bits, asymmetric, 3 bits with one group over d_in
# (compressed-tensors' "channel"), and the MLP left dense (listed in `ignore`).
CASES = {"w4g32_sym": (ALL, "packed(bits=4, group=32, sym=True)"),
         "w8g32_sym": (ALL, "packed(bits=8, group=32, sym=True)"),
         "w4g32_asym": (ALL, "packed(bits=4, group=32)"),
         "w3_channel_sym": (ALL, "packed(bits=3, group=0, sym=True)"),
         "w2g16_asym_attn_only": (ATTN, "packed(bits=2, group=16)")}


def _run_folder(tmp_path, kernels: str, spec: str, seed: int = 0, **changes):
  """A compress output as `compress` writes one (the run's config.json, params/): its
  kernels `packed`; (folder, θ params, rules, model config)."""
  cfg = TransformerConfig(**{**LLAMA, **changes})
  params = flax.linen.meta.unbox(Transformer(cfg).init(
      jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
  rules = ((kernels, spec),)
  theta = Reparam.from_config({"rules": rules}).from_dense(params)
  folder = tmp_path / "run"
  os.makedirs(folder)
  checkpoint.save_params(str(folder / "params"), theta)
  (folder / "config.json").write_text(json.dumps(
      {"model": importer.model_section(cfg), "reparam": {"rules": [list(r) for r in rules]}}))
  return str(folder), theta, rules, cfg


def _ids(cfg, seed=1):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)


def _our_logits(theta, rules, cfg, ids):
  model = Reparam.from_config({"rules": rules}).wrap(Transformer(cfg))
  return np.asarray(model.apply({"params": theta}, jnp.asarray(ids))["logits"])


def _export(tmp_path, case):
  folder, theta, rules, cfg = _run_folder(tmp_path, *CASES[case])
  out = str(tmp_path / "ct")
  export_hf.main([f"--workdir={folder}", f"--to={out}", "--format=compressed-tensors"])
  return out, theta, rules, cfg


def test_bit_streams_round_trip():
  rng = np.random.default_rng(0)
  for bits in (2, 3, 4, 8):
    for cols in (1, 7, 32, 45, 96):
      codes = rng.integers(0, 2 ** bits, (5, cols)).astype(np.uint8)
      words = ct_format.words_from_codes(codes, bits)
      assert words.dtype == np.int32 and words.shape == (5, -(-cols * bits // 32))
      np.testing.assert_array_equal(ct_format.codes_from_words(words, bits, cols), codes)
  # element i at bits [i·bits, (i+1)·bits) of the little-endian stream: 3-bit codes 1, 2, 3
  # are 0b011_010_001
  assert ct_format.words_from_codes(np.array([[1, 2, 3]], np.uint8), 3)[0, 0] == 0b011010001


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_imports_back_to_the_same_theta_and_logits(tmp_path, case):
  out, theta, rules, cfg = _export(tmp_path, case)
  with open(os.path.join(out, "config.json")) as f:
    hf = json.load(f)
  q = hf["quantization_config"]
  assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
  targets = [t for g in q["config_groups"].values() for t in g["targets"]]
  assert len(targets) == (7 if CASES[case][0] == ALL else 4)
  assert "lm_head" in q["ignore"]
  assert ("model.layers.0.mlp.down_proj" in q["ignore"]) == (CASES[case][0] == ATTN)
  tensors = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  assert tensors["model.layers.0.self_attn.o_proj.weight_packed"].dtype == np.int32
  assert "model.layers.0.self_attn.o_proj.weight" not in tensors

  ours = flatten(theta)
  got = ct_format.packed_params(out)  # the θ read back: the same bytes, scales, zeros
  assert len(got) == len(targets)
  for path, (node, t) in got.items():
    assert node == Reparam.from_config({"rules": rules}).plan.match(path).node
    for key, value in t.items():
      np.testing.assert_array_equal(value, np.asarray(ours[f"{path}/{key}"]), err_msg=path)
    np.testing.assert_array_equal(  # what the import dequantizes: what `packed` computes with
        ct_format.dequantize(node, t), packed.PackedKernel(t, node.bits, node.group).dense())

  # convert_hf / init_from: the dense dequantized weights, the source model's logits
  params, cfg2, _, _ = importer.import_folder(out)
  ids = _ids(cfg)
  got_logits = Transformer(cfg2).apply({"params": params}, jnp.asarray(ids))["logits"]
  np.testing.assert_allclose(np.asarray(got_logits), _our_logits(theta, rules, cfg, ids),
                             atol=1e-5, rtol=1e-5)


def test_an_imported_compressed_folder_exports_dense(tmp_path):
  """convert_hf of the export, then the default export: dense weights, no quantization_config."""
  out, theta, rules, cfg = _export(tmp_path, "w4g32_asym")
  convert_hf.convert(out, str(tmp_path / "ckpt"))
  export_hf.main([f"--workdir={tmp_path / 'ckpt'}", f"--to={tmp_path / 'dense'}"])
  with open(tmp_path / "dense" / "config.json") as f:
    assert "quantization_config" not in json.load(f)
  params, cfg2, _, _ = importer.import_folder(str(tmp_path / "dense"))
  ids = _ids(cfg)
  got = Transformer(cfg2).apply({"params": params}, jnp.asarray(ids))["logits"]
  np.testing.assert_allclose(np.asarray(got), _our_logits(theta, rules, cfg, ids),
                             atol=1e-5, rtol=1e-5)


def test_what_the_format_cannot_hold_is_refused(tmp_path):
  for name, spec, error in (
      ("sparse", "sparse24", r"block_0/attn/\w+/kernel: 'sparse24' is 2:4 sparsity"),
      ("lora", "packed(bits=4, group=32)|lora(rank=2)", "packed kernel under another transform"),
      ("plain", "lora(rank=2)", "has no packed kernels")):
    os.makedirs(tmp_path / name)
    folder, _, _, _ = _run_folder(tmp_path / name, ATTN, spec)
    with pytest.raises(UserError, match=error):
      ct_format.export(folder, str(tmp_path / name / "out"))
  os.makedirs(tmp_path / "gpt2")
  folder, _, _, _ = _run_folder(tmp_path / "gpt2", ATTN, "packed(bits=4, group=32)",
                                norm="layer", activation="gelu", mlp_gated=False, rope=False,
                                use_bias=True, tie_embeddings=True, num_kv_heads=0)
  with pytest.raises(UserError, match="does not export as the Llama family"):
    ct_format.export(folder, str(tmp_path / "gpt2" / "out"))
  assert not os.path.exists(tmp_path / "gpt2" / "out")  # refused before anything is written


# --- starting a run packed (init_from) ---------------------------------------------------------

def _start(folder, rules, cfg, seed=0):
  """What the trainer does with init_from=folder (training/loop.py): the params the run's
  θ is loaded from, before the checkpoint's leaves are placed on the model's."""
  rp = Reparam.from_config({"rules": rules})
  key = jax.random.fold_in(jax.random.key(seed), 2)
  model_params = jax.eval_shape(lambda: rp.wrap(Transformer(cfg)).init(
      jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
  loaded = ct_format.adopt_packed(pretrained.load_params(folder, keep_packed=True), rp.plan,
                                  key, folder)
  return rp.adopt_dense(loaded, model_params, key)


def _count_dequantized(monkeypatch):
  calls = []
  real = ct_format.dequantize
  monkeypatch.setattr(ct_format, "dequantize", lambda *a: calls.append(a) or real(*a))
  return calls


@pytest.mark.parametrize("case,adapter", [("w4g32_asym", "|lora(rank=2)"),
                                          ("w3_channel_sym", "")])
def test_init_from_a_compressed_folder_keeps_its_bytes_as_theta(tmp_path, monkeypatch, case,
                                                                adapter):
  """Rules that store the kernels packed as the folder does (alone, or under LoRA): θ is the
  folder's codes, scales and zeros bit for bit, never dequantized on the way; the model
  computes with the W that decompress gives, and LoRA starts as from a dense folder."""
  out, _, _, cfg = _export(tmp_path, case)
  kernels, spec = CASES[case]
  rules = ((kernels, spec + adapter),)
  folder_theta = ct_format.packed_params(out)
  dense, _, _, _ = importer.import_folder(out)  # decompress's dequantized weights
  dequantized = _count_dequantized(monkeypatch)
  got = flatten(_start(out, rules, cfg))
  assert not dequantized  # no dense copy of a packed kernel in between
  base = "/base" if adapter else ""
  for path, (node, t) in folder_theta.items():
    for key, value in t.items():
      ours = got[f"{path}{base}/{key}"]
      assert ours.dtype == value.dtype, (path, key)
      np.testing.assert_array_equal(ours, value, err_msg=f"{path}/{key}")
    w = packed.PackedKernel({k: jnp.asarray(v) for k, v in t.items()}, node.bits,
                            node.group).dense()
    np.testing.assert_array_equal(np.asarray(w), flatten(dense)[path], err_msg=path)
  if adapter:  # A from the seed at the path's key, B = 0, as Reparam.adopt_dense draws them
    lora = flatten(_start(out, ((kernels, "lora(rank=2)"),), cfg))
    for path in folder_theta:
      np.testing.assert_array_equal(got[f"{path}/lora_a"], lora[f"{path}/lora_a"])
      assert not np.any(got[f"{path}/lora_b"])
  ids = _ids(cfg)
  want = Transformer(cfg).apply({"params": dense}, jnp.asarray(ids))["logits"]
  np.testing.assert_allclose(_our_logits(unflatten(got), rules, cfg, ids), want,
                             atol=1e-5, rtol=1e-5)


def test_init_from_refuses_rules_the_folder_does_not_match(tmp_path):
  """bits, group, sym or a dense layer that differ from the rule: one line naming the layer
  and both settings (the same rules on a folder without quantization_config: quantized when
  the run starts, as before)."""
  out, _, _, cfg = _export(tmp_path, "w4g32_asym")
  q = r"block_0/attn/query/kernel \(model.layers.0.self_attn.q_proj\) is "
  folder = r"packed\(bits=4, group=32, sym=False\) in the folder"
  for spec, rule in (("packed(bits=8, group=32)", r"packed\(bits=8, group=32, sym=False\)"),
                     ("packed(bits=4, group=16)", r"packed\(bits=4, group=16, sym=False\)"),
                     ("packed(bits=4, group=32, sym=True)|lora(rank=2)",
                      r"packed\(bits=4, group=32, sym=True\)")):
    with pytest.raises(UserError, match=f"{q}{folder} but rule .* stores it {rule}; give"):
      _start(out, ((ALL, spec),), cfg)
  with pytest.raises(UserError, match="lora.*init='pissa'.* rewrites the weight it wraps"):
    _start(out, ((ALL, "packed(bits=4, group=32)|lora(rank=2, init=pissa)"),), cfg)
  os.makedirs(tmp_path / "attn")  # the MLP dense in the folder, packed by the rule
  attn_only, _, _, _ = _export(tmp_path / "attn", "w2g16_asym_attn_only")
  with pytest.raises(UserError, match=r"block_0/mlp/fc_in/kernel is dense in the folder .* "
                                      r"stores it packed\(bits=2, group=16, sym=False\)"):
    _start(attn_only, ((ALL, "packed(bits=2, group=16)"),), cfg)
  # A rule with no packed stage gets the dequantized weights, as a dense folder's.
  dense_start = flatten(_start(out, ((ALL, "lora(rank=2)"),), cfg))
  dense, _, _, _ = importer.import_folder(out)
  for path, w in flatten(dense).items():
    np.testing.assert_array_equal(dense_start.get(f"{path}/base", dense_start.get(path)), w,
                                  err_msg=path)
  export_hf.main([f"--workdir={tmp_path / 'run'}", f"--to={tmp_path / 'plain'}"])  # dense
  theta = flatten(_start(str(tmp_path / "plain"), ((ALL, "packed(bits=8, group=32)"),), cfg))
  assert theta["block_0/attn/query/kernel/codes"].shape == (64, 64)  # RTN at 8 bits


def test_a_run_trains_lora_on_the_packed_base_of_a_compressed_folder(tmp_path, monkeypatch,
                                                                     raw_data_dir, tfds_dir):
  """train with init_from=<compressed-tensors folder> and `packed|lora` (QLoRA on the
  folder's own codes): the run's frozen base is the folder's bytes at the end, nothing
  dequantized on the way in; `sample` decodes from the run, and export_hf writes its
  merged model dense."""
  folder, _, _, _ = _run_folder(tmp_path, ALL, "packed(bits=4, group=32)", vocab_size=300)
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([f.read()[:20_000]], vocab_size=300,
                            special_tokens=["<|end_of_text|>"])
  bpe.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|end_of_text|>"}, f)
  out = str(tmp_path / "ct")
  export_hf.main([f"--workdir={folder}", f"--to={out}", "--format=compressed-tensors"])
  dequantized = _count_dequantized(monkeypatch)
  run = str(tmp_path / "train")
  args = tiny_args(run, raw_data_dir, tfds_dir, num_steps=2, eval_every=2, checkpoint_every=2,
                   seq_len=16, batch_size=8, init_from=out, **{
                       "finetune.freeze": "lora", "finetune.head_regex": "classifier",
                       "reparam.rules": repr(((ALL, "packed(bits=4, group=32)|lora(rank=2)"),))})
  for field in ("num_layers", "num_heads", "embed_dim", "mlp_dim", "rope"):  # from the folder
    args.append(f"--config.model.{field}=None")
  final = train.main(args)
  assert final["step"] == 2 and np.isfinite(final["eval/loss"])
  assert not dequantized
  theta = flatten(checkpoint.load_params(run))
  for path, (_, t) in ct_format.packed_params(out).items():
    for key, value in t.items():
      np.testing.assert_array_equal(theta[f"{path}/base/{key}"], value, err_msg=path)
    assert np.any(theta[f"{path}/lora_b"])  # trained

  texts = sample.main([f"--workdir={run}", "--prompt=ROMEO:", "--num_tokens=4",
                       "--temperature=0", "--stop_token_ids=0"])
  assert texts[0].startswith("ROMEO:")
  export_hf.main([f"--workdir={run}", f"--to={tmp_path / 'merged'}"])
  merged, _, _, _ = importer.import_folder(str(tmp_path / "merged"))
  dense, _, _, _ = exporter.load_for_export(run)  # the run's LoRA merged into the packed W₀
  for path, value in flatten(merged).items():
    np.testing.assert_array_equal(value, np.asarray(dense[path]), err_msg=path)


# --- against the compressed-tensors package (peer) ---------------------------------------------

def _scheme(node):
  from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationScheme,
  )
  strategy = {"strategy": "group", "group_size": node.group} if node.group else {
      "strategy": "channel"}
  return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
      num_bits=node.bits, type="int", symmetric=node.sym, **strategy))


@pytest.mark.peer
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_package_reads_the_export(tmp_path, case):
  """Each module's tensors equal the package's own `PackedQuantizationCompressor.compress`
  of the same weight, scales and zero points, and its `decompress` gives our W; symmetric,
  transformers' `from_pretrained` gives our logits.  (transformers 5.24 with
  compressed-tensors 0.20 cannot load an asymmetric pack-quantized folder, its own
  included: the packed zero points mismatch the shape it allocates; llm-compressor issue
  1618.)"""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("compressed_tensors")
  from compressed_tensors.compressors import PackedQuantizationCompressor
  out, theta, rules, cfg = _export(tmp_path, case)
  tensors = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  plan, flat = Reparam.from_config({"rules": rules}).plan, flatten(theta)
  kernels = sorted({k.rsplit("/", 1)[0] for k in flat if k.endswith("/codes")})
  assert len(kernels) == (7 if CASES[case][0] == ALL else 4)
  for path in kernels:  # the run's own θ, not one read back through our reader
    node = plan.match(path).node
    t = {k: np.asarray(flat[f"{path}/{k}"]) for k in node.keys}
    layer, ours = ct_format._KERNEL.fullmatch(path).groups()
    module = f"model.layers.{layer}.{ct_format._PROJECTIONS[ours]}"
    w = np.asarray(packed.PackedKernel(t, node.bits, node.group).dense()).T  # torch [out, in]
    state = {"weight": torch.from_numpy(w.copy()),
             "weight_scale": torch.from_numpy(np.asarray(t["scales"]).T.copy())}
    if not node.sym:  # the package's zero points are signed: zeros − 2^(bits−1)
      zp = np.asarray(t["zeros"]).T.astype(np.int8) - np.int8(2 ** (node.bits - 1))
      state["weight_zero_point"] = torch.from_numpy(zp)
    theirs = PackedQuantizationCompressor.compress(dict(state), _scheme(node))
    for key in ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point"):
      assert (key in theirs) == (f"{module}.{key}" in tensors), (module, key)
      if key in theirs:
        np.testing.assert_array_equal(tensors[f"{module}.{key}"], theirs[key].numpy(),
                                      err_msg=f"{module}.{key}")
    back = PackedQuantizationCompressor.decompress(
        {k: torch.from_numpy(tensors[f"{module}.{k}"]) for k in theirs}, _scheme(node))
    np.testing.assert_array_equal(back["weight"].numpy(), w, err_msg=module)
  if not plan.rules[0].node.sym:
    return
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = _ids(cfg)
  with torch.no_grad():
    want = model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(want, _our_logits(theta, rules, cfg, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.peer
@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (4, 32, False), (3, 16, False),
                                            (8, 0, True)])
def test_a_folder_the_package_writes_imports_with_its_logits(tmp_path, bits, group, sym):
  """A Llama model quantized and compressed by compressed-tensors itself (its qparams, its
  `ModelCompressor`, `save_pretrained`): imported here, the logits of its own decompressed
  model (and of transformers' `from_pretrained`, symmetric)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("compressed_tensors")
  from compressed_tensors.compressors import ModelCompressor
  from compressed_tensors.quantization import (
    QuantizationConfig,
    apply_quantization_config,
  )
  from compressed_tensors.quantization.utils import calculate_qparams
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
      rms_norm_eps=1e-5, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(config).eval()
  node = packed.Packed(bits=bits, group=group, sym=sym)
  apply_quantization_config(model, QuantizationConfig(
      config_groups={"group_0": _scheme(node)}, ignore=["lm_head"]))
  for module in model.modules():
    if hasattr(module, "weight_scale"):  # min/max qparams, as llm-compressor's observer
      w = module.weight.data
      w = w.reshape(w.shape[0], -1, group) if group else w[:, None, :]
      scale, zero = calculate_qparams(w.amin(-1), w.amax(-1), module.quantization_scheme.weights)
      module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
      if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
  compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
  compressor.compress_model(model)
  folder = str(tmp_path / "theirs")
  model.save_pretrained(folder)
  compressor.update_config(folder)
  ids = _ids(TransformerConfig(**LLAMA))
  with torch.no_grad():  # the first forward decompresses (the package's hook)
    want = model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
  if sym:
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
      np.testing.assert_allclose(loaded(torch.from_numpy(ids.astype(np.int64))).logits.numpy(),
                                 want, atol=1e-5, rtol=1e-5)
  params, cfg, _, _ = importer.import_folder(folder)
  got = Transformer(cfg).apply({"params": params}, jnp.asarray(ids))["logits"]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
  thetas = ct_format.packed_params(folder)
  assert len(thetas) == 7 and all(n == node for n, _ in thetas.values())
  started = flatten(_start(folder, ((ALL, node.describe()),), cfg))  # init_from, packed rules
  for path, (_, t) in thetas.items():
    for key, value in t.items():
      np.testing.assert_array_equal(started[f"{path}/{key}"], value, err_msg=f"{path}/{key}")
