r"""What the configs/sst2/minilm_*.py configs share: SST-2 from a pretrained MiniLM.

The model is sentence-transformers' all-MiniLM-L6-v2 (BERT architecture, 6
layers, width 384, 12 heads, 22.7M parameters, uncased WordPiece), read from
the Hugging Face folder `$REPARAM_DATA_DIR/models/all-MiniLM-L6-v2`.  Its
architecture and tokenizer come from that folder (reparam_jax/hf/pretrained.py):
nothing here restates them.  The recipe is the standard BERT fine-tuning one
with the budget of the PyTorch peer in bench/ (AdamW lr 1e-4, 6% linear
warm-up then linear decay to 0, batch 32, dynamic padding to ≤ 64 tokens,
600 steps ≈ 0.29 epoch of the 67,349 training sentences).

Not a runnable experiment on its own; see minilm_finetune.py.
"""

from reparam_jax.config.base import base_config
from reparam_jax.hf.pretrained import architecture_from_checkpoint
from reparam_jax.tasks.encoder import encoder_defaults

MODEL = "$REPARAM_DATA_DIR/models/all-MiniLM-L6-v2"
# Every matrix of the six blocks (the path rules' usual selection).
BLOCK_KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"
# Every matrix of the model: the blocks', the word and position embedding tables and the
# pooler (what int8 storage must cover to reach a quarter of the bytes: half of MiniLM is
# its 30,522 × 384 word embedding).
ALL_MATRICES = BLOCK_KERNELS + r"|embed/(token|position)/embedding|pooler/kernel"


def get_config(arg=None):
  del arg
  c = encoder_defaults(base_config())
  c.task = "classify"
  c.init_from = MODEL
  architecture_from_checkpoint(c)  # model.* from the checkpoint; dropouts default to its 0.1
  c.seq_len = 64
  c.batch_size = 32
  c.num_steps = 600
  # BertForSequenceClassification's head: the pretrained pooler (tanh Dense on [CLS]),
  # Dropout(0.1), Linear.
  c.encoder.pooling = "cls"
  c.encoder.classifier_norm = False
  c.encoder.classifier_dropout = 0.1
  # Dynamic padding: each batch padded to the shortest of these that fits it.
  c.encoder.length_buckets = (16, 32, 48)
  c.optimizer.lr = 1e-4
  c.optimizer.schedule = "linear"
  c.optimizer.end_lr = 0.0
  c.optimizer.warmup_steps = 36  # 6% of 600
  c.optimizer.b2 = 0.999  # torch.optim.AdamW's defaults
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0
  c.log_every = 50
  c.eval_every = 200
  c.eval_batch_size = 128
  c.checkpoint_every = 200
  return c
