"""LoRA's random start: A's distribution (PEFT's conventions) and the key that draws it.

PEFT (and Hu et al.'s loralib) draw lora_A, a `[r, d_in]` torch weight, with
`kaiming_uniform_(a=√5)`: U(−b, b) with b = gain·√(3/fan_in), gain = √(2/(1+a²))
= √(1/3), so b = 1/√d_in and std = 1/√(3·d_in).  PEFT's `init_lora_weights=
"gaussian"` draws N(0, (1/r)²).  Our A is that weight transposed, `[d_in, r]`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from reparam_jax.config.base import base_config
from reparam_jax.config.validate import validate_config
from reparam_jax.errors import UserError
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.rules import parse_spec
from tests.helpers import tiny_args

D_IN, D_OUT, R = 400, 50, 50  # 20,000 entries of A: std within ~1% of its true value


def _a(spec, key=1, shape=(D_IN, D_OUT)):
  node = parse_spec(spec)
  w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  return np.asarray(node.from_dense(w, jax.random.key(key))["lora_a"], np.float64)


def test_default_a_is_peft_kaiming_uniform():
  a = _a(f"lora(rank={R})")
  bound = 1 / np.sqrt(D_IN)
  assert np.abs(a).max() <= bound
  assert np.abs(a).max() > 0.99 * bound  # uniform up to the bound, not a narrower law
  assert a.std() == pytest.approx(1 / np.sqrt(3 * D_IN), rel=0.03)
  np.testing.assert_array_equal(a, _a(f"lora(rank={R}, init=kaiming)"))
  assert not np.any(parse_spec(f"lora(rank={R})").from_dense(
      jnp.ones((D_IN, D_OUT)), jax.random.key(1))["lora_b"])


def test_the_other_random_inits_are_named_options():
  gaussian = _a(f"lora(rank={R}, init=gaussian)")  # PEFT's init_lora_weights="gaussian"
  assert gaussian.std() == pytest.approx(1 / R, rel=0.03)
  assert abs(gaussian.mean()) < 3 / R / np.sqrt(gaussian.size)
  fan_in = _a(f"lora(rank={R}, init=normal_fan_in)")  # N(0, 1/d_in)
  assert fan_in.std() == pytest.approx(1 / np.sqrt(D_IN), rel=0.03)
  assert np.abs(fan_in).max() > 2 / np.sqrt(D_IN)  # a Gaussian's tail, not a uniform's bound
  # Each starts at the base model (B = 0) and trains on the unmodified W₀.
  for init in ("kaiming", "gaussian", "normal_fan_in"):
    assert parse_spec(f"lora(rank=2, init={init})").outer.keeps_base
  for init in ("pissa", "olora", "loftq"):
    assert not parse_spec(f"lora(rank=2, init={init})").outer.keeps_base


def test_from_scratch_draws_the_same_law():
  node = parse_spec(f"lora(rank={R})")
  theta = node.init_from(jax.random.key(3), jnp.zeros((D_IN, D_OUT)))
  a = np.asarray(theta["lora_a"], np.float64)
  assert np.abs(a).max() <= 1 / np.sqrt(D_IN)
  assert a.std() == pytest.approx(1 / np.sqrt(3 * D_IN), rel=0.03)


def test_an_unknown_init_is_a_one_line_user_error():
  config = base_config()
  config.reparam.rules = ((r".*", "lora(rank=2, init=xavier)"),)
  with pytest.raises(UserError) as checked:
    validate_config(config)
  with pytest.raises(UserError) as built:  # a spec used without config validation
    parse_spec("lora(rank=2, init=xavier)").check((8, 8))
  for e in (checked, built):
    message = str(e.value)
    assert "\n" not in message and "init='xavier'" in message and "kaiming" in message


# --- the key the trainer draws A with when it starts from a dense checkpoint ----------------

QV = r"block_\d+/attn/(query|value)/kernel"


class _Started(Exception):
  """Raised by the patched `adopt_dense` to stop the run once it has converted the checkpoint."""


def _adopted_at_start(tmp_path, raw, tfds, seed, monkeypatch):
  """The θ the trainer's `init_from` start computes (`rp.adopt_dense` in training/loop.py)
  for seed `seed`; the checkpoint is the model's own dense view, and the run stops there."""
  from reparam_jax import train
  from reparam_jax.hf import pretrained

  real = Reparam.adopt_dense

  def adopt_and_stop(self, checkpoint_params, model_params, *args, **kwargs):
    if not isinstance(checkpoint_params, str):  # adopt_dense's own call for a scanned stack
      return real(self, checkpoint_params, model_params, *args, **kwargs)
    dense = jax.tree.map(np.asarray, meta.unbox(self.to_dense(model_params)))
    raise _Started(real(self, dense, model_params, *args, **kwargs))

  monkeypatch.setattr(pretrained, "load_params", lambda path, keep_packed=False: "the checkpoint")
  monkeypatch.setattr(Reparam, "adopt_dense", adopt_and_stop)
  args = tiny_args(str(tmp_path / f"run_{seed}"), raw, tfds, num_steps=1, seed=seed,
                   init_from=str(tmp_path / "no_such_checkpoint"))
  args.append(f"--config.reparam.rules=((r'{QV}', 'lora(rank=2)'),)")
  with pytest.raises(_Started) as started:
    train.main(args)
  q = meta.unbox(started.value.args[0])["block_0"]["attn"]["query"]["kernel"]
  return np.asarray(q["lora_a"])


@pytest.mark.heavy  # two trainer starts: a compile each, about 25 s on the shared 2-core CPU
def test_init_from_draws_lora_a_from_the_run_seed(tmp_path, raw_data_dir, tfds_dir, monkeypatch):
  a0 = _adopted_at_start(tmp_path / "first", raw_data_dir, tfds_dir, 0, monkeypatch)
  a1 = _adopted_at_start(tmp_path / "second", raw_data_dir, tfds_dir, 1, monkeypatch)
  assert np.any(a0) and not np.array_equal(a0, a1)


def _tiny_lora_model():
  """(Reparam, a two-layer MLP whose `hidden` kernel it turns into LoRA, its dense params)."""
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2, name="out")(jnp.tanh(nn.Dense(4, name="hidden")(x)))

  dense = MLP().init(jax.random.key(1), jnp.zeros((1, 6)))["params"]
  rp = Reparam.from_config({"rules": ((r"hidden/kernel", "lora(rank=2)"),)})
  return rp, rp.wrap(MLP()), jax.tree.map(np.asarray, dense)


def test_adopt_dense_draws_a_from_its_key():
  """The same key gives the same A (a rerun of a seed starts where it did), another key
  another A; the key is required, so no caller silently shares one."""
  rp, model, dense = _tiny_lora_model()
  params = model.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
  first, again, other = (
      np.asarray(rp.adopt_dense(dense, params, jax.random.key(k))["hidden"]["kernel"]["lora_a"])
      for k in (7, 7, 8))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  with pytest.raises(TypeError):
    rp.adopt_dense(dense, params)  # pylint: disable=no-value-for-parameter
