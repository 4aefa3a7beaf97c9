"""T5 ↔ the EncoderDecoder: imported and exported models give transformers' logits (float32,
max |Δ| ≤ 1e-4), the round trip is exact, and the presets have t5-small's sizes."""

import json
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_refs  # noqa: E402

from reparam_jax import convert_hf, export_hf  # noqa: E402
from reparam_jax.errors import UserError  # noqa: E402
from reparam_jax.hf import importer, pretrained  # noqa: E402
from reparam_jax.hf.common import flatten, unflatten  # noqa: E402
from reparam_jax.models import PRESETS, TransformerConfig  # noqa: E402
from reparam_jax.models.seq2seq import EncoderDecoder  # noqa: E402
from reparam_jax.rundir import checkpoint  # noqa: E402

TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 97

# T5Config keywords.  "untied": the checkpoint gets its own lm_head.weight (transformers 5
# builds every T5 tied and unties only a checkpoint whose head differs from shared.weight).
HF_SIZES = {
    # v1.0: ReLU, tied head scaled by d^-½; 30 input positions reach the log-spaced buckets.
    "v1_0": dict(d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2),
    # v1.1: gated tanh GELU, untied unscaled head.
    "v1_1": dict(d_model=48, d_kv=16, num_heads=3, d_ff=40, num_layers=2,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, untied=True),
    # heads·d_kv ≠ d_model, a shallower decoder, few buckets that saturate at 12, exact GELU.
    "odd": dict(d_model=40, d_kv=6, num_heads=3, d_ff=56, num_layers=3, num_decoder_layers=1,
                relative_attention_num_buckets=8, relative_attention_max_distance=12,
                layer_norm_epsilon=1e-5, feed_forward_proj="gelu"),
    # What transformers 5 makes of a v1.1 config: tied head, unscaled; gated ReLU.
    "tied_unscaled": dict(d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=1,
                          num_decoder_layers=2, feed_forward_proj="gated-relu",
                          tie_word_embeddings=False),
    # An own head under a config that scales (no stock T5): the scale folds into lm_head.
    "untied_scaled": dict(d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=1, untied=True),
}

# The same kinds of model from the project's side: the presets at small sizes.  causal is
# unused by the EncoderDecoder; an import says False (it is no decoder-only LM).
_SMALL = dict(causal=False, vocab_size=VOCAB, embed_dim=32, num_heads=4, head_size=8, mlp_dim=48,
              num_layers=2)
OUR_SIZES = {
    "t5": dict(PRESETS["t5_small"], **_SMALL),
    "t5_v1_1": dict(PRESETS["t5_v1_1_small"], **_SMALL),
    "odd": dict(PRESETS["t5_small"], **dict(_SMALL, embed_dim=40, num_heads=3, head_size=6,
                                            num_layers=3, num_decoder_layers=1),
                relative_buckets=8, relative_max_distance=12, activation="gelu",
                gelu_approximate=False, mlp_gated=True, layer_norm_eps=1e-5),
    "tied_unscaled": dict(PRESETS["t5_v1_1_small"], **_SMALL, tie_embeddings=True),
}


def _hf_t5(seed=0, untied=False, **sizes):
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(vocab_size=VOCAB, dropout_rate=0.0, **sizes)).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:  # all ones at init; a swapped or dropped norm must show
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    if untied:
      model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape,
                                                            generator=g))
  return model


def _inputs(batch=3, source=30, target=25):
  ids = hf_refs.random_ids(VOCAB, batch, source, seed=1)
  decoder_ids = hf_refs.random_ids(VOCAB, batch, target, seed=2)
  mask = np.ones_like(ids)
  mask[1, 18:] = 0  # right padding
  mask[2, :7] = 0  # left padding: relative positions make it as valid as right padding
  return ids, mask, decoder_ids


def _hf_logits(model, ids, mask, decoder_ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()


def _our_logits(params, cfg, ids, mask, decoder_ids):
  out = EncoderDecoder(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32),
                                  jnp.asarray(decoder_ids, jnp.int32),
                                  inputs_mask_BxS=jnp.asarray(mask, bool))
  return np.asarray(out["logits"])


def _max_diff(a, b):
  assert a.shape == b.shape
  return float(np.abs(a - b).max())


