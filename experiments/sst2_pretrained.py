"""SST-2 from the pretrained all-MiniLM-L6-v2: fine-tuning, adapters, regularizers, distillation.

Every row starts from the real Hugging Face folder
($REPARAM_DATA_DIR/models/all-MiniLM-L6-v2) with the same budget as the
PyTorch peer of bench/minilm_vs_torch.py (600 steps × batch 32 ≈ 0.29 epoch,
AdamW, 6% warm-up, linear decay); configs/sst2/minilm_*.py hold each method.
The distilled student reads this ablation's own full fine-tuning run (same
seed) as its teacher and initial weights, so it runs after it.

  python -m reparam_jax.ablate experiments/sst2_pretrained.py --workdir=runs/ablate/sst2_pretrained

Results: experiments/results/sst2_pretrained/ (60 min on the 2-core CPU, one
seed).  Still to add: the rows that are not training runs (int8 post-training
quantization and the `compress` pipeline, which the ablation runner cannot run
yet).
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
      },
      seeds=1,  # 3 seeds (--seeds=3) take about 3× as long
      metrics=[
          Metric("eval/accuracy", "dev accuracy", fmt=".3f", goal="max"),
          Metric("params/trainable", "trainable params", fmt="si"),
          Metric("params/bytes", "param bytes", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".0f"),
      ],
      plots=[Plot(x="params/bytes", y="eval/accuracy", logx=True)],
      curves=("train/loss", "eval/accuracy"),
  )
