"""Performance accounting: model FLOPs per token, device peaks, MFU.

  flops.model_flops(cfg, seq_len, params, reparam_cfg) -> FlopCount
  peaks.device_peak_flops(override) -> (FLOP/s per device, source)
"""
