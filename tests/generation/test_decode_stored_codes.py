"""The decode loop reads packed int8 codes as stored: no float copy hoisted out of it."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from reparam_jax.generation import decode
from reparam_jax.models import Transformer
from reparam_jax.models.config import TransformerConfig
from reparam_jax.reparam import Reparam


def test_the_while_loop_carries_int8_codes_not_a_float_copy():
  # XLA hoists loop-invariant work out of a while loop; without decode._tied_to_step
  # the codes' conversion to float moved out and every step read float32 (4× the bytes).
  cfg = TransformerConfig(vocab_size=32, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=64,
                          max_len=32)
  model = Transformer(cfg)
  params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rp = Reparam.from_config({"rules": ((r"block_\d+/mlp/fc_in/kernel",
                                       "packed(bits=8, group=0, sym=True)"),)})
  packed = meta.unbox(rp.from_dense(params))
  run = decode._decoder(rp.wrap(model), decode.Sampling(temperature=0.0), 4, (), 0)
  ids, mask = decode.left_pad([[1, 2, 3]], 0)
  hlo = run.lower(packed, ids, mask, np.asarray([4], np.int32),
                  jax.random.key(0)).compile().as_text()
  carried = [line for line in hlo.splitlines() if re.search(r"= \(.*\) while\(", line)]
  assert len(carried) == 1
  assert re.search(r"u8\[16,64\]", carried[0])  # the stored codes
  assert not re.search(r"f32\[(1,)?16,64\]", carried[0])  # no float copy of them
