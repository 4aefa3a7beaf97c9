"""Freezing strategies: the masks, and frozen weights bit-identical after real trainer steps."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint
from reparam_jax.tasks import make_task
from reparam_jax.training import freezing, optim, sharding, steps
from tests.helpers import tiny_args


def _finetune(**kw):
  c = freezing.finetune_section()
  c.update(kw)
  return c


def _encoder_params(**cfg_kw):
  cfg = TransformerConfig(**dict(dict(vocab_size=23, num_layers=3, num_heads=2, embed_dim=8,
                                      mlp_dim=16, max_len=8, causal=False, pre_norm=False,
                                      pooler=True), **cfg_kw))
  params = nn.meta.unbox(jax.eval_shape(lambda: Transformer(cfg).init(
      {"params": jax.random.key(0)}, jnp.zeros((1, 8), jnp.int32)))["params"])
  # The classifier head of reparam_jax.models.heads sits beside the backbone.
  params["classifier"] = {"out": {"kernel": jax.ShapeDtypeStruct((8, 2), jnp.float32)}}
  return params


def _trainable_tops(mask):
  """Top-level keys with any trainable leaf."""
  return sorted(k for k, v in mask.items() if any(jax.tree.leaves(v)))


def test_none_means_no_mask():
  assert freezing.trainable_mask(_encoder_params(), _finetune(freeze="none")) is None


def test_all_but_head_trains_only_the_classifier():
  mask = freezing.trainable_mask(_encoder_params(), _finetune(freeze="all_but_head"))
  assert _trainable_tops(mask) == ["classifier"]


@pytest.mark.parametrize("k,expect", [
    (0, ["classifier", "pooler"]),
    (1, ["block_2", "classifier", "pooler"]),
    (3, ["block_0", "block_1", "block_2", "classifier", "pooler"]),
])
def test_top_k_trains_the_top_blocks_and_what_lies_above(k, expect):
  mask = freezing.trainable_mask(_encoder_params(), _finetune(freeze="top_k", top_k=k))
  assert _trainable_tops(mask) == expect
  assert not any(jax.tree.leaves(mask["embed"]))


def test_top_k_projection_trains_with_the_block_it_feeds():
  params = _encoder_params(layer_dims=(8, 4, 4))
  mask = freezing.trainable_mask(params, _finetune(freeze="top_k", top_k=2))
  assert _trainable_tops(mask) == ["block_1", "block_2", "classifier", "pooler", "proj_1"]


@pytest.mark.parametrize("cfg,msg", [
    (dict(freeze="top_k", top_k=4), "between 0 and the 3 blocks"),
    (dict(freeze="lora"), "needs LoRA adapters"),
    (dict(freeze="bottom"), "unknown finetune.freeze"),
])
def test_bad_settings_are_user_errors(cfg, msg):
  with pytest.raises(UserError, match=msg):
    freezing.trainable_mask(_encoder_params(), _finetune(**cfg))


def test_top_k_rejects_shared_layers():
  with pytest.raises(UserError, match="shares"):
    freezing.trainable_mask(_encoder_params(share_layers=True), _finetune(freeze="top_k"))


def test_combine_accepts_a_prefix_mask():
  a = {"x": True, "y": {"u": True, "v": False}}
  b = {"x": {"p": True, "q": False}, "y": {"u": True, "v": True}}
  assert freezing.combine(a, b) == {"x": {"p": True, "q": False}, "y": {"u": True, "v": False}}
  assert freezing.combine(b, a) == freezing.combine(a, b)
  assert freezing.combine(None, a) is a and freezing.combine(None, None) is None


# ---------------------------------------------------------------------------
# End to end: the real trainer, a tiny 2-layer LM, a few steps.

def _initial_params(args):
  """The params `train.main` starts from: same config, seed and (jitted, sharded) init."""
  config, _ = config_load.load(args)
  task = make_task(config, None)
  model = Reparam.from_config(config.reparam).wrap(task.model())
  mesh = sharding.make_mesh(config.mesh)
  state, _, _ = steps.create_train_state(
      steps.init_variables_fn(model, task.init_args()),
      lambda p: optim.make_optimizer(config.optimizer, config.num_steps), mesh,
      sharding.rules_tuple(config.axis_rules), jax.random.key(config.seed))
  return state.params


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
          for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("overrides,trainable", [
    # top block and the final LayerNorm train; embeddings and block_0 are frozen.
    (dict(finetune__freeze="top_k", finetune__top_k=1), r"^(block_1|ln_final)/"),
    # only the LoRA adapters train; every base weight, LN and embedding is frozen.
    pytest.param(
        dict(finetune__freeze="lora",
             reparam__rules="((r'block_\\d+/attn/(query|value)/kernel', 'lora(rank=2, alpha=2)'),)"),
        r".*/lora_[ab]$", marks=pytest.mark.slow),  # ~40 s on the loaded shared CPU
])
@pytest.mark.heavy
def test_frozen_params_are_bit_identical_after_training(tmp_path, raw_data_dir, tfds_dir,
                                                        overrides, trainable):
  args = tiny_args(str(tmp_path), raw_data_dir, tfds_dir, num_steps=3, model__num_layers=2,
                   checkpoint_every=3, eval_every=3, eval_batch_size=1024,
                   optimizer__warmup_steps=1, optimizer__lr=1e-2, **overrides)
  start = _flat(_initial_params(args))
  train.main(args)
  end = _flat(checkpoint.load_params(str(tmp_path)))
  assert start.keys() == end.keys()
  changed = {k for k in start if not np.array_equal(start[k], end[k])}
  expected = {k for k in start if re.search(trainable, k)}
  assert expected and changed == expected, (sorted(changed ^ expected))


@pytest.mark.parametrize("spec,leaf", [
    ("lora(rank=2)|magnitude", "magnitude"),  # DoRA's magnitude trains with A and B
    ("vera(rank=4)", "vera_d"),
    ("ia3", "ia3_l"),
])
def test_lora_strategy_trains_every_adapter_stage(spec, leaf):
  rules = ((r"block_\d+/attn/(query|value)/kernel", spec),)
  rp = Reparam.from_config({"rules": rules})
  params = _encoder_params()
  dense = {k: v for k, v in params.items() if k != "classifier"}
  theta = jax.eval_shape(lambda: rp.from_dense(jax.tree.map(jnp.zeros_like, dense)))
  theta["classifier"] = params["classifier"]
  mask = freezing.trainable_mask(theta, _finetune(freeze="lora"))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  adapter = [p for p in flat if p.endswith("/" + leaf)]
  assert adapter and all(flat[p] for p in adapter), flat
  assert not flat["block_0/attn/query/kernel/base" + ("/base" if "magnitude" in spec else "")]


def _report_total_trainable(report: str) -> int:
  """The `trainable` cell of the total row of a `format_report` table."""
  lines = report.splitlines()
  end = lines[0].index("trainable") + len("trainable")  # right-aligned under its header
  total = next(line for line in lines if line.startswith("total"))
  return int(total[:end].split()[-1].replace(",", ""))


@pytest.mark.heavy
def test_the_trainers_reparam_report_counts_what_finetune_freeze_trains(tmp_path, raw_data_dir,
                                                                         tfds_dir):
  """WORKDIR/reparam_report.txt's trainable total is the run's (done.json), freezing included."""
  args = tiny_args(str(tmp_path), raw_data_dir, tfds_dir, num_steps=1, model__num_layers=2,
                   checkpoint_every=1, eval_every=1, eval_batch_size=1024,
                   finetune__freeze="top_k", finetune__top_k=1,
                   reparam__rules="((r'block_\\d+/mlp/fc_in/kernel', 'lowrank(rank=2)'),)")
  train.main(args)
  with open(tmp_path / "reparam_report.txt") as f:
    reported = _report_total_trainable(f.read())
  with open(tmp_path / "done.json") as f:
    done = json.load(f)
  assert reported == done["params/trainable"] < done["params/stored"]
