"""SST-2 from the pretrained all-MiniLM-L6-v2: fine-tuning, adapters, regularizers, distillation.

Every row starts from the real Hugging Face folder
($REPARAM_DATA_DIR/models/all-MiniLM-L6-v2) with the same budget as the
PyTorch peer of bench/minilm_vs_torch.py (600 steps × batch 32 ≈ 0.29 epoch,
AdamW, 6% warm-up, linear decay); configs/sst2/minilm_*.py hold each method.
The distilled student reads this ablation's own full fine-tuning run (same
seed) as its teacher and initial weights, so it runs after it.

  python -m reparam_jax.ablate experiments/sst2_pretrained.py --workdir=runs/ablate/sst2_pretrained

Two rows are not training runs: int8 post-training quantization and the
`compress` pipeline are configs with `compress.recipe`, which `train` runs as
the compression of their `init_from` (reparam_jax/compression/from_config.py);
their done.json carries the same metrics.  "bytes on disk" is the params
checkpoint as orbax wrote it (compressed): the compressed rows' file and, for
reference, the fine-tuned model's (in those rows' done.json,
compress/original_disk_bytes).

Each trained row's learning rate is chosen among four (its config's ÷3, ×1, ×3
and ×9, as in experiments/adapters.py, whose docstring says why the range
reaches ×9) on 2,000 sentences held out of the training split: every setting
trains a third of the row's steps and the best held-out accuracy is kept
(successive halving with η = 4 and min_fraction 1/3, one rung).  The row then
trains at its choice with seeds 0, 1, 2 and is evaluated once on the dev set;
rows are compared with full fine-tuning by a paired bootstrap over the seeds
and the 872 dev sentences.  About 44 short and 48 full runs: 6–7 h on the
2-core CPU.  Three rows (full fine-tuning, LoRA q,v r=8, LoRA all r=8) are
experiments/adapters.py's, with the same configs and search (a test keeps them
so): given the same --workdir, the second of the two ablations finds their 12
tuning runs and 9 reported runs done (points are named by their overrides;
each call rewrites ROOT/tuning/choices.json and the tables with its own rows).

Results: experiments/results/sst2_pretrained/ (its README: commits, wall
times); the committed table predates the tuning and the paired tests: one
seed, learning rates as configured.
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot, Variant
from reparam_jax.sweeps.tuning import Tuning, around

FULL = "full fine-tuning"
HOLDOUT = {"data.holdout_examples": 2000, "data.evaluate_on": "holdout"}


def row(config: str, lr: float, **overrides) -> Variant:
  """A row tuned over its config's learning rate `lr`: ÷3, ×1, ×3 and ×9 (see the docstring)."""
  return Variant({"config": f"configs/sst2/{config}.py", **overrides},
                 search={"optimizer.lr": [*around(lr), round(lr * 9, 8)]})


def get_experiment() -> Experiment:
  dropout_off = {f"model.{k}_dropout": 0.0 for k in ("embed", "attention", "residual")}
  return Experiment(
      name="sst2_pretrained",
      description="SST-2 dev accuracy from the pretrained all-MiniLM-L6-v2 (22.7M).",
      variants={
          FULL: row("minilm_finetune", 1e-4),
          "weight decay 0.1": row("minilm_finetune", 1e-4, **{"optimizer.weight_decay": 0.1}),
          "no dropout": row("minilm_finetune", 1e-4, **dropout_off),
          "L2-SP": row("minilm_l2sp", 1e-4),
          "L1": row("minilm_l1", 1e-4),
          "LoRA q,v r=8": row("minilm_lora", 1e-3),
          "LoRA all r=8": row("minilm_lora_all", 1e-3),
          "projection head, frozen encoder": row("minilm_projection_frozen", 3e-3),
          "projection head": row("minilm_projection", 1e-4),
          # The rows below start from this table's own full fine-tuning run (same seed);
          # they keep their configs' learning rates (a tuned row cannot read another row's
          # run), so their search budget is 1 setting: the table says "not searched".
          "distilled 3-layer student": {"config": "configs/sst2/minilm_distill.py",
                                        "init_from": f"{{variant:{FULL}}}",
                                        "distill.teacher": f"{{variant:{FULL}}}"},
          "MLP rank 64 (SVD) + fine-tuning": {"config": "configs/sst2/minilm_lowrank.py",
                                              "init_from": f"{{variant:{FULL}}}"},
          "50% magnitude pruning + fine-tuning": {"config": "configs/sst2/minilm_prune.py",
                                                  "init_from": f"{{variant:{FULL}}}"},
          "full fine-tuning, 1 epoch": row("minilm_finetune", 1e-4, num_steps=2105,
                                           **{"optimizer.warmup_steps": 126}),
          "LoRA all r=4": row("minilm_lora_all_r4", 1e-3),
          "int8 post-training quantization": {"config": "configs/sst2/minilm_int8.py",
                                              "init_from": f"{{variant:{FULL}}}"},
          "compress: prune 50% + int8 + fine-tuning": {"config": "configs/sst2/minilm_compress.py",
                                                       "init_from": f"{{variant:{FULL}}}"},
      },
      reference=FULL,
      seeds=3,
      tuning=Tuning("eval/accuracy", goal="max", holdout=HOLDOUT, eta=4, min_fraction=1 / 3,
                    allow_unequal=True),
      metrics=[
          Metric("eval/accuracy", "dev accuracy", fmt=".3f", goal="max"),
          Metric("params/trainable", "trainable params", fmt="si"),
          Metric("params/bytes", "param bytes", fmt="si"),
          Metric("params/disk_bytes", "bytes on disk", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".0f"),
      ],
      plots=[Plot(x="params/bytes", y="eval/accuracy", logx=True)],
      curves=("train/loss", "eval/accuracy"),
  )
