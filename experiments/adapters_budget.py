"""SST-2 from the pretrained all-MiniLM-L6-v2: adapters on q,v at LoRA-all's trainable parameters.

A budget-matched comparison: every row trains as many parameters as the
reference row, LoRA r=8 on every block matrix (331,776 adapter weights + the
770-weight classifier head), with the rank solved by `sweeps/budget.py` from
the same accounting the trainer reports (`params/trainable`).  The rows put
that budget on the attention query and value only (Hu et al.'s placement),
as plain LoRA, rank-stabilized LoRA (α/√r) and DoRA (LoRA plus a trained
magnitude per output column, so a smaller rank).  Each row's learning rate is
chosen on 2,000 sentences held out of the training split (successive halving,
η = 3: the three learning rates at 200 steps, the best one kept), then the row
trains at it for 600 steps with seeds 0, 1, 2 and is evaluated once on the 872
dev sentences.  Differences from the reference are paired bootstraps over the
three seeds and the dev sentences (both drawn with replacement in each resample).

  python -m reparam_jax.ablate experiments/adapters_budget.py --workdir=runs/ablate/adapters_budget

Hardware: 1 CPU host (2 cores), 1 CPU device.  Runtime, wall times and
commits: experiments/results/adapters_budget/README.md.
"""

from reparam_jax.sweeps.budget import Budget
from reparam_jax.sweeps.experiment import Experiment, Metric, Plot, Variant
from reparam_jax.sweeps.tuning import Tuning

REFERENCE = "LoRA all r=8"
LEARNING_RATES = {"optimizer.lr": [3e-4, 1e-3, 3e-3]}  # the same three for every row


def get_experiment() -> Experiment:
  matched = Budget("trainable_params", 1.0, size="rules:rank")
  return Experiment(
      name="adapters_budget",
      description=("SST-2 dev accuracy of q,v adapters at the trainable parameters of LoRA r=8 "
                   "on every block matrix (pretrained MiniLM, 22.7M)."),
      variants={
          REFERENCE: Variant({"config": "configs/sst2/minilm_lora_all.py"},
                             search=LEARNING_RATES),
          "LoRA q,v": Variant({"config": "configs/sst2/minilm_lora.py"},
                              search=LEARNING_RATES, budget=matched),
          "rsLoRA q,v": Variant({"config": "configs/sst2/minilm_rslora.py"},
                                search=LEARNING_RATES, budget=matched),
          "DoRA q,v": Variant({"config": "configs/sst2/minilm_dora.py"},
                              search=LEARNING_RATES, budget=matched),
      },
      reference=REFERENCE,
      seeds=3,
      tuning=Tuning("eval/accuracy", goal="max",
                    holdout={"data.holdout_examples": 2000, "data.evaluate_on": "holdout"}),
      metrics=[
          Metric("eval/accuracy", "dev accuracy", fmt=".3f", goal="max"),
          Metric("params/trainable", "trainable params", fmt="si"),
          Metric("params/bytes", "param bytes", fmt="si"),
          Metric("train/model_flops_per_token", "FLOPs/token", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".0f"),
      ],
      plots=[Plot(x="params/trainable", y="eval/accuracy")],
      curves=("train/loss", "eval/accuracy"),
  )