@pytest.mark.parametrize("size,safetensors", [(s, True) for s in HF_SIZES] + [("v1_1", False)],
                         ids=[*HF_SIZES, "v1_1-bin"])
def test_import_logits_match_transformers(tmp_path, size, safetensors):
  sizes = dict(HF_SIZES[size])
  model = _hf_t5(**sizes)
  folder = hf_refs.save_model(model, str(tmp_path / "hf"), safetensors)
  params, cfg, heads, source = importer.import_folder(folder)
  assert heads == {} and source["family"] == "t5" and source["encoder_decoder"]
  assert cfg.tie_embeddings == (not sizes.get("untied", False))
  assert cfg.mlp_gated == sizes.get("feed_forward_proj", "").startswith("gated")
  assert cfg.head_dim == sizes["d_kv"] and cfg.num_heads == sizes["num_heads"]
  assert (cfg.num_decoder_layers or cfg.num_layers) == sizes.get("num_decoder_layers",
                                                                 sizes["num_layers"])
  ids, mask, decoder_ids = _inputs()
  diff = _max_diff(_our_logits(params, cfg, ids, mask, decoder_ids),
                   _hf_logits(model, ids, mask, decoder_ids))
  assert diff <= TOL, f"{size}: max |Δlogits| = {diff:.2e}"


def _random_params(cfg, seed=0):
  """EncoderDecoder params at T5's scales (logits of order 1, not the 0.1 of a 0.02-std init,
  so a small mistake is not lost under the tolerance), norm scales off 1 so a swapped norm
  would show."""
  ids = jnp.zeros((1, 4), jnp.int32)
  params = EncoderDecoder(cfg).init(jax.random.key(seed), ids, ids)["params"]
  flat = flatten(flax.linen.meta.unbox(params))
  rng = np.random.default_rng(seed)
  for path, value in flat.items():
    if path.endswith("/scale"):
      value = value + 0.1 * rng.standard_normal(value.shape)
    elif path.endswith("/kernel"):  # std 1/√fan_in
      value = value / value.std() / np.sqrt(value.shape[0])
    else:  # token table std 1, as T5's; relative-bias table std 0.5
      value = value / value.std() * (0.5 if "rel_bias" in path else 1.0)
    flat[path] = value.astype(np.float32)
  return flat


def _write_converted(folder, flat, cfg):
  """A folder as `convert_hf` writes it, holding our own random model."""
  os.makedirs(folder, exist_ok=True)
  checkpoint.save_params(os.path.join(folder, "params"), unflatten(flat))
  with open(os.path.join(folder, importer.MODEL_FILE), "w", encoding="utf-8") as f:
    json.dump(importer.model_section(cfg), f)
  return folder


@pytest.mark.parametrize("size", list(OUR_SIZES))
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, size):
  cfg = TransformerConfig(**OUR_SIZES[size])
  flat = _random_params(cfg)
  ckpt = _write_converted(str(tmp_path / "ckpt"), flat, cfg)
  out = str(tmp_path / "out")
  result = export_hf.export(ckpt, out)
  assert result["architecture"] == "T5ForConditionalGeneration"
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]

  loaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  ids, mask, decoder_ids = _inputs()
  diff = _max_diff(_our_logits(unflatten(flat), cfg, ids, mask, decoder_ids),
                   _hf_logits(loaded, ids, mask, decoder_ids))
  assert diff <= TOL, f"{size}: max |Δlogits| = {diff:.2e}"

  # import ∘ export is the identity, on the parameters and on the config.
  params, again, _, _ = importer.import_folder(out)
  assert again == cfg
  back = flatten(params)
  assert set(back) == set(flat)
  for path in flat:
    np.testing.assert_array_equal(back[path], flat[path], err_msg=path)


@pytest.mark.parametrize("size", ["v1_0", "v1_1", "tied_unscaled"])
def test_hf_folder_round_trips_bit_exactly(tmp_path, size):
  model = _hf_t5(**HF_SIZES[size])
  hf_refs.save_model(model, str(tmp_path / "hf"))
  convert_hf.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
  export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
  loaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
  want, got = model.state_dict(), loaded.state_dict()
  assert set(want) == set(got)
  for name in want:  # bit-exact, tied copies included
    assert torch.equal(want[name], got[name]), name
  assert loaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs
  assert loaded.config.feed_forward_proj == model.config.feed_forward_proj


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, "w") as f:
    json.dump(config, f)


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)


