"""Report numbers on a tiny config match hand counts; the CLI builds the trainer's model."""

from __future__ import annotations

import os
import textwrap

import flax.linen as nn
import jax
import ml_collections
import pytest

from reparam_jax.config import load as config_load
from reparam_jax.hf import pretrained
from reparam_jax.perf.reparam_report import model_rows
from reparam_jax.reparam import Reparam, format_report
from reparam_jax.report import main
from reparam_jax.tasks import make_task
from reparam_jax.training import freezing, steps
from tests.helpers import REPO

MODEL = dict(vocab_size=32, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=8)


def _config(rules, **reparam_extra):
  c = ml_collections.ConfigDict()
  c.seq_len = 8
  c.model = ml_collections.ConfigDict(MODEL)
  c.reparam = ml_collections.ConfigDict(dict(rules=rules, **reparam_extra))
  return c


def test_report_matches_hand_counts():
  rules = ((r"block_0/mlp/fc_(in|out)/kernel", "lowrank(rank={rank})"),
           (r"block_0/attn/query/kernel", "lora(rank=2)"))
  rows = model_rows(_config(rules, rank=4), tokens_per_seq=8)
  by_path = {r["path"]: r for r in rows}
  fc_in = by_path["block_0/mlp/fc_in/kernel"]
  # 16x32 kernel at rank 4: r(d_in + d_out) = 4·48 stored; 2·r(d_in + d_out) FLOPs per token.
  assert (fc_in["dense"], fc_in["stored"], fc_in["trainable"]) == (512, 192, 192)
  assert (fc_in["flops_dense"], fc_in["flops"]) == (1024, 384)
  assert fc_in["compression"] == pytest.approx(512 / 192)
  assert fc_in["bits_per_weight"] == pytest.approx(32 * 192 / 512)
  q = by_path["block_0/attn/query/kernel"]
  # LoRA r=2 on 16x16: W0 (256, frozen) + A 16x2 + B 2x16; FLOPs 2·256 + 2·2·(16+16).
  assert (q["dense"], q["stored"], q["trainable"], q["flops"]) == (256, 320, 64, 640)
  total = rows[-1]
  # Whole model: 2,896 dense params (embeddings 640, block 2,224, final LN 32).
  assert total["dense"] == 2896
  assert total["stored"] == 2896 - 2 * 512 + 2 * 192 + 64
  assert total["trainable"] == total["stored"] - 256
  tied = 2 * 32 * 16
  assert total["flops_dense"] == 2 * (4 * 256 + 2 * 512) + tied
  assert total["flops"] == 640 + 3 * 512 + 2 * 384 + tied
  assert total["flops_per_seq"] == 8 * total["flops"]


def test_report_cli_with_override(tmp_path, capsys):
  cfg = tmp_path / "tiny.py"
  cfg.write_text(textwrap.dedent(f"""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.seq_len = 8
        c.model = ml_collections.ConfigDict({MODEL!r})
        c.reparam = ml_collections.ConfigDict()
        c.reparam.rules = ((r"block_0/mlp/fc_(in|out)/kernel", "lowrank(rank={{rank}})"),)
        c.reparam.rank = 4
        return c
  """))
  main([f"--config={cfg}", "--config.reparam.rank=2"])
  out = capsys.readouterr().out
  assert "lowrank(rank=2)" in out and "block_0/mlp/fc_out/kernel" in out
  assert "96" in out  # 2·(16+32) stored per kernel
  with pytest.raises(SystemExit) as e:
    main([f"--config={cfg}", "--config.reparam.rules=(('nope', 'lowrank(rank=2)'),)"])
  assert e.value.code == 2


def test_report_names_the_leaves_weight_decay_acts_on():
  rules = ((r"block_0/mlp/fc_in/kernel", "spherical"),
           (r"block_0/mlp/fc_out/kernel", "variational"),
           (r"block_0/attn/query/kernel", "lowrank(rank=2)|variational"))
  rows = {r["path"]: r for r in model_rows(_config(rules), tokens_per_seq=8)}
  assert rows["block_0/mlp/fc_in/kernel"]["decayed"] == "-"
  assert rows["block_0/mlp/fc_out/kernel"]["decayed"] == "mu"
  assert rows["block_0/attn/query/kernel"]["decayed"] == "u/mu,v/mu"
  assert "weight decay on" in format_report(list(rows.values()))


