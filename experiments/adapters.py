"""SST-2 from the pretrained all-MiniLM-L6-v2: the adapter family against full fine-tuning.

Every row starts from the real Hugging Face folder
($REPARAM_DATA_DIR/models/all-MiniLM-L6-v2) with sst2_pretrained's budget
(600 steps × batch 32, AdamW, 6% warm-up, linear decay); configs/sst2/minilm_*.py
hold each method and say why its learning rate is what it is.  The adapter rows
put their adapters on the attention query and value (Hu et al.'s GLUE setting),
except (IA)³ (keys, values, FFN activation, as its paper) and the last two rows,
which adapt every block matrix so that QLoRA, whose point is the 4-bit base of
all of them, has its float-base twin beside it.

  python -m reparam_jax.ablate experiments/adapters.py --workdir=runs/ablate/adapters

"frozen bytes" is what the optimizer never updates (done.json's
params/frozen_bytes): the base an adapter is trained on, and the embeddings,
LayerNorms and pooler the `lora` freezing keeps fixed.  Results:
experiments/results/adapters/ (its README: commits, wall times, seeds).
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot


def get_experiment() -> Experiment:
  return Experiment(
      name="adapters",
      description="SST-2 dev accuracy of the adapter family on the pretrained MiniLM (22.7M).",
      variants={
          "full fine-tuning": {"config": "configs/sst2/minilm_finetune.py"},
          "LoRA q,v r=8": {"config": "configs/sst2/minilm_lora.py"},
          "rsLoRA q,v r=8": {"config": "configs/sst2/minilm_rslora.py"},
          "DoRA q,v r=8": {"config": "configs/sst2/minilm_dora.py"},
          "PiSSA q,v r=8": {"config": "configs/sst2/minilm_pissa.py"},
          "VeRA q,v r=256": {"config": "configs/sst2/minilm_vera.py"},
          "(IA)3 k,v,ff": {"config": "configs/sst2/minilm_ia3.py"},
          "LoRA all r=8": {"config": "configs/sst2/minilm_lora_all.py"},
          "QLoRA all r=8 (NF4 base)": {"config": "configs/sst2/minilm_qlora.py"},
      },
      seeds=3,
      metrics=[
          Metric("eval/accuracy", "dev accuracy", fmt=".3f", goal="max"),
          Metric("params/trainable", "trainable params", fmt="si"),
          Metric("params/frozen_bytes", "frozen bytes", fmt="si"),
          Metric("params/bytes", "param bytes", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".0f"),
      ],
      plots=[Plot(x="params/trainable", y="eval/accuracy", logx=True)],
      curves=("train/loss", "eval/accuracy"),
  )