def test_commands_convert_and_export_t5_and_unsupported_variants_are_one_line_errors(tmp_path):
  model = _hf_t5(**HF_SIZES["v1_1"])
  folder = hf_refs.save_model(model, str(tmp_path / "hf"))
  # A run can start from the folder itself (pretrained.py): an encoder–decoder section.
  section = pretrained.checkpoint_model(folder)
  assert pretrained.kind(folder) == "hf" and section["causal"] is False
  assert section["mlp_gated"] and not section["tie_embeddings"]

  ckpt, out = tmp_path / "ckpt", tmp_path / "out"
  done = _run("reparam_jax.convert_hf", f"--from={folder}", f"--to={ckpt}")
  assert done.returncode == 0, done.stderr
  assert json.loads((ckpt / "hf_source.json").read_text())["family"] == "t5"
  done = _run("reparam_jax.export_hf", f"--workdir={ckpt}", f"--to={out}")
  assert done.returncode == 0, done.stderr
  assert "as T5ForConditionalGeneration" in done.stdout
  loaded = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
  ids, mask, decoder_ids = _inputs()
  np.testing.assert_array_equal(_hf_logits(loaded, ids, mask, decoder_ids),
                                _hf_logits(model, ids, mask, decoder_ids))

  _edit_config(folder, feed_forward_proj="gated-silu")
  bad = _run("reparam_jax.convert_hf", f"--from={folder}", f"--to={tmp_path / 'bad'}")
  assert bad.returncode == 2
  assert bad.stderr.strip().count("\n") == 0
  assert "feed_forward_proj='gated-silu' is not supported" in bad.stderr


@pytest.mark.parametrize("changes,message", [
    (dict(feed_forward_proj="gated-silu"), "feed_forward_proj='gated-silu' is not supported"),
    (dict(feed_forward_proj="swish-gelu"), "feed_forward_proj='swish-gelu' is not supported"),
    (dict(is_decoder=True), "only the T5 encoder–decoder is supported"),
    (dict(architectures=["T5EncoderModel"]), "architecture T5EncoderModel is not supported"),
    (dict(d_kv=4), r"parameter decoder/block_0/attn/key/kernel \(from decoder.block.0.layer.0."
                   r"SelfAttention.k.weight\) has shape \(32, 32\) but config.json implies "
                   r"\(32, 16\)"),
    (dict(num_decoder_layers=3), "parameter decoder.block.2.layer.0.SelfAttention.q.weight is "
                                 "missing"),
    (dict(relative_attention_num_buckets=16), "rel_bias/embedding .* has shape"),
])
def test_bad_t5_folders_are_user_errors(tmp_path, changes, message):
  folder = hf_refs.save_model(_hf_t5(**HF_SIZES["v1_0"]), str(tmp_path / "hf"))
  _edit_config(folder, **changes)
  with pytest.raises(UserError, match=message):
    importer.import_folder(folder)


def test_non_t5_encoder_decoders_are_export_errors(tmp_path):
  cfg = TransformerConfig(**OUR_SIZES["t5"])
  ckpt = _write_converted(str(tmp_path / "ckpt"), _random_params(cfg), cfg)
  section_path = os.path.join(ckpt, importer.MODEL_FILE)
  with open(section_path) as f:
    section = json.load(f)
  for field, value, message in [
      ("norm", "layer", r"t5: model.norm='layer' \(needs 'rms'\)"),
      ("attention_scale", True, r"t5: model.attention_scale=True \(needs False\)"),
      ("embed_dropout", 0.2, "Hugging Face T5 has one dropout_rate")]:
    with open(section_path, "w") as f:
      json.dump(dict(section, **{field: value}), f)
    with pytest.raises(UserError, match=message):
      export_hf.export(ckpt, str(tmp_path / "out"))


def _shape_only_state(model, lm_head_value=0.0):
  zero = np.zeros((), np.float32)
  state = {k: np.broadcast_to(zero, tuple(v.shape)) for k, v in model.state_dict().items()}
  if lm_head_value:  # an own head: values that differ from shared.weight
    state["lm_head.weight"] = np.broadcast_to(np.float32(lm_head_value),
                                              state["lm_head.weight"].shape)
  return state


