"""VeRA and (IA)³ kernels against PEFT's torch layers on the same weights (py3.11 peer leg).

PEFT stores torch `[d_out, d_in]` weights; we feed the transposes to our kernels.
VeRA's random pair is PEFT's own (sliced as PEFT slices it), so the test checks
the layout and the vector placement, not the projection generator.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.reparam.transforms.ia3 import IA3Kernel
from reparam_jax.reparam.transforms.vera import VeRAKernel

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def _np(t):
  return t.detach().double().numpy()


class _Net(torch.nn.Module):
  def __init__(self, bias: bool):
    super().__init__()
    self.small = torch.nn.Linear(6, 5, bias=bias)
    self.big = torch.nn.Linear(8, 7, bias=bias)

  def forward(self, x):
    return self.small(x[..., :6]), self.big(x)


def test_vera_kernel_equals_peft_vera_layers_of_two_shapes():
  torch.manual_seed(0)
  net = peft.get_peft_model(_Net(bias=False),
                            peft.VeraConfig(r=3, target_modules=["small", "big"], d_initial=0.1))
  x = torch.randn(4, 8)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if "vera_lambda" in name:
        p.copy_(torch.randn_like(p))
    y_small, y_big = net(x)
  for layer, y, d_in in (("small", y_small, 6), ("big", y_big, 8)):
    mod = dict(net.named_modules())[f"base_model.model.{layer}"]
    w0 = _np(mod.base_layer.weight)
    a_full, b_full = _np(mod.vera_A["default"]), _np(mod.vera_B["default"])  # [r, 8], [7, r]
    d_out = w0.shape[0]
    kernel = VeRAKernel(jnp.asarray(w0.T, jnp.float32),
                        jnp.asarray(a_full[:, :d_in].T, jnp.float32),
                        jnp.asarray(b_full[:d_out].T, jnp.float32),
                        jnp.asarray(_np(mod.vera_lambda_d["default"]), jnp.float32),
                        jnp.asarray(_np(mod.vera_lambda_b["default"]), jnp.float32))
    ours = kernel.left_matmul(jnp.asarray(_np(x)[:, :d_in], jnp.float32))
    np.testing.assert_allclose(ours, _np(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_ia3_kernel_equals_peft_ia3(bias):
  torch.manual_seed(1)
  net = peft.get_peft_model(_Net(bias=bias), peft.IA3Config(
      target_modules=["small", "big"], feedforward_modules=["big"]))
  x = torch.randn(4, 8)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if "ia3_l" in name:
        p.copy_(torch.randn_like(p))
    y_small, y_big = net(x)
  mods = dict(net.named_modules())
  for layer, y, side, d_in in (("small", y_small, "output", 6), ("big", y_big, "input", 8)):
    mod = mods[f"base_model.model.{layer}"]
    w0 = _np(mod.base_layer.weight)
    l = _np(mod.ia3_l["default"]).reshape(-1)
    kernel = IA3Kernel(jnp.asarray(w0.T, jnp.float32), jnp.asarray(l, jnp.float32), side)
    ours = np.asarray(kernel.left_matmul(jnp.asarray(_np(x)[:, :d_in], jnp.float32)), np.float64)
    if bias:
      b0 = _np(mod.base_layer.bias)
      # PEFT scales the bias with the output (side output); a kernel transform cannot:
      # ours equals PEFT with the bias l ⊙ b₀ (docstring of transforms/ia3.py).
      ours = ours + (l * b0 if side == "output" else b0)
    np.testing.assert_allclose(ours, _np(y), rtol=1e-5, atol=1e-5)
