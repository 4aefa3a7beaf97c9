"""A BERT with heads removed (compression/structured.py) exports with `pruned_heads`.

transformers 4 reads `pruned_heads` in config.json and removes those heads from
each layer before loading the weights (`BertModel.prune_heads`); transformers 5,
the pinned peer, dropped head pruning, so the test removes them the same way by
hand (smaller query/key/value/output linears, fewer heads per layer) and checks
that the exported weights load strictly and give the outputs of the original
model whose removed heads were zero.  GPT-2 has no per-layer heads: its export
refuses.
"""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import hf_refs
from test_import import BERT_SIZES, GPT2_SIZES

from reparam_jax import export_hf
from reparam_jax.compression import structured
from reparam_jax.errors import UserError
from reparam_jax.hf import importer
from reparam_jax.hf.common import flatten
from reparam_jax.models import Transformer
from reparam_jax.rundir import checkpoint

pytestmark = pytest.mark.peer
REMOVED = {0: [1], 1: [0, 3]}  # layer → heads zeroed in the original, then pruned


def _pruned_checkpoint(model, tmp_path, keep):
  """The HF model imported, its heads pruned to `keep` per layer, saved as a convert_hf
  output; (folder, pruned params, pruned config)."""
  hf_refs.save_model(model, str(tmp_path / "hf"))
  params, cfg, _, _ = importer.import_folder(str(tmp_path / "hf"))
  pruned, pruned_cfg = structured.prune_heads(params, cfg, keep)
  ckpt = tmp_path / "ckpt"
  os.makedirs(ckpt)
  checkpoint.save_params(str(ckpt / "params"), jax.tree.map(np.asarray, pruned))
  with open(ckpt / importer.MODEL_FILE, "w", encoding="utf-8") as f:
    json.dump(importer.model_section(pruned_cfg), f)
  return ckpt, pruned, pruned_cfg


def _prune_like_transformers_4(model, pruned_heads):
  """What transformers 4's BertModel.prune_heads does to the shapes: each layer's
  attention keeps num_attention_heads − len(removed) heads."""
  head = model.config.hidden_size // model.config.num_attention_heads
  for layer, removed in pruned_heads.items():
    attn = model.encoder.layer[int(layer)].attention
    width = (model.config.num_attention_heads - len(removed)) * head
    for name in ("query", "key", "value"):
      setattr(attn.self, name, torch.nn.Linear(model.config.hidden_size, width))
    attn.output.dense = torch.nn.Linear(width, model.config.hidden_size)
    attn.self.num_attention_heads = width // head
    attn.self.all_head_size = width


def test_bert_with_removed_heads_exports_with_pruned_heads(tmp_path):
  sizes = BERT_SIZES["tiny"]
  model = hf_refs.bert("BertModel", **sizes)
  head = sizes["hidden_size"] // sizes["num_attention_heads"]
  with torch.no_grad():
    for layer, heads in REMOVED.items():
      dense = model.encoder.layer[layer].attention.output.dense.weight
      for h in heads:
        dense[:, h * head:(h + 1) * head] = 0.0
  keep = [sizes["num_attention_heads"] - len(REMOVED[i]) for i in range(2)]
  ckpt, pruned, pruned_cfg = _pruned_checkpoint(model, tmp_path, keep)
  export_hf.export(str(ckpt), str(tmp_path / "out"))

  with open(tmp_path / "out" / "config.json", encoding="utf-8") as f:
    written = json.load(f)
  assert written["num_attention_heads"] == 4
  assert written["pruned_heads"] == {"0": [3], "1": [2, 3]}

  loaded = transformers.BertModel(transformers.BertConfig.from_pretrained(tmp_path / "out"))
  _prune_like_transformers_4(loaded, written["pruned_heads"])
  state = safetensors_torch.load_file(str(tmp_path / "out" / "model.safetensors"))
  loaded.load_state_dict(state, strict=False)
  missing = set(loaded.state_dict()) - set(state) - {"embeddings.position_ids",
                                                      "embeddings.token_type_ids"}
  assert not missing, missing
  assert loaded.encoder.layer[1].attention.self.query.weight.shape == (2 * head, 32)
  loaded.eval()

  ids = np.random.default_rng(0).integers(0, sizes["vocab_size"], (2, 9))
  with torch.no_grad():
    want = model(torch.as_tensor(ids)).last_hidden_state.numpy()
    got = loaded(torch.as_tensor(ids)).last_hidden_state.numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  ours = Transformer(pruned_cfg).apply({"params": pruned}, ids)["hidden"]
  np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-4, atol=1e-5)

  # The export imports back with its per-layer heads.
  again, again_cfg, _, _ = importer.import_folder(str(tmp_path / "out"))
  assert again_cfg.layer_heads == (3, 2)
  a, b = flatten(again), flatten(pruned)
  assert set(a) == set(b)
  for path in a:
    np.testing.assert_array_equal(a[path], np.asarray(b[path]), err_msg=path)


def test_gpt2_with_removed_heads_refuses_to_export(tmp_path):
  ckpt, _, _ = _pruned_checkpoint(hf_refs.gpt2(**GPT2_SIZES["tiny"]), tmp_path, 2)
  with pytest.raises(UserError, match=r"gpt2: model.layer_heads=\(2, 2\) \(needs \(\)\)"):
    export_hf.export(str(ckpt), str(tmp_path / "out"))
