"""The `remove` recipe step: attention heads and MLP units physically removed inside the
`compress` pipeline (recipe.step_remove over compression/structured.py).

The step must take the units `prune_heads` / `prune_neurons` take on the same params, leave
a smaller model whose shapes every later stage reads from the state (evaluation, later
steps, fine-tuning, the written config.json), and refuse what does not compose.
"""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import jax
import ml_collections
import numpy as np
import pytest
from flax.core import meta

from reparam_jax import export_hf, train
from reparam_jax.compression import calibration, recipe, structured
from reparam_jax.data import tokenizers
from reparam_jax.errors import UserError
from reparam_jax.generation.decode import Sampling
from reparam_jax.generation.text import sample_run
from reparam_jax.hf import importer
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.models.seq2seq import EncoderDecoder
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir.workdir import load_run
from reparam_jax.tasks.lm import lm_model
from reparam_jax.training.evaluate import Evaluator
from tests.helpers import REPO, tiny_args, tiny_labelled_corpus

D, K, HEADS, MLP = 16, 4, 4, 32  # the runs below: width, head_dim, heads, MLP units per layer
QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def lm(tmp_path_factory, raw_data_dir, tfds_dir):
  """The quick-start LM at tiny size, with 2 layers of 4 heads (a head is 4 wide)."""
  workdir = str(tmp_path_factory.mktemp("lm"))
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=10, eval_every=10,
                       checkpoint_every=10, **{"model.num_layers": 2, "model.num_heads": HEADS}))
  return workdir


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """A BERT-style classifier (2 layers of 4 heads) whose head exports to transformers."""
  workdir = str(tmp_path_factory.mktemp("classifier"))
  data = tiny_labelled_corpus(str(tmp_path_factory.mktemp("labelled")), train=64, dev=64)
  cfg = {"model.num_layers": 2, "model.num_heads": HEADS, "model.embed_dim": D,
         "model.mlp_dim": MLP, "data.vocab_size": 100, "batch_size": 16, "eval_batch_size": 64,
         "num_steps": 2, "log_every": 2, "eval_every": 2, "checkpoint_every": 2,
         "optimizer.warmup_steps": 1, "seq_len": 16, "model.max_len": 16,
         "encoder.length_buckets": "()", "encoder.classifier_norm": False, **data}
  train.main([f"--config={os.path.join(REPO, 'configs', 'sst2', 'encoder.py')}",
              f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in cfg.items()])
  return workdir


def _original(workdir):
  """(the run's dense params, its TransformerConfig)."""
  run = load_run(workdir)
  model = lm_model(run.config, tokenizers.load_tokenizer(workdir).vocab_size)
  return meta.unbox(run.params), model.cfg


def _assert_same_tree(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _removed_weights(removed_heads: int, removed_neurons: int) -> int:
  """GPT-2 blocks (biases, no grouped-query attention): a head's query/key/value columns
  and biases and its rows of attn/out; a unit's fc_in column and bias and fc_out row."""
  return removed_heads * (4 * D * K + 3 * K) + removed_neurons * (2 * D + 1)


@pytest.mark.heavy
def test_remove_takes_prune_functions_units_and_the_smaller_run_loads_and_fine_tunes(
    lm, tmp_path):
  out = str(tmp_path / "out")
  report = recipe.compress(lm, "remove(keep_heads=[2, 4], keep_neurons=0.5)", out,
                           finetune_steps=3, **QUIET)
  original, removed, tuned = report["rows"]
  assert removed["step"] == "remove(keep_heads=[2, 4], keep_neurons=0.5)"
  assert tuned["step"] == "finetune(3 steps)"

  # The units prune_heads / prune_neurons keep on the same params, bit for bit.
  params, cfg = _original(lm)
  want, want_cfg = structured.prune_heads(params, cfg, [2, 4])
  want, want_cfg = structured.prune_neurons(want, want_cfg, 0.5)
  _assert_same_tree(checkpoint.load_params(os.path.join(out, "steps", "1_remove")), want)

  # Stored parameters shrink by exactly the removed weights: 2 heads of layer 0, half of
  # each layer's 32 MLP units.
  assert original["stored_params"] - removed["stored_params"] == _removed_weights(2, 2 * 16)

  # out/config.json describes the smaller model: the run loads and evaluates to the
  # reported loss, and decodes (its tokenizer is in `out`).
  run = load_run(out)
  assert tuple(run.config.model.layer_heads) == (2, 4)
  assert tuple(run.config.model.layer_mlp_dims) == (16, 16)
  got = Evaluator(run.config, lm)(run.params, run.config.reparam.rules)
  assert got["loss"] == pytest.approx(report["final"]["eval_loss"], rel=1e-6)
  text, = sample_run(out, ["ROMEO:"], 4, Sampling(temperature=0.0))
  assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")

  # Fine-tuning trained the smaller model (its run's config holds the per-layer shapes).
  with open(os.path.join(out, "finetune", "final", "run", "config.json")) as f:
    assert json.load(f)["model"]["layer_heads"] == [2, 4]
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(run.params),
                                                    jax.tree.leaves(want))]
  assert any(moved)
  assert tuned["stored_params"] == removed["stored_params"]


