"""PEFT-format LoRA / DoRA adapters: the real `peft` loads ours, and we load `peft`'s, with
equal outputs (float32, max |Δ| ≤ 1e-4), on tiny random BERTs and on the real MiniLM."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import hf_refs
from test_import import BERT_SIZES

from reparam_jax.errors import UserError
from reparam_jax.hf import importer
from reparam_jax.hf import peft as peft_io
from reparam_jax.pytree.paths import key_path
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.base import TRANSFORMS

TOL = 1e-4
QV = r"block_\d+/attn/(query|value)/kernel"
ALL = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"
HAS_DORA = "magnitude" in TRANSFORMS
HAS_RSLORA = "rslora" in getattr(TRANSFORMS["lora"], "__dataclass_fields__", {})
needs_dora = pytest.mark.skipif(not HAS_DORA, reason="the magnitude transform (DoRA) is absent")
needs_rslora = pytest.mark.skipif(not HAS_RSLORA, reason="lora(rslora=...) is absent")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  # peft asks the Hub whether base_model_name_or_path has a config; the tests are offline.
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _base(tmp_path, cls_name="BertModel", size="tiny"):
  """(torch model, our dense params, config, heads) of one random tiny BERT."""
  model = hf_refs.bert(cls_name, **BERT_SIZES[size])
  folder = hf_refs.save_model(model, str(tmp_path / "hf"))
  params, cfg, heads, _ = importer.import_folder(folder)
  return model, params, cfg, heads


def _inputs(cfg, batch=2):
  length = cfg.max_len
  ids = hf_refs.random_ids(cfg.vocab_size, batch, length, seed=3)
  mask = np.ones_like(ids)
  mask[1, length - 3:] = 0
  types = np.random.default_rng(4).integers(0, max(cfg.type_vocab_size, 1), ids.shape)
  return ids, mask, types


def _ours(params, rules, cfg, heads, inputs):
  ids, mask, types = inputs
  model = Reparam.from_config({"rules": rules}).wrap(importer.build_model(cfg, heads))
  positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  out = model.apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool),
                    jnp.asarray(types, jnp.int32), jnp.asarray(positions, jnp.int32))
  out = {k: np.asarray(v) for k, v in out.items()}
  if "mlm_logits" in out:  # BertForMaskedLM's `logits`
    out["logits"] = out["mlm_logits"]
  return out


def _theirs(model, inputs):
  ids, mask, types = inputs
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types))
  if hasattr(out, "logits"):
    return {"logits": out.logits.numpy()}
  return {"hidden": out.last_hidden_state.numpy(), "pooled": out.pooler_output.numpy()}


def _close(ours, theirs):
  for name, want in theirs.items():
    assert ours[name].shape == want.shape, name
    diff = np.abs(ours[name] - want).max()
    assert diff <= TOL, (name, diff)


_randomized = hf_refs.random_adapters


# --- export: our adapter, loaded by peft -------------------------------------------------------

EXPORT_CASES = [
    ("BertModel", ((QV, "lora(rank=4, alpha=8)"),)),
    ("BertForSequenceClassification", ((ALL, "lora(rank=2, alpha=4)"),)),
    ("BertForMaskedLM", ((r"block_0/attn/query/kernel", "lora(rank=4, alpha=8)"),
                         (r"block_1/mlp/fc_in/kernel", "lora(rank=2, alpha=3)"),
                         (r"mlm_head/transform/kernel", "lora(rank=3, alpha=8)"))),
]


@pytest.mark.parametrize("cls_name,rules", EXPORT_CASES, ids=["qv", "all_cls", "mixed_mlm"])
def test_exported_adapter_loads_in_peft_with_our_outputs(tmp_path, cls_name, rules):
  model, params, cfg, heads = _base(tmp_path, cls_name)
  theta = _randomized(params, rules)
  if cls_name == "BertForSequenceClassification":  # a trained head: saved whole (modules_to_save)
    theta["classifier"]["out"]["kernel"] = theta["classifier"]["out"]["kernel"] + 0.5
  out = tmp_path / "adapter"
  summary = peft_io.export_peft_adapter(theta, {"rules": rules}, str(out))
  inputs = _inputs(cfg)
  ours = _ours(theta, rules, cfg, heads, inputs)
  loaded = peft.PeftModel.from_pretrained(model, str(out)).eval()
  _close(ours, _theirs(loaded, inputs))
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["peft_type"] == "LORA" and summary["modules"] == {
      "qv": 4, "all_cls": 12, "mixed_mlm": 3}[{"BertModel": "qv",
                                               "BertForSequenceClassification": "all_cls",
                                               "BertForMaskedLM": "mixed_mlm"}[cls_name]]
  if cls_name == "BertModel":
    assert config["target_modules"] == ["query", "value"] and config["r"] == 4
  if cls_name == "BertForMaskedLM":  # per-layer ranks and alphas via the patterns
    assert config["rank_pattern"] and config["alpha_pattern"]


def test_exported_keys_are_peft_names(tmp_path):
  import safetensors.numpy
  _, params, _, _ = _base(tmp_path, "BertForSequenceClassification")
  rules = ((QV, "lora(rank=4, alpha=8)"),)
  peft_io.export_peft_adapter(_randomized(params, rules), {"rules": rules}, str(tmp_path / "a"))
  keys = set(safetensors.numpy.load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
  p = "base_model.model."
  assert f"{p}bert.encoder.layer.1.attention.self.value.lora_A.weight" in keys
  assert f"{p}bert.encoder.layer.0.attention.self.query.lora_B.weight" in keys
  assert f"{p}classifier.weight" in keys and f"{p}classifier.bias" in keys
  assert len(keys) == 2 * 2 * 2 + 2


# --- import: peft's adapter, loaded here --------------------------------------------------------

def _peft_adapter(model, folder, **lora_kwargs):
  torch.manual_seed(5)
  kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"],
            "init_lora_weights": False}
  kwargs.update(lora_kwargs)
  wrapped = peft.get_peft_model(model, peft.LoraConfig(**kwargs)).eval()
  if kwargs.get("use_dora"):
    with torch.no_grad():  # m = ‖V‖ at creation; perturb it so it matters
      for name, p in wrapped.named_parameters():
        if "lora_magnitude_vector" in name:
          p.mul_(1 + 0.2 * torch.randn(p.shape))
  wrapped.save_pretrained(folder)
  return wrapped


IMPORT_CASES = {
    "qv": {},
    "all_patterns": {"target_modules": ["query", "key", "value", "dense"], "r": 2, "lora_alpha": 4,
                         "rank_pattern": {"encoder.layer.1.attention.self.value": 3},
                         "alpha_pattern": {"output.dense": 6}},
    "regex": {"target_modules": r".*layer\.0\.attention\.self\.(query|key)"},
}


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_peft_adapter_imports_with_equal_outputs(tmp_path, case):
  model, params, cfg, heads = _base(tmp_path)
  wrapped = _peft_adapter(model, str(tmp_path / "adapter"), **IMPORT_CASES[case])
  theta, rules = peft_io.import_peft_adapter(str(tmp_path / "adapter"), params)
  inputs = _inputs(cfg)
  _close(_ours(theta, rules, cfg, heads, inputs), _theirs(wrapped, inputs))
  adapted = [key_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(theta)
             if key_path(p).endswith("lora_a")]
  # "dense" picks the pooler's dense layer too, as in peft.
  assert len(adapted) == {"qv": 4, "all_patterns": 2 * 6 + 1, "regex": 2}[case]


def test_import_then_export_round_trips_exactly(tmp_path):
  model, params, _, _ = _base(tmp_path)
  _peft_adapter(model, str(tmp_path / "a"), target_modules=["query", "dense"],
                rank_pattern={"intermediate.dense": 2})
  theta, rules = peft_io.import_peft_adapter(str(tmp_path / "a"), params)
  peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "b"))
  import safetensors.numpy
  a = safetensors.numpy.load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
  b = safetensors.numpy.load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- rsLoRA and DoRA ------------------------------------------------------------------------------

VARIANTS = [
    pytest.param("lora(rank=4, alpha=8, rslora=True)", {"use_rslora": True}, id="rslora",
                 marks=needs_rslora),
    pytest.param("lora(rank=4, alpha=8)|magnitude", {"use_dora": True}, id="dora",
                 marks=needs_dora),
    pytest.param("lora(rank=4, alpha=8, rslora=True)|magnitude",
                 {"use_dora": True, "use_rslora": True}, id="dora_rslora",
                 marks=[needs_dora, needs_rslora]),
]


@pytest.mark.parametrize("spec,peft_kwargs", VARIANTS)
def test_variant_export(tmp_path, spec, peft_kwargs):
  model, params, cfg, heads = _base(tmp_path, "BertForSequenceClassification")
  rules = ((QV, spec),)
  theta = _randomized(params, rules)
  peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))
  config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
  for k, v in peft_kwargs.items():
    assert config[k] == v, k
  loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "a")).eval()
  inputs = _inputs(cfg)
  _close(_ours(theta, rules, cfg, heads, inputs), _theirs(loaded, inputs))


@pytest.mark.parametrize("spec,peft_kwargs", VARIANTS)
def test_variant_import(tmp_path, spec, peft_kwargs):
  model, params, cfg, heads = _base(tmp_path)
  wrapped = _peft_adapter(model, str(tmp_path / "a"), **peft_kwargs)
  theta, rules = peft_io.import_peft_adapter(str(tmp_path / "a"), params)
  assert {s for _, s in rules} == {spec}
  inputs = _inputs(cfg)
  _close(_ours(theta, rules, cfg, heads, inputs), _theirs(wrapped, inputs))


@needs_dora
def test_mixed_lora_and_dora_exports_as_dora(tmp_path):
  """A plain LoRA layer next to DoRA ones is written with m = ‖W₀ + s·A B‖ (DoRA's
  identity)."""
  model, params, cfg, heads = _base(tmp_path)
  rules = ((r"block_\d+/attn/query/kernel", "lora(rank=4, alpha=8)|magnitude"),
           (r"block_\d+/attn/value/kernel", "lora(rank=4, alpha=8)"))
  theta = _randomized(params, rules)
  peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))
  loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "a")).eval()
  inputs = _inputs(cfg)
  _close(_ours(theta, rules, cfg, heads, inputs), _theirs(loaded, inputs))


# --- bad inputs: one-line UserErrors ---------------------------------------------------------

def _edit(folder, **changes):
  path = os.path.join(folder, "adapter_config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, "w") as f:
    json.dump(config, f)


def _one_line(excinfo):
  assert "\n" not in str(excinfo.value)


def test_bad_peft_folders_are_user_errors(tmp_path):
  model, params, _, _ = _base(tmp_path)
  folder = str(tmp_path / "a")
  _peft_adapter(model, folder)
  cases = [
      ({"peft_type": "LOHA"}, "peft_type='LOHA'; only LORA"),
      ({"bias": "all"}, "bias='all'; only bias='none'"),
      ({"target_modules": ["q_proj"]}, "target module 'q_proj' is not a linear module"),
      ({"r": 8}, (r"rank 4 but adapter_config.json says r=8 for module "
                  r"encoder.layer.0.attention.self.query")),
      ({"use_dora": True}, r"lora_magnitude_vector is missing"),
      ({"lora_bias": True}, "lora_bias=True is not supported"),
  ]
  for change, message in cases:
    original = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    _edit(folder, **change)
    with pytest.raises(UserError, match=message) as e:
      peft_io.import_peft_adapter(folder, params)
    _one_line(e)
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(original))
  with pytest.raises(UserError, match="has no adapter_config.json"):
    peft_io.import_peft_adapter(str(tmp_path / "hf"), params)
  # A base of another width: the factors do not fit the kernels (named with both shapes).
  _, other, _, _ = _base(tmp_path / "odd", size="odd")
  with pytest.raises(UserError, match=r"lora_A.weight \(4, 32\) / lora_B.weight \(32, 4\) do "
                                      r"not fit parameter block_0/attn/query/kernel \(48, 48\)"):
    peft_io.import_peft_adapter(folder, other)


def test_unknown_module_in_weights_is_a_user_error(tmp_path):
  import safetensors.numpy
  model, params, _, _ = _base(tmp_path)
  folder = tmp_path / "a"
  _peft_adapter(model, str(folder))
  path = str(folder / "adapter_model.safetensors")
  tensors = safetensors.numpy.load_file(path)
  key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
  tensors[key.replace("query", "qry")] = tensors.pop(key)
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(UserError, match=r"adapts module encoder.layer.0.attention.self.qry, "
                                      "which is not a linear module"):
    peft_io.import_peft_adapter(str(folder), params)


def test_unexportable_rules_are_user_errors(tmp_path):
  _, params, _, _ = _base(tmp_path)
  rules = ((r"block_0/attn/query/kernel", "lowrank(rank=4)|lora(rank=2)"),)
  theta = Reparam.from_config({"rules": rules}).from_dense(params)
  with pytest.raises(UserError, match="'lowrank.*' has no PEFT counterpart"):
    peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))
  rules = ((r"embed/token/embedding", "lora(rank=2)"),)
  theta = Reparam.from_config({"rules": rules}).from_dense(params)
  with pytest.raises(UserError, match="PEFT export covers linear kernels only"):
    peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))
  with pytest.raises(UserError, match="no LoRA parameters to export"):
    peft_io.export_peft_adapter(params, {"rules": ()}, str(tmp_path / "a"))
  if HAS_RSLORA:
    rules = ((r"block_0/attn/query/kernel", "lora(rank=2, rslora=True)"),
             (r"block_0/attn/value/kernel", "lora(rank=2)"))
    theta = Reparam.from_config({"rules": rules}).from_dense(params)
    with pytest.raises(UserError, match="rslora=True but other LoRA layers do not"):
      peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"))


def test_run_export_refuses_what_an_adapter_cannot_carry(tmp_path):
  from reparam_jax.hf import peft_run
  _, params, _, _ = _base(tmp_path, "BertForSequenceClassification")
  rules = ((QV, "lora(rank=4, alpha=8)"),)
  rp = Reparam.from_config({"rules": rules})
  theta = _randomized(params, rules)
  theta["classifier"]["out"]["bias"] = theta["classifier"]["out"]["bias"] + 1  # saved whole
  peft_run.check_against_base(theta, rp, params, ("classifier",), "init_from=x")
  theta["embed"]["ln"]["scale"] = theta["embed"]["ln"]["scale"] + 1e-3  # a trained LayerNorm
  with pytest.raises(UserError, match=r"parameter embed/ln/scale differs from the base model "
                                      r"init_from=x \(the run trained it\)"):
    peft_run.check_against_base(theta, rp, params, ("classifier",), "init_from=x")
  with pytest.raises(UserError, match="is not a training workdir"):
    peft_run.export_run_adapter(str(tmp_path / "hf"), str(tmp_path / "out"))


# --- the real MiniLM ---------------------------------------------------------------------------

def test_real_minilm_both_directions(tmp_path, raw_data_dir):
  folder = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  if not os.path.isdir(folder):
    pytest.skip(f"{folder} is absent")
  params, cfg, heads, _ = importer.import_folder(folder)
  rules = ((QV, "lora(rank=8, alpha=16)"),)
  theta = _randomized(params, rules)
  peft_io.export_peft_adapter(theta, {"rules": rules}, str(tmp_path / "a"),
                              base_model_name_or_path=folder)
  ids = hf_refs.random_ids(cfg.vocab_size, 2, 24, seed=7)
  inputs = (ids, np.ones_like(ids), np.zeros_like(ids))
  ours = _ours(theta, rules, cfg, heads, inputs)
  base = transformers.BertModel.from_pretrained(folder).eval()
  loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
  _close(ours, _theirs(loaded, inputs))
  # And back: the adapter folder peft wrote (save_pretrained) imports to the same θ.
  loaded.save_pretrained(str(tmp_path / "b"))
  again, again_rules = peft_io.import_peft_adapter(str(tmp_path / "b"), params)
  assert again_rules == ((r"block_\d+/(attn/query|attn/value)/kernel",
                          "lora(rank=8, alpha=16)"),)
  _close(_ours(again, again_rules, cfg, heads, inputs), ours)


# --- the command: a LoRA run's adapter --------------------------------------------------------

@pytest.mark.slow
def test_minilm_lora_run_exports_an_adapter_peft_loads(raw_data_dir, tfds_dir, tmp_path):
  """configs/sst2/minilm_lora.py for 2 steps → export_hf --peft_dir → peft on the MiniLM
  folder gives the run's logits (its LoRA factors and its trained classifier)."""
  import subprocess
  import sys

  from helpers import REPO, run_train_subprocess

  from reparam_jax.hf.common import flatten
  from reparam_jax.hf.exporter import _run_model
  from reparam_jax.rundir import checkpoint

  run, out = str(tmp_path / "run"), str(tmp_path / "adapter")
  env = {"REPARAM_DATA_DIR": raw_data_dir, "TFDS_DATA_DIR": tfds_dir}
  result = run_train_subprocess(
      ["--config=configs/sst2/minilm_lora.py", f"--workdir={run}", "--config.num_steps=2",
       "--config.batch_size=8", "--config.seq_len=32", "--config.encoder.length_buckets=()",
       "--config.optimizer.warmup_steps=0", "--config.eval_every=2",
       "--config.checkpoint_every=2"], env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  done = subprocess.run([sys.executable, "-m", "reparam_jax.export_hf", f"--workdir={run}",
                         f"--peft_dir={out}"], check=False, capture_output=True, text=True,
                        cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **env), timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "12 LoRA modules, r=8" in done.stdout

  with open(os.path.join(run, "config.json")) as f:
    run_config = json.load(f)
  rules = tuple(tuple(r) for r in run_config["reparam"]["rules"])
  params = checkpoint.load_params(run)
  b = np.asarray(params["block_0"]["attn"]["query"]["kernel"]["lora_b"])
  assert np.abs(b).max() > 0  # trained off B = 0: the comparison sees the adapter
  cfg = _run_model(run_config, flatten(Reparam.from_config(run_config["reparam"]).to_dense(
      params)))
  heads = {"classifier": {"num_classes": 2, "dropout": 0.1}}
  ids = hf_refs.random_ids(cfg.vocab_size, 2, 24, seed=9)
  inputs = (ids, np.ones_like(ids), np.zeros_like(ids))
  folder = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  base = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=2)
  loaded = peft.PeftModel.from_pretrained(base.eval(), out).eval()
  _close(_ours(params, rules, cfg, heads, inputs), _theirs(loaded, inputs))


def test_start_from_adapter_checks_the_run_rules(tmp_path):
  model, params, _, _ = _base(tmp_path)
  _peft_adapter(model, str(tmp_path / "a"))
  good = Reparam.from_config({"rules": ((QV, "lora(rank=4, alpha=8, dropout=0.1)"),)})
  theta = peft_io.start_from_adapter(str(tmp_path / "a"), params, good)
  # adopt_dense keeps the imported θ (it converts only dense weights)
  adopted = good.adopt_dense(theta, good.from_dense(params), jax.random.key(0))
  np.testing.assert_array_equal(adopted["block_1"]["attn"]["value"]["kernel"]["lora_b"],
                                theta["block_1"]["attn"]["value"]["kernel"]["lora_b"])
  bad = Reparam.from_config({"rules": ((QV, "lora(rank=4, alpha=16)"),)})
  with pytest.raises(UserError, match=r"puts 'lora\(rank=4, alpha=8\)' on block_0/attn/query/"
                                      r"kernel but config.reparam.rules gives it 'lora\(rank=4, "
                                      r"alpha=16\)'; use --config.reparam.rules="):
    peft_io.start_from_adapter(str(tmp_path / "a"), params, bad)
