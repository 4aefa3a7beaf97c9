"""Every field the trainer reads, with its default.

Experiment configs start from `base_config()` and set what differs, so a
newcomer can read all knobs in one place and a misspelt override is caught
(configs are locked).
"""

from __future__ import annotations

import ml_collections

# The mesh axes, and the logical-axis → mesh-axis rules table: the one place
# parallelism is decided (MaxText keeps it in its base config too).  Model code
# names dimensions logically; training/sharding.py applies the table.
MESH_AXES = ("data", "fsdp", "tensor")

# What `compress` compresses by default: every attention and MLP matrix of the blocks.
COMPRESS_KERNELS = r"block_\d+/(attn|mlp)/\w+/kernel"

# (logical axis, mesh axis or axes or None).  Data parallelism over `data`
# and `fsdp`; parameters sharded over `fsdp` along `embed` (ZeRO-3 style);
# Megatron tensor parallelism over `tensor` for heads, MLP and vocabulary.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    # The stacked layer axis of model.scan_layers stays whole on each device (its
    # layers run one after another); FSDP splits each layer's weights along embed.
    ("layers", None),
)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "lm"  # see reparam_jax/tasks/__init__.py

  c.data = ml_collections.ConfigDict()
  c.data.name = "tiny_shakespeare"
  # "char", "sentencepiece" (fitted on the training text), or a path: a Hugging Face
  # tokenizer folder, its tokenizer.json, or a SentencePiece .model file
  c.data.tokenizer = "char"
  # A text source (data/sources): "jsonl:/corpus/*.jsonl?field=text", "tfds:lm1b",
  # "text:/books/*.txt", "parquet:...", "arrayrecord:..."; python -m reparam_jax.prepare_data
  # tokenizes it into data.prepared.
  c.data.source = ""
  # The classify task reads labelled examples from data.source (training) and
  # data.eval_source (evaluation) when data.source is set (data/labelled):
  # "tsv:/glue/RTE/train.tsv?text=sentence1&pair=sentence2", "tfds:glue/cola?split=validation"
  c.data.eval_source = ""
  c.data.label_names = ()  # class names, in class-number order; () = the source's or sorted
  c.data.prepared = ""  # a prepare_data folder of token shards: the LM task trains on it
  # Or several, with weights: "0.7:/shards/web,0.3:/shards/books" (same tokenizer)
  c.data.mixture = ""
  # Documents of data.prepared into rows: "concat" (concatenated and cut, nanoGPT) or
  # "first_fit" (whole documents packed with segment ids: attention stays in a document)
  c.data.packing = "concat"
  c.data.eval_prepared = ""  # the held-out prepare_data folder evaluated with data.prepared
  c.data.eval_batches = 8  # eval_batch_size rows each, concatenated in file order
  c.data.vocab_size = 0  # sentencepiece vocabulary size (char: derived from the text)
  c.data.raw_dir = ""  # raw downloads; "" = $REPARAM_DATA_DIR, unset = download via TFDS
  c.data.tfds_dir = ""  # prepared TFDS datasets; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.skip_malformed = False  # skip and count malformed rows/documents instead of failing
  # Instruction records (task lm, data/instructions.py): a response field set turns
  # data.source / data.eval_source into prompt/response JSON Lines, the loss on the response.
  c.data.response_field = ""  # e.g. "response" (Alpaca: "output"); "" = plain text
  c.data.prompt_field = "prompt"  # Alpaca: "instruction"
  c.data.input_field = ""  # Alpaca: "input", an optional context joined to the prompt
  c.data.prompt_template = "### Instruction:\n{prompt}\n\n### Response:\n"
  # Tuning without reading the reported split (sweeps/tuning.py; task classify): this many
  # training examples, chosen by a fixed permutation (not config.seed), are held out of
  # training; data.evaluate_on="holdout" evaluates on them instead of the validation split.
  c.data.holdout_examples = 0
  c.data.evaluate_on = "validation"  # or "holdout"

  c.seq_len = 64
  c.batch_size = 12  # global, summed over all devices and hosts
  c.num_steps = 2000

  c.model = ml_collections.ConfigDict()
  c.model.preset = ""  # a key of reparam_jax.models.PRESETS, or "" for the fields below
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.vocab_size = 0  # 0 = the tokenizer's vocabulary size
  c.model.max_len = 0  # 0 = seq_len
  c.model.rope = False
  c.model.embed_dropout = 0.0
  c.model.attention_dropout = 0.0
  c.model.residual_dropout = 0.0
  c.model.dtype = "float32"  # compute dtype: "bfloat16" for mixed precision
  c.model.param_dtype = "float32"
  # Backward-pass rematerialisation of each block: none, full, dots, dots_no_batch
  # (models/stack.py); full keeps only each block's input.
  c.model.remat = "none"
  c.model.scan_layers = False  # nn.scan over stacked blocks: compile once, whatever the depth
  c.model.scan_unroll = 1  # layers per iteration of the scanned loop (models/stack.py)
  # Self-attention kernel: "xla", or "cudnn" (fused flash attention on GPUs, bf16/fp16).
  c.model.attention = "xla"
  # Projection (ALBERT etc.; docs/tasks.md): factorised embedding width (0 = off),
  # one block shared by all layers, per-block widths (() = embed_dim everywhere).
  c.model.embed_proj_dim = 0
  c.model.share_layers = False
  c.model.layer_dims = ()
  # Structured pruning (compression/structured.py): per-block query heads and MLP widths
  # (() = num_heads and mlp_dim everywhere).
  c.model.layer_heads = ()
  c.model.layer_mlp_dims = ()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-3
  c.optimizer.end_lr = 1e-4  # decay target at num_steps
  c.optimizer.schedule = "cosine"  # after the linear warm-up: "cosine" or "linear" decay
  c.optimizer.warmup_steps = 100
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1  # decoupled; applied to matrices/embeddings only
  c.optimizer.clip_norm = 1.0  # 0 disables
  c.optimizer.grad_accum_steps = 1
  # (regex, bool) rules over parameter paths; () = decay matrices/embeddings, not biases/norms.
  c.optimizer.decay_rules = ()
  # Clipping, AdamW, the parameter update and the non-finite guard in fewer passes over
  # memory, bit-identical to the optax chain (training/optim.py FusedAdamW); unused with
  # frozen leaves.  False: the plain optax chain.
  c.optimizer.fused = True

  # Mesh axis sizes; -1 = all remaining devices. Product must equal the device count.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.axis_rules = DEFAULT_AXIS_RULES

  c.log_every = 50
  c.eval_every = 500
  c.eval_batch_size = 128
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.init_from = ""  # a checkpoint, training run or (converted) Hugging Face model to start from
  # init_from: block i of the model starts from block init_layers[i] of the checkpoint
  # (DistilBERT's student: every other teacher layer, (0, 2, 4)); () = block i from block i.
  c.init_layers = ()
  # A PEFT LoRA/DoRA adapter folder (adapter_config.json + adapter_model.safetensors) put on
  # top of init_from; config.reparam.rules must describe it (docs/peft.md).
  c.init_adapter = ""

  # Preemption, divergence and checkpoint failures; see docs/reliability.md.
  c.reliability = ml_collections.ConfigDict()
  c.reliability.preemption_sync_every = 10  # multi-process: steps between stop-flag agreements
  c.reliability.preemption_grace_s = 120.0  # hard exit if the stop checkpoint takes longer; 0 = off
  c.reliability.on_nonfinite = "stop"  # "stop" the run, or "skip" the step (update dropped)
  c.reliability.max_skipped_steps = 10  # "skip": stop once more steps than this were skipped
  c.reliability.save_retries = 3  # failed checkpoint saves in a row before giving up (exit 4)
  c.reliability.save_retry_wait_s = 2.0  # back-off before retry k is k times this
  c.reliability.nan_at_step = 0  # testing only: make this step's loss NaN

  c.reparam = ml_collections.ConfigDict()
  c.reparam.rules = ()
  # Where effective weights are computed: inside each layer (True; under remat they are
  # recomputed in the backward pass), once for the whole model (False), or 'auto':
  # per layer when model.scan_layers (docs/scaling.md).
  c.reparam.per_layer = "auto"

  # Penalties added to the loss (reparam_jax/regularizers, docs/regularization.md).
  c.reg = ml_collections.ConfigDict()
  c.reg.rules = ()  # ((regex, "l1(1e-5)|nuclear(1e-4)|l2(..)|orthogonal(..)"), ...)
  c.reg.l1 = 0.0  # > 0: coef·Σ|W| on every matrix (ndim ≥ 2), besides the rules
  c.reg.l2 = 0.0  # > 0: coef·½ΣW² on every matrix (coupled; decoupled = optimizer.weight_decay)
  c.reg.target = "effective"  # reparameterized weights: penalize W = f(θ), or "theta"

  # Early stopping on an eval metric; the best params are restored at the end.
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.metric = ""  # e.g. "eval/loss"; "" = off
  c.early_stopping.mode = "min"  # "min" or "max"
  c.early_stopping.patience = 5  # evaluations without improvement before stopping
  c.early_stopping.min_delta = 0.0  # an improvement must beat the best by more than this

  # Fine-tuning: which parameters train (reparam_jax/freezing.py, docs/tasks.md).
  # Greedy answers to these prompts in the log, before the first step and after the last
  # (task lm; an instruction run writes them into data.prompt_template).
  c.sample = ml_collections.ConfigDict()
  c.sample.prompts = ()
  c.sample.num_tokens = 32

  c.finetune = ml_collections.ConfigDict()
  c.finetune.freeze = "none"  # "none" | "all_but_head" | "top_k" | "lora"
  c.finetune.top_k = 2  # "top_k": how many of the top blocks train (with the head)
  c.finetune.head_regex = r"classifier|head|\w+_head"  # a path component naming a head

  # Compressing a trained run instead of training (reparam_jax/compression, docs/compression.md).
  # With a recipe, `train` compresses the run `init_from` names into the workdir (its own
  # config, data and tokenizer; this config's other fields are not used) and writes done.json.
  c.compress = ml_collections.ConfigDict()
  c.compress.recipe = ""  # e.g. "prune(magnitude,0.5),quantize(int8)"; "" = train as usual
  c.compress.finetune_steps = 0  # > 0: fine-tune the compressed float weights this long
  c.compress.finetune_lr = 3e-4
  c.compress.kernels = COMPRESS_KERNELS  # regex of the weights the recipe compresses

  # FLOP/MFU accounting (reparam_jax/perf, docs/performance.md).
  c.perf = ml_collections.ConfigDict()
  c.perf.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = vendor table, CPU: measured
  c.perf.causal_attention_halved = False  # False = PaLM's 12·L·H·Q·T attention FLOPs
  # > 0: the CPU backend starts as this many devices, so the mesh runs data
  # parallel over the host's cores (faster than one device's intra-op threads
  # for small models); 0 = JAX's default.  --xla_force_host_platform_device_count
  # in XLA_FLAGS takes precedence.  No effect on accelerators.
  c.perf.cpu_devices = 0
  # Threefry random bits on CPU as one fused loop (the same bits, ~3x faster to
  # draw; longer compiles): reparam_jax/perf/rng.py.  No effect on accelerators,
  # nor where JAX_DISABLE_MOST_OPTIMIZATIONS=1 asks for short compiles (the tests).
  c.perf.cpu_unrolled_threefry = True
  return c


def use_preset(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`c.model` set to the published architecture `name` (models/presets.py).

  The preset's fields are written into the section: `base_config`'s own model fields
  (a 4-layer, width-128 model) would otherwise override the preset, since every key of
  the section does (models.transformer_config).  Keys set after this call, and
  `--config.model.X=...`, still override it.
  """
  from reparam_jax.models.presets import PRESETS  # noqa: PLC0415 (a plain table)
  if name not in PRESETS:
    raise KeyError(f"model preset {name!r}: unknown; known: {', '.join(sorted(PRESETS))}")
  c.model.preset = name
  with c.model.ignore_type():
    for field, value in PRESETS[name].items():
      c.model[field] = value
  return c
