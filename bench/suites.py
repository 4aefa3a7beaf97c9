"""Model sizes and step counts of the three suite modes: smoke (CI), cpu, gpu.

A size is a set of dotted overrides of configs/lm/shakespeare_char.py plus a
vocabulary size (tokens are synthetic, so any vocabulary works).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.reparam_bench import KERNELS  # every projection matrix of every block


def lm_size(layers: int, heads: int, width: int, seq: int, batch: int,
            dtype: str = "float32") -> dict[str, Any]:
  return {"model.num_layers": layers, "model.num_heads": heads, "model.embed_dim": width,
          "model.mlp_dim": 4 * width, "seq_len": seq, "batch_size": batch, "model.dtype": dtype}


@dataclasses.dataclass(frozen=True)
class Suite:
  name: str
  # {label: (config overrides, vocabulary)} timed against each other.
  speed_models: dict[str, tuple[dict[str, Any], int]]
  # The model every reparameterization is timed on, and the low-rank rank.
  reparam_model: tuple[dict[str, Any], int]
  lowrank_rank: int
  steps: int
  warmup: int
  memory_steps: int
  fsdp_model: tuple[dict[str, Any], int]
  speed_seconds: float = 0.0  # `speed`: time each model size at least this long
  reparam_subset: tuple[str, ...] | None = None  # labels to time; None = all
  # Names `reparam_model` in the table, and further models every variant is
  # timed on too: {label: (config overrides, vocabulary, low-rank rank)}.
  reparam_model_label: str = ""
  reparam_more: dict[str, tuple[dict[str, Any], int, int]] = dataclasses.field(default_factory=dict)
  memory_variants: tuple[str, ...] | None = None  # labels to probe; None = all
  torch_rounds: int = 10  # vs_torch: alternating rounds of `torch_chunk` steps per side
  torch_chunk: int = 20
  # generate: GPT-2 size of bench/generate_vs_torch.py, prompt and new tokens, calls per side,
  # prompts per call, and where the PyTorch model runs.
  generate: tuple[str, int, int, int, int, str] = ("small", 32, 64, 5, 1, "cpu")


# An override key the benchmark consumes itself: run on the first N devices only.
DEVICES = "bench.devices"

QUICKSTART: tuple[dict[str, Any], int] = ({}, 65)  # the quick-start LM as configured

SMOKE = Suite(
    name="smoke",
    speed_models={"tiny": (lm_size(1, 2, 16, 16, 8), 65)},
    reparam_model=(lm_size(1, 2, 16, 16, 8), 65), lowrank_rank=4,
    steps=2, warmup=1, memory_steps=1,
    fsdp_model=(lm_size(1, 2, 16, 16, 8), 65),
    # Every compile costs seconds: CI checks the machinery on a few variants.
    reparam_subset=("dense", "lowrank(r=4)", "lora(r=8)"),
    memory_variants=("dense",), torch_rounds=2, torch_chunk=2,
    generate=("tiny", 5, 8, 2, 2, "cpu"))

CPU = Suite(
    name="cpu",
    # The quick start runs as config.perf.cpu_devices (2) devices; the
    # one-device row measures what that data parallelism buys.
    speed_models={"quickstart (L4 D128 T64 B12)": QUICKSTART,
                  "quickstart, 1 CPU device": ({DEVICES: 1}, 65),
                  "width 1024 (L2 D1024 T64 B8)": (lm_size(2, 16, 1024, 64, 8), 65),
                  "width 1024, 1 CPU device": ({**lm_size(2, 16, 1024, 64, 8), DEVICES: 1}, 65)},
    # One device: at widths ≥ 512 splitting the CPU into two devices is slower
    # (see the width-1024 rows), and earlier tables were taken this way.
    reparam_model=({**lm_size(2, 8, 512, 64, 8), DEVICES: 1}, 65), lowrank_rank=64,
    reparam_model_label="width 512 (L2 D512 T64 B8, 1 device)",
    # The quick start as it trains (2 CPU devices); rank = width / 4 as at width 512.
    reparam_more={"quickstart (L4 D128 T64 B12)": (QUICKSTART[0], QUICKSTART[1], 32)},
    steps=15, warmup=3, memory_steps=2, speed_seconds=10.0,
    fsdp_model=({"batch_size": 16}, 65))  # the quick-start LM; the batch must split 8 ways

# GPT-2-medium shape (24 layers, 16 heads, width 1024, GPT-2 vocabulary) in
# bf16 at context 1024, on one accelerator.
_GPT2_MEDIUM = (lm_size(24, 16, 1024, 1024, 8, "bfloat16"), 50257)
GPU = Suite(
    name="gpu",
    speed_models={"gpt2-medium bf16 (T1024 B8)": _GPT2_MEDIUM,
                  "quickstart (L4 D128 T64 B12)": QUICKSTART},
    reparam_model=_GPT2_MEDIUM, lowrank_rank=128,
    steps=20, warmup=5, memory_steps=3,
    fsdp_model=({"batch_size": 16}, 65),
    generate=("small", 32, 64, 5, 8, "cuda"))

SUITES = {s.name: s for s in (SMOKE, CPU, GPU)}


# One row per registered transform (bench.run --only reparam): its label, the
# rules it trains with (KERNELS = every projection matrix of every block; `{rank}`
# is the suite's low-rank rank) and the transforms the row covers.  Adapters freeze
# everything else, as fine-tuning does; storage formats (packed, q4, sparse24,
# qweight, frozen) hold frozen kernels and train the rest of the model.
_FROZEN_REST = (r".*", "frozen")
REPARAM_ROWS: tuple[tuple[str, tuple, tuple[str, ...]], ...] = (
    ("dense", (), ()),
    ("identity", ((".*", "identity"),), ("identity",)),
    ("lowrank(r={rank})", ((KERNELS, "lowrank(rank={rank})"),), ("lowrank",)),
    ("lora(r=8)", ((KERNELS, "lora(rank=8, alpha=16)"), _FROZEN_REST), ("lora", "frozen")),
    ("dora(r=8)", ((KERNELS, "lora(rank=8, alpha=16)|magnitude"), _FROZEN_REST),
     ("lora", "magnitude")),
    ("vera(r={rank})", ((KERNELS, "vera(rank={rank})"), _FROZEN_REST), ("vera",)),
    ("ia3", ((KERNELS, "ia3"), _FROZEN_REST), ("ia3",)),
    ("delta", ((KERNELS, "delta"),), ("delta",)),
    ("spherical", ((KERNELS, "spherical"),), ("spherical",)),
    ("weightnorm", ((KERNELS, "weightnorm"),), ("weightnorm",)),
    ("hypersphere", ((KERNELS, "hypersphere"),), ("hypersphere",)),
    ("variational", ((KERNELS, "variational"),), ("variational",)),
    ("latent(dim={rank})", ((KERNELS, "latent(dim={rank})"),), ("latent",)),
    ("masked(50%)", ((KERNELS, "mask(sparsity=0.5)"),), ("mask",)),
    ("fake-quant(int8)", ((KERNELS, "quant(bits=8)"),), ("quant",)),
    ("qweight(int8)|smooth", ((KERNELS, "qweight(bits=8)|smooth"),), ("qweight", "smooth")),
    ("packed(W4g128) + lora(r=8)",
     ((KERNELS, "packed(bits=4, group=128)|lora(rank=8, alpha=16)"), _FROZEN_REST), ("packed",)),
    ("qlora(nf4, r=8)",
     ((KERNELS, "q4(format=nf4, block_size=64)|lora(rank=8, alpha=16)"), _FROZEN_REST), ("q4",)),
    ("sparse24 + lora(r=8)",
     ((KERNELS, "sparse24|lora(rank=8, alpha=16)"), _FROZEN_REST), ("sparse24",)),
)


def reparam_variants(rank: int, registered: set[str]) -> tuple[dict[str, tuple], list[str]]:
  """({label: config.reparam.rules}, notes): a row per registered transform.

  A row whose transforms are not all registered is left out with a note; a
  registered transform no row covers gets a note too, so the table says what
  it does not time.
  """
  variants: dict[str, tuple] = {}
  notes = []
  covered: set[str] = set()
  for label, rules, names in REPARAM_ROWS:
    label = label.format(rank=rank)
    missing = [n for n in names if n not in registered]
    if missing:
      notes.append(f"{label} skipped: transform {missing[0]!r} is not registered in "
                   "reparam_jax.reparam")
      continue
    covered.update(names)
    variants[label] = tuple((path, spec.format(rank=rank)) for path, spec in rules)
  for name in sorted(registered - covered):
    notes.append(f"{name}: no row in bench/suites.py REPARAM_ROWS, not timed")
  return variants, notes