def test_rule_summary_counts_each_adapter():
  from reparam_jax.reparam.stats import format_rule_summary, rule_summary

  rules = ((r"block_0/attn/(query|value)/kernel", "lora(rank=2)|magnitude"),
           (r"block_0/mlp/fc_out/kernel", "ia3(side=input)"))
  rows = model_rows(_config(rules))
  dora, ia3 = rule_summary(rows)
  # Two 16x16 kernels: A 16x2 + B 2x16 + magnitude 16 trained, W0 256 frozen, float32;
  # FLOPs over dense: 2·2·(16+16) for the adapter and 16 for the column scaling.
  assert (dora["weights"], dora["trainable"]) == (2, 2 * (64 + 16))
  assert (dora["trainable_bytes"], dora["frozen_bytes"]) == (4 * 2 * 80, 4 * 2 * 256)
  assert dora["extra_flops"] == 2 * (2 * 2 * 32 + 16)
  # fc_out 32x16: the input scale (32) trains, the 512-entry kernel is frozen; no matmul added.
  assert (ia3["trainable"], ia3["frozen_bytes"], ia3["extra_flops"]) == (32, 4 * 512, 0)
  assert "lora(rank=2)|magnitude" in format_rule_summary(rows)


# --- The trainer's model: the task's heads and its finetune.freeze ------------------------

def _minilm_config(raw_data_dir):
  if not os.path.isdir(os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")):
    pytest.skip("the MiniLM folder is not in the raw data")
  return os.path.join(REPO, "configs", "sst2", "minilm_projection_frozen.py")


def _module_lines(out):
  """{module: (stored, trainable)} of the report's per-module lines."""
  found = {}
  for line in out.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1].replace(",", "").isdigit():
      found[parts[0]] = tuple(int(p.replace(",", "")) for p in parts[1:])
  return found


def test_report_on_a_classifier_lists_its_heads_and_counts_only_the_unfrozen(
    raw_data_dir, monkeypatch, capsys):
  monkeypatch.setenv("REPARAM_DATA_DIR", raw_data_dir)
  main([f"--config={_minilm_config(raw_data_dir)}", "--config.seq_len=16"])
  out = capsys.readouterr().out
  modules = _module_lines(out)
  # MiniLM's pooler (a 384x384 Dense) comes with the checkpoint and is frozen; the fresh
  # head (projection 384→128, LayerNorm, 128→2) is all that trains (finetune.freeze).
  head = 384 * 128 + 128 + 2 * 128 + 128 * 2 + 2
  assert modules["pooler"] == (384 * 384 + 384, 0)
  assert modules["classifier"] == (head, head)
  assert modules["block_5"][1] == 0 and modules["embed"][1] == 0
  assert f"trainable {head:,};" in out
  assert f"of {22_713_216 + head:,} dense params" in out  # MiniLM's BertModel + the head


@pytest.mark.heavy
@pytest.mark.parametrize("freeze", [dict(freeze="top_k", top_k=2), dict(freeze="none")])
def test_report_counts_what_the_trainer_counts(raw_data_dir, tfds_dir, monkeypatch, freeze):
  """The report's model is the trainer's (`make_task(...).model()`, which reads the data),
  and its trainable total the trainer's `params/trainable`."""
  monkeypatch.setenv("REPARAM_DATA_DIR", raw_data_dir)
  args = [f"--config={_minilm_config(raw_data_dir)}", "--config.seq_len=16",
          f"--config.data.raw_dir={raw_data_dir}", f"--config.data.tfds_dir={tfds_dir}"] + [
          f"--config.finetune.{k}={v}" for k, v in freeze.items()]
  config = pretrained.resolve(config_load.load(args)[0])
  task = make_task(config, None)
  model = Reparam.from_config(config.reparam).wrap(task.model())
  abstract = jax.eval_shape(steps.init_variables_fn(model, task.init_args()), jax.random.key(0))
  params = nn.meta.unbox(abstract["params"])
  rp = Reparam.from_config(config.reparam)
  mask = freezing.combine(rp.trainable_mask(params),
                          freezing.trainable_mask(params, config.get("finetune")))
  rows = model_rows(config)
  assert rows[-1]["stored"] == steps.count_params(params)
  assert rows[-1]["trainable"] == freezing.count_trainable(params, mask)
