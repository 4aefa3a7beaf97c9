"""`config.init_adapter`: a run starts from a PEFT adapter folder on top of `init_from`.

No torch here (the folder is written by our exporter in PEFT's format; that
peft itself reads and writes the same files is tests/hf/test_peft.py's job),
so this runs in both test legs.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from helpers import run_train_subprocess

from reparam_jax.hf import pretrained
from reparam_jax.hf.peft import export_peft_adapter
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint

QV = r"block_\d+/attn/(query|value)/kernel"


@pytest.mark.heavy
def test_a_run_starts_from_a_peft_adapter(raw_data_dir, tfds_dir, tmp_path):
  folder = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  rp = Reparam.from_config({"rules": ((QV, "lora(rank=8, alpha=16)"),)})
  theta = rp.from_dense(pretrained.load_params(folder), jax.random.key(0))
  b = theta["block_3"]["attn"]["value"]["kernel"]["lora_b"]
  theta["block_3"]["attn"]["value"]["kernel"]["lora_b"] = np.asarray(
      jax.random.normal(jax.random.key(1), b.shape)) * 0.1
  adapter = str(tmp_path / "adapter")
  export_peft_adapter(theta, rp, adapter)

  run = str(tmp_path / "run")
  result = run_train_subprocess(
      ["--config=configs/sst2/minilm_lora.py", f"--workdir={run}", f"--config.init_adapter={adapter}",
       "--config.num_steps=1", "--config.optimizer.lr=1e-12", "--config.optimizer.warmup_steps=0",
       "--config.batch_size=4", "--config.seq_len=16", "--config.encoder.length_buckets=()",
       "--config.eval_every=1000", "--config.checkpoint_every=1"],
      env={"REPARAM_DATA_DIR": raw_data_dir, "TFDS_DATA_DIR": tfds_dir}, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  trained = checkpoint.load_params(run)
  # One step at lr 1e-12 (Adam moves each entry by about lr): the run holds the adapter it
  # started from (its A: PEFT's lora_A transposed back; the non-zero B of block 3).
  for block in ("block_0", "block_3"):
    for leaf in ("lora_a", "lora_b"):
      np.testing.assert_allclose(trained[block]["attn"]["value"]["kernel"][leaf],
                                 theta[block]["attn"]["value"]["kernel"][leaf], atol=1e-9)


def test_init_adapter_needs_init_from():
  from reparam_jax.config.base import base_config
  from reparam_jax.config.validate import validate_config
  from reparam_jax.errors import UserError

  c = base_config()
  c.init_adapter = "/some/adapter"
  with pytest.raises(UserError, match="init_adapter.*needs config.init_from"):
    validate_config(c)