@pytest.mark.parametrize("preset,expected", [("t5_small", 60_506_624),
                                             ("t5_v1_1_small", 76_961_152)])
def test_preset_parameter_counts_match_transformers(preset, expected):
  """The presets are HF `t5-small` / `google/t5-v1_1-small` (meta device: no memory)."""
  if preset == "t5_small":
    config = transformers.T5Config()  # its defaults are t5-small's
  else:
    config = transformers.T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  with torch.device("meta"):
    model = transformers.T5ForConditionalGeneration(config)
    if preset == "t5_v1_1_small":
      model.lm_head.weight = torch.nn.Parameter(torch.empty(model.lm_head.weight.shape))
  assert sum(p.numel() for p in model.parameters()) == expected

  cfg = TransformerConfig(**PRESETS[preset])
  ids = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: EncoderDecoder(cfg).init(jax.random.key(0), ids, ids))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == expected

  # The mapping, run on the full-size shapes, derives the preset's architecture.
  state = _shape_only_state(model, lm_head_value=1.0 if preset == "t5_v1_1_small" else 0.0)
  _, derived, _ = importer.import_tensors(config.to_dict(), state, preset)
  for field in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "head_size",
                "pre_norm", "norm", "use_bias", "relative_buckets", "relative_max_distance",
                "attention_scale", "activation", "mlp_gated", "tie_embeddings",
                "tied_logits_scale", "num_decoder_layers", "layer_norm_eps"):
    assert getattr(derived, field) == getattr(cfg, field), field
  if cfg.activation == "gelu":
    assert derived.gelu_approximate == cfg.gelu_approximate


@pytest.mark.parametrize("size,spec", [("v1_0", "lora(rank=4, alpha=8)"),
                                       ("v1_1", "lora(rank=2, alpha=4)|magnitude")])
def test_peft_adapters_both_ways_with_equal_logits(tmp_path, monkeypatch, size, spec):
  """Ours on every linear module of both stacks (cross-attention and the gated MLP's
  wi_0/wi_1 included), loaded by the real `peft`; `peft`'s on q/v (self- and
  cross-attention alike, as its short names match), loaded here."""
  peft = pytest.importorskip("peft")
  from reparam_jax.hf import peft as peft_io  # noqa: PLC0415
  from reparam_jax.reparam import Reparam  # noqa: PLC0415
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  sizes = dict(HF_SIZES[size])
  untied = sizes.pop("untied", False)
  model = _hf_t5(untied=untied, **sizes)
  folder = hf_refs.save_model(model, str(tmp_path / "hf"))
  params, cfg, _, _ = importer.import_folder(folder)
  ids, mask, decoder_ids = _inputs()

  def ours(theta, rules):
    wrapped = Reparam.from_config({"rules": rules}).wrap(EncoderDecoder(cfg))
    return np.asarray(wrapped.apply({"params": theta}, jnp.asarray(ids, jnp.int32),
                                    jnp.asarray(decoder_ids, jnp.int32),
                                    inputs_mask_BxS=jnp.asarray(mask, bool))["logits"])

  rules = ((r"(en|de)coder/block_\d+/\w+/\w+/kernel", spec),)
  theta = hf_refs.random_adapters(params, rules)
  summary = peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "ours"))
  gated = 2 if cfg.mlp_gated else 1
  assert summary["modules"] == cfg.num_layers * (4 + gated + 1) * 2 + cfg.num_layers * 4
  loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "ours")).eval()
  assert _max_diff(ours(theta, rules), _hf_logits(loaded, ids, mask, decoder_ids)) <= TOL

  base = _hf_t5(untied=untied, **sizes)
  torch.manual_seed(5)
  wrapped = peft.get_peft_model(base, peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=["q", "v"], init_lora_weights=False,
      use_dora="magnitude" in spec)).eval()
  wrapped.save_pretrained(str(tmp_path / "theirs"))
  theirs, their_rules = peft_io.import_peft_adapter(str(tmp_path / "theirs"), params)
  assert _max_diff(ours(theirs, their_rules), _hf_logits(wrapped, ids, mask, decoder_ids)) <= TOL
