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

Results: experiments/results/sst2_pretrained/ (its README: commits, wall
times; one seed).
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

FULL = "full fine-tuning"


def get_experiment() -> Experiment:
  dropout_off = {f"model.{k}_dropout": 0.0 for k in ("embed", "attention", "residual")}
  return Experiment(
      name="sst2_pretrained",
      description="SST-2 dev accuracy from the pretrained all-MiniLM-L6-v2 (22.7M).",
      variants={
          FULL: {"config": "configs/sst2/minilm_finetune.py"},
          "weight decay 0.1": {"config": "configs/sst2/minilm_finetune.py",
                               "optimizer.weight_decay": 0.1},
          "no dropout": {"config": "configs/sst2/minilm_finetune.py", **dropout_off},
          "L2-SP": {"config": "configs/sst2/minilm_l2sp.py"},
          "L1": {"config": "configs/sst2/minilm_l1.py"},
          "LoRA q,v r=8": {"config": "configs/sst2/minilm_lora.py"},
          "LoRA all r=8": {"config": "configs/sst2/minilm_lora_all.py"},
          "projection head, frozen encoder": {"config": "configs/sst2/minilm_projection_frozen.py"},
          "projection head": {"config": "configs/sst2/minilm_projection.py"},
          "distilled 3-layer student": {"config": "configs/sst2/minilm_distill.py",
                                        "init_from": f"{{variant:{FULL}}}",
                                        "distill.teacher": f"{{variant:{FULL}}}"},
          "MLP rank 64 (SVD) + fine-tuning": {"config": "configs/sst2/minilm_lowrank.py",
                                              "init_from": f"{{variant:{FULL}}}"},
          "50% magnitude pruning + fine-tuning": {"config": "configs/sst2/minilm_prune.py",
                                                  "init_from": f"{{variant:{FULL}}}"},
          # Rows added at a later commit (the README says which rows ran where).
          "full fine-tuning, 1 epoch": {"config": "configs/sst2/minilm_finetune.py",
                                        "num_steps": 2105, "optimizer.warmup_steps": 126},
          "LoRA all r=4": {"config": "configs/sst2/minilm_lora_all_r4.py"},
          "int8 post-training quantization": {"config": "configs/sst2/minilm_int8.py",
                                              "init_from": f"{{variant:{FULL}}}"},
          "compress: prune 50% + int8 + fine-tuning": {"config": "configs/sst2/minilm_compress.py",
                                                       "init_from": f"{{variant:{FULL}}}"},
      },
      seeds=1,  # 3 seeds (--seeds=3) take about 3× as long
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
