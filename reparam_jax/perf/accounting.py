"""What the trainer logs about speed: model FLOPs per token, TFLOP/s, MFU.

Set up once before the loop (`MfuMeter.for_run`), then each log interval
turns the measured tokens/s per device into `train/model_flops_per_token`,
`train/tflops_per_device` and `train/mfu`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from reparam_jax.models.config import TransformerConfig
from reparam_jax.perf import flops as flops_lib
from reparam_jax.perf import peaks

PyTree = Any


def find_transformer_config(model: nn.Module) -> TransformerConfig | None:
  """The backbone's config of a task model: `model.cfg`, or one field deeper."""
  if isinstance(getattr(model, "cfg", None), TransformerConfig):
    return model.cfg
  if dataclasses.is_dataclass(model):
    for f in dataclasses.fields(model):
      value = getattr(model, f.name, None)
      if isinstance(getattr(value, "cfg", None), TransformerConfig):
        return value.cfg
  return None


@dataclasses.dataclass(frozen=True)
class MfuMeter:
  count: flops_lib.FlopCount
  peak_flops: float  # per device
  peak_source: str

  @classmethod
  def for_run(cls, config: ml_collections.ConfigDict, task: Any,
              params: PyTree) -> "MfuMeter | None":
    """None when the task's model has no Transformer backbone to count.

    A task whose model runs an MLM head on P positions per sequence says so in
    `task.mlm_positions`.
    """
    cfg = find_transformer_config(task.model())
    if cfg is None:
      return None
    perf = config.get("perf") or ml_collections.ConfigDict()
    count = flops_lib.model_flops(cfg, config.seq_len, nn.meta.unbox(params),
                                  config.get("reparam"),
                                  causal_halved=bool(perf.get("causal_attention_halved", False)),
                                  mlm_positions=int(getattr(task, "mlm_positions", 0) or 0))
    peak, source = peaks.device_peak_flops(float(perf.get("peak_flops", 0.0)),
                                           dtype=jnp.dtype(cfg.dtype))
    return cls(count, peak, source)

  def describe(self) -> str:
    attn = "6·L·H·Q·T (causal halved)" if self.count.causal_halved else "12·L·H·Q·T"
    return (f"model FLOPs/token {self.count.per_token:,} = 6·N (N={self.count.matmul_params:,.0f}) "
            f"+ {attn} ({self.count.attention_flops:,}); peak "
            f"{self.peak_flops / 1e12:.3g} TFLOP/s per device ({self.peak_source})")

  def fields(self, tokens_per_sec_per_device: float) -> dict[str, float]:
    achieved = flops_lib.achieved_flops_per_device(self.count.per_token,
                                                   tokens_per_sec_per_device)
    return {"train/model_flops_per_token": float(self.count.per_token),
            "train/tflops_per_device": achieved / 1e12,
            "train/mfu": flops_lib.mfu(self.count.per_token, tokens_per_sec_per_device,
                                       self.peak_flops)}
