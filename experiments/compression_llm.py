"""One-shot compression of the quick-start LM: calibration-based methods against their baselines.

The language model is the quick-start char-level Transformer (configs/lm/shakespeare_char.py:
4 layers, width 128, MLP 512, context 64, trained 2000 steps here); the issue's larger LM
needs a corpus this machine does not hold offline.  Every compressed row is a config with
`compress.recipe` that `train` runs as the compression of its `init_from`
(reparam_jax/compression/from_config.py), over the block matrices (attention q/k/v/out and
the MLP's two; embeddings, LayerNorms and the tied LM head stay float, as in the papers),
calibrated on 512 training sequences of 64 characters (32,768 tokens, seed 0) drawn by the
task's own loader:

- weights only at 8 bits (per output channel), 4 and 3 bits (groups of 128 along d_in,
  asymmetric): round-to-nearest (`rtn`), GPTQ, AWQ (its scale and clip search, then RTN);
- W8A8 (int8 weights per channel, int8 activations per token at run time): without
  migration, and SmoothQuant (α = 0.5);
- 50 % unstructured and 2:4 sparsity: magnitude (per layer), SparseGPT, Wanda (and Wanda's
  scores compared per layer instead of per output, the paper's comparison-group ablation);
- structured: one head of 4 and half of the MLP units of every block removed (Wanda-style
  activation scores), alone and followed by GPTQ (groups of 32: the 3 remaining heads
  give attn/out 96 inputs);
- GPTQ on top of low-rank (the rank-32 model trained from scratch, configs/lm/
  shakespeare_char_lowrank.py, factors recovered exactly by `svd(rank=32)`, each factor
  quantized; `gptq.apply_factors`) and of a LoRA-merged model (LoRA r=8 trained 500 steps on
  the float model, configs/lm/shakespeare_char_lora.py, merged when `compress` loads it).

Each compressed row stores what it claims (packed codes, 2:4 values + indices), and
"param bytes" is the stored arrays' bytes (the whole model: embeddings, norms and head
included) and "bytes on disk" that params checkpoint as orbax wrote it (the float model
writes none of its own here; its compressed rows' done.json hold its size,
compress/original_disk_bytes).  The papers' direction to look for: GPTQ ≤ RTN perplexity at 4 and 3 bits,
SparseGPT and Wanda ≤ magnitude at 50 % and 2:4.

  python -m reparam_jax.ablate experiments/compression_llm.py --workdir=runs/ablate/compression_llm

Results: experiments/results/compression_llm/ (its README: commit, machine, wall time).
"""

from reparam_jax.sweeps.experiment import Experiment, Metric

DENSE = "configs/lm/shakespeare_char.py"
FLOAT = "float (trained, 2000 steps)"
LOWRANK = "low-rank r=32 (trained from scratch)"
LORA = "LoRA r=8 on the float model, merged"
CALIBRATION = "calibration(n=512, length=64), "


def _compressed(source: str, recipe: str) -> dict:
  return {"config": DENSE, "init_from": f"{{variant:{source}}}",
          "compress.recipe": CALIBRATION + recipe}


ROWS = {  # label → (the trained row it compresses, recipe)
    "W8 RTN": (FLOAT, "rtn(bits=8, group=0)"),
    "W8 GPTQ": (FLOAT, "gptq(bits=8, group=0)"),
    "W4g128 RTN": (FLOAT, "rtn(bits=4)"),
    "W4g128 GPTQ": (FLOAT, "gptq(bits=4)"),
    "W4g128 GPTQ act-order": (FLOAT, "gptq(bits=4, act_order=True)"),
    "W4g128 AWQ": (FLOAT, "awq(bits=4)"),
    "W3g128 RTN": (FLOAT, "rtn(bits=3)"),
    "W3g128 GPTQ": (FLOAT, "gptq(bits=3)"),
    "W3g128 GPTQ act-order": (FLOAT, "gptq(bits=3, act_order=True)"),
    "W3g128 AWQ": (FLOAT, "awq(bits=3)"),
    "W8A8 RTN (no migration)": (FLOAT, "smoothquant(migrate=False)"),
    "W8A8 SmoothQuant a=0.5": (FLOAT, "smoothquant(alpha=0.5)"),
    "50% magnitude": (FLOAT, "prune(magnitude, 0.5)"),
    "50% SparseGPT": (FLOAT, "sparsegpt(sparsity=0.5)"),
    "50% Wanda": (FLOAT, "wanda(sparsity=0.5)"),
    "50% Wanda, compared per layer": (FLOAT, "wanda(sparsity=0.5, compare='layer')"),
    "2:4 magnitude": (FLOAT, "prune(magnitude, 0.5, pattern='2:4')"),
    "2:4 SparseGPT": (FLOAT, "sparsegpt(sparsity='2:4')"),
    "2:4 Wanda": (FLOAT, "wanda(sparsity='2:4')"),
    "structured: 3 of 4 heads, half the MLP units": (
        FLOAT, "remove(keep_heads=0.75, keep_neurons=0.5, score='activation')"),
    # 3 heads of 32 dims: attn/out's d_in is 96, so groups of 32 (128 does not divide it)
    "structured as above, then W4g32 GPTQ": (
        FLOAT, "remove(keep_heads=0.75, keep_neurons=0.5, score='activation'), "
               "gptq(bits=4, group=32)"),
    "low-rank r=32, float factors": (LOWRANK, "svd(rank=32)"),
    "low-rank r=32, W4g128 RTN factors": (LOWRANK, "svd(rank=32), rtn(bits=4)"),
    "low-rank r=32, W4g128 GPTQ factors": (LOWRANK, "svd(rank=32), gptq(bits=4)"),
    "LoRA-merged W4g128 RTN": (LORA, "rtn(bits=4)"),
    "LoRA-merged W4g128 GPTQ": (LORA, "gptq(bits=4)"),
    "LoRA-merged W3g128 RTN": (LORA, "rtn(bits=3)"),
    "LoRA-merged W3g128 GPTQ": (LORA, "gptq(bits=3)"),
}


def get_experiment() -> Experiment:
  return Experiment(
      name="compression_llm",
      description="Quick-start char LM (4 layers, width 128): one-shot quantization and "
                  "pruning, calibrated methods vs round-to-nearest / magnitude.",
      variants={
          FLOAT: {"config": DENSE},
          LOWRANK: {"config": "configs/lm/shakespeare_char_lowrank.py"},
          LORA: {"config": "configs/lm/shakespeare_char_lora.py",
                 "init_from": f"{{variant:{FLOAT}}}", "num_steps": 500},
          **{label: _compressed(*row) for label, row in ROWS.items()},
      },
      seeds=1,  # one trained model; the one-shot methods are deterministic given the seed
      metrics=[
          Metric("eval/perplexity", "val ppl", fmt=".4f", goal="min"),
          Metric("eval/loss", "val loss", fmt=".4f", goal="min"),
          Metric("compress/kernel_bits", "bits / block weight", fmt=".2f"),
          Metric("compress/kernel_sparsity", "block sparsity", fmt=".2f"),
          Metric("params/bytes", "param bytes", fmt="si"),
          Metric("params/disk_bytes", "bytes on disk", fmt="si"),
      ],
  )
