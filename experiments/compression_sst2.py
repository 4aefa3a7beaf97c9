"""One-shot compression of the real all-MiniLM-L6-v2 fine-tuned on SST-2: dev accuracy and bytes.

The model is sst2_pretrained's "full fine-tuning" row (configs/sst2/minilm_finetune.py: the
Hugging Face folder $REPARAM_DATA_DIR/models/all-MiniLM-L6-v2, 600 steps × batch 32),
trained here as this table's first row.  Every other row is a config with
`compress.recipe` that `train` runs as the compression of that run
(reparam_jax/compression/from_config.py), over the six blocks' matrices (attention
q/k/v/out, MLP in/out; embeddings, LayerNorms, pooler and head stay float), calibrated
block by block on 512 SST-2 training sentences (seed 0, padded to the length bucket that
fits the longest, as in training; padding left out of the statistics) read by the
classification task's own loader:

- weights only at 8 bits (per output channel), 4 and 3 bits (groups of 128 along d_in,
  asymmetric): round-to-nearest (`rtn`), GPTQ, AWQ;
- W8A8 (int8 weights per channel, int8 activations per token at run time): without
  migration, and SmoothQuant (α = 0.5);
- 50 % unstructured and 2:4 sparsity: magnitude (per layer), SparseGPT, Wanda;
- sst2_pretrained's two compressed rows beside them: int8 of every matrix
  (configs/sst2/minilm_int8.py) and prune 50 % + int8 + 300 fine-tuning steps
  (configs/sst2/minilm_compress.py).

  python -m reparam_jax.ablate experiments/compression_sst2.py --workdir=runs/ablate/compression_sst2

Results: experiments/results/compression_sst2/ (its README: commit, machine, wall time).
"""

from reparam_jax.sweeps.experiment import Experiment, Metric

FULL = "full fine-tuning (float32)"
CALIBRATION = "calibration(n=512, length=64), "

ROWS = {  # label → recipe, applied to the fine-tuned model
    "W8 RTN": "rtn(bits=8, group=0)",
    "W8 GPTQ": "gptq(bits=8, group=0)",
    "W4g128 RTN": "rtn(bits=4)",
    "W4g128 GPTQ": "gptq(bits=4)",
    "W4g128 AWQ": "awq(bits=4)",
    "W3g128 RTN": "rtn(bits=3)",
    "W3g128 GPTQ": "gptq(bits=3)",
    "W3g128 AWQ": "awq(bits=3)",
    "W8A8 RTN (no migration)": "smoothquant(migrate=False)",
    "W8A8 SmoothQuant a=0.5": "smoothquant(alpha=0.5)",
    "50% magnitude": "prune(magnitude, 0.5)",
    "50% SparseGPT": "sparsegpt(sparsity=0.5)",
    "50% Wanda": "wanda(sparsity=0.5)",
    "2:4 magnitude": "prune(magnitude, 0.5, pattern='2:4')",
    "2:4 SparseGPT": "sparsegpt(sparsity='2:4')",
    "2:4 Wanda": "wanda(sparsity='2:4')",
}


def get_experiment() -> Experiment:
  from_full = {"init_from": f"{{variant:{FULL}}}"}
  return Experiment(
      name="compression_sst2",
      description="SST-2 dev accuracy of the fine-tuned all-MiniLM-L6-v2 (22.7M) under "
                  "one-shot quantization and pruning of its block matrices.",
      variants={
          FULL: {"config": "configs/sst2/minilm_finetune.py"},
          **{label: {"config": "configs/sst2/minilm.py", **from_full,
                     "compress.recipe": CALIBRATION + recipe}
             for label, recipe in ROWS.items()},
          "int8, every matrix (sst2_pretrained)": {"config": "configs/sst2/minilm_int8.py",
                                                   **from_full},
          "prune 50% + int8 + fine-tuning (sst2_pretrained)": {
              "config": "configs/sst2/minilm_compress.py", **from_full},
      },
      seeds=1,
      metrics=[
          Metric("eval/accuracy", "dev accuracy", fmt=".4f", goal="max"),
          Metric("eval/loss", "dev loss", fmt=".4f", goal="min"),
          Metric("compress/kernel_bits", "bits / compressed weight", fmt=".2f"),
          Metric("compress/kernel_sparsity", "sparsity", fmt=".2f"),
          Metric("params/bytes", "param bytes", fmt="si"),
          Metric("params/disk_bytes", "bytes on disk", fmt="si"),
      ],
  )