def test_activation_scored_removal_then_gptq(lm, tmp_path):
  calib = calibration.Calibration(n=8, length=16, chunk=8)
  out = str(tmp_path / "out")
  report = recipe.compress(
      lm, "calibration(n=8, length=16, chunk=8),"
      "remove(keep_heads=2, keep_neurons=[8, 24], score=activation),gptq(bits=4, group=8)",
      out, **QUIET)

  # Wanda's |W|·‖X‖ per unit from the statistics of one blockwise pass on the same set.
  params, cfg = _original(lm)
  run = load_run(lm)
  inputs = calibration.calibration_inputs(run.config, lm, calib, cfg.max_len, log=QUIET["log"])
  stats = {}

  def record(path, w, layer_stats):
    stats[path] = layer_stats
    return w
  calibration.compress_blockwise(Transformer(cfg), params, inputs, lambda p: True, record,
                                 calib, log=QUIET["log"])
  head_scores, neuron_scores = structured.activation_scores(params, cfg, stats)
  want, want_cfg = structured.prune_heads(params, cfg, 2, head_scores)
  want, want_cfg = structured.prune_neurons(want, want_cfg, [8, 24], neuron_scores)
  # (steps/1 is calibration's number: the options of the steps after it)
  _assert_same_tree(checkpoint.load_params(os.path.join(out, "steps", "2_remove")), want)
  by_magnitude, magnitude_cfg = structured.prune_heads(params, cfg, 2)
  by_magnitude, _ = structured.prune_neurons(by_magnitude, magnitude_cfg, [8, 24])
  assert any(not np.array_equal(a, b) for a, b in  # the score chose other units
             zip(jax.tree.leaves(by_magnitude), jax.tree.leaves(want)))

  # GPTQ ran on the smaller model's blocks; the packed result loads at the reported loss.
  removed, quantized = report["rows"][1:]
  assert removed["stored_params"] == report["rows"][0]["stored_params"] - _removed_weights(
      2 * 2, 24 + 8)
  assert quantized["step"] == "gptq(bits=4, group=8)"
  assert quantized["kernel_bits"] == pytest.approx(4 + 40 / 8)
  stored = load_run(out)
  assert stored.config.reparam.rules[0][1] == "packed(bits=4, group=8, sym=False)"
  kernel = stored.params["block_1"]["mlp"]["fc_out"]["kernel"]
  assert kernel["codes"].shape == (24 // 2, D)  # 24 units kept, two 4-bit codes a byte
  got = Evaluator(stored.config, lm)(stored.params, stored.config.reparam.rules)
  assert got["loss"] == pytest.approx(report["final"]["eval_loss"], rel=1e-6)


@pytest.mark.heavy
def test_classifier_heads_removed_evaluate_and_export_as_pruned_heads(classifier, tmp_path):
  out = str(tmp_path / "out")
  report = recipe.compress(classifier, "remove(keep_heads=[2, 4])", out, **QUIET)
  assert report["rows"][0]["stored_params"] - report["rows"][1]["stored_params"] == \
      _removed_weights(2, 0)
  run = load_run(out)
  got = Evaluator(run.config, classifier)(run.params, run.config.reparam.rules)
  assert got["accuracy"] == pytest.approx(report["final"]["eval_accuracy"])
  assert got["loss"] == pytest.approx(report["final"]["eval_loss"], rel=1e-6)
  # transformers 4's pruned_heads: layer 0 lost two of its four heads.
  hf = str(tmp_path / "hf")
  export_hf.main([f"--workdir={out}", f"--to={hf}"])
  with open(os.path.join(hf, "config.json")) as f:
    hf_config = json.load(f)
  assert hf_config["num_attention_heads"] == HEADS
  assert {k: len(v) for k, v in hf_config["pruned_heads"].items()} == {"0": 2}
  _, imported_cfg, _, _ = importer.import_folder(hf)
  assert imported_cfg.layer_heads == (2, 4)


def _remove(text, state=None, model=None, config=None):
  step = recipe.parse_recipe(text)[0]
  evaluator = SimpleNamespace(task=SimpleNamespace(model=lambda: model))
  return recipe.step_remove(state or recipe.State(theta={}), step, config=config,
                            evaluator=evaluator, calibration=calibration.Calibration(),
                            calibration_cache={}, workdir="", **QUIET)


def test_bad_options_and_unsupported_orders_are_one_line_errors(lm, tmp_path):
  params, cfg = _original(lm)
  state = recipe.State(theta=params)
  options = {
      "remove(0.5)": "give the options by name",
      "remove(keep_head=0.5)": "unknown option 'keep_head'",
      "remove(score=magnitude)": "say what each layer keeps",
      "remove(keep_heads=0.5, score=fisher)": "score='fisher'; use magnitude or activation",
      "remove(keep_heads='half')": "keep_heads='half'; give a fraction",
      "remove(keep_neurons=8, across_layers=True)": "give keep_neurons as a fraction",
      "remove(keep_heads=0.5, across_layers=yes)": "across_layers='yes'",
      "remove(keep_heads=1.5)": "keep_heads: keep=1.5 is a fraction outside",
      "remove(keep_heads=[2])": "keep_heads: keep has 1 counts for 2 layers",
      "remove(keep_neurons=33)": "keep_neurons: layer 0 keeps 33 of its 32 units",
  }
  for text, message in options.items():
    with pytest.raises(UserError, match=re.escape(message)) as error:
      _remove(text, state, Transformer(cfg))
    assert "\n" not in str(error.value), text
  orders = {
      "after svd": recipe.State(theta=params, rank=2),
      "after quantize": recipe.State(theta=params, bits=8),
      "after rtn(bits=4)": recipe.State(theta=params, grid=(4, 16, False),
                                        grid_step="rtn(bits=4)"),
      "after awq/smoothquant": recipe.State(theta=params, input_scales={"k": 1.0}),
  }
  for message, earlier in orders.items():
    with pytest.raises(UserError, match=re.escape(message)) as error:
      _remove("remove(keep_heads=0.5)", earlier, Transformer(cfg))
    assert "\n" not in str(error.value), message
  seq2seq = EncoderDecoder(TransformerConfig(vocab_size=8, num_layers=1, num_heads=2,
                                             embed_dim=8, mlp_dim=8, max_len=8))
  with pytest.raises(UserError, match="not an encoder–decoder"):
    _remove("remove(keep_heads=0.5)", state, seq2seq, ml_collections.ConfigDict(
        {"task": "seq2seq"}))
  # Head/neuron masks after removal would cut the narrower layers into num_heads groups.
  shaped = ml_collections.ConfigDict({"model": {"num_heads": 4, "mlp_dim": 32,
                                                "layer_heads": (2, 4), "layer_mlp_dims": ()}})
  for step in ("prune(magnitude, 0.5, pattern=heads)", "prune(sensitivity, 0.25)"):
    with pytest.raises(UserError, match="per-layer shapes"):
      recipe.step_prune(state, recipe.parse_recipe(step)[0], config=shaped, evaluator=None,
                        finetune=None, **QUIET)
  # The whole pipeline refuses the same (before computing anything after the original).
  with pytest.raises(UserError, match="remove before svd"):
    recipe.compress(lm, "svd(rank=2),remove(keep_heads=0.5)", str(tmp_path / "x"), **QUIET)


def test_the_report_table_shows_each_tasks_headline_metric():
  row = {"step": "original", "stored_params": 1, "stored_bytes": 4, "kernel_sparsity": 0.0,
         "kernel_bits": 32.0, "bytes_on_disk": 10, "eval_loss": 3.5}
  mlm = recipe.format_table([dict(row, eval_mlm_perplexity=33.1, eval_mlm_accuracy=0.1)])
  assert "| MLM ppl |" in mlm and mlm.endswith("| 33.1000 |")
  lm_table = recipe.format_table([dict(row, eval_perplexity=33.1)])
  assert "| val ppl |" in lm_table
  assert "| accuracy |" in recipe.format_table([dict(row, eval_accuracy=0.9, eval_f1=0.8)])
