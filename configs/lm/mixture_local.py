r"""A small LM on a 2-source mixture of local corpora, packed first-fit (no download).

The two corpora are on every machine that has this project's data folder:
- **code**: the Python standard library's own `.py` files (this interpreter's;
  one document per file): the packages `a*`–`r*` (asyncio … re; 481 files,
  6.0 MB in Python 3.12.1) train, `u*`–`z*` (unittest … zoneinfo; 61 files,
  1.0 MB) are held out;
- **sst2**: the 67,349 SST-2 training sentences (built-in, from
  `$REPARAM_DATA_DIR`), one short document each.
A SentencePiece unigram vocabulary of 2,048 pieces is fitted on the code's
training files; the other folders take its tokenizer.  Training mixes
0.7 code : 0.3 sst2 by tokens (`data.mixture`; a code file is 126 times
longer than a sentence on average, so about 1 document in 55 is code), packs
them first-fit into rows of 129 tokens (segment ids: attention stays within a
document; a longer document goes in as row-sized pieces), and reports the
held-out code's loss and bits per byte.  The model is the quick start's
shape (4 layers, width 128) over 128 tokens, batch 12.

The config's argument picks what `prepare_data` tokenizes (`code_train`,
`code_eval`, `sst2_train`); without one it is the training run:

Commands:
  python -m reparam_jax.prepare_data --config=configs/lm/mixture_local.py:code_train
  python -m reparam_jax.prepare_data --config=configs/lm/mixture_local.py:code_eval
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.prepare_data \
      --config=configs/lm/mixture_local.py:sst2_train
  python -m reparam_jax.train --config=configs/lm/mixture_local.py \
      --workdir=workdirs/mixture_local

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: 8 min 1 s of training (median step 237 ms), 29 s for the three prepare_data
runs (commit 6e8668a; experiments/results/corpus_mixture/README.md).
Expected: held-out code eval/loss 4.625, 2.39 bits per byte at step 2000 (one seed);
the code's realised share of the trained tokens 0.686 (weight 0.7).
"""

import os
import sysconfig

from configs.lm import shakespeare_char

CORPUS = "workdirs/corpus"
STDLIB = sysconfig.get_paths()["stdlib"]
SOURCES = {
    "code_train": f"text:{STDLIB}/[a-r]*/**/*.py",
    "code_eval": f"text:{STDLIB}/[u-z]*/**/*.py",
    "sst2_train": "sst2?split=train",
}


def get_config(arg=None):
  c = shakespeare_char.get_config()
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 2048
  c.data.mixture = f"0.7:{CORPUS}/code_train,0.3:{CORPUS}/sst2_train"
  c.data.eval_prepared = f"{CORPUS}/code_eval"
  c.data.packing = "first_fit"
  c.data.eval_batches = 8
  c.seq_len = 128
  c.batch_size = 12
  c.eval_batch_size = 16
  c.num_steps = 2000
  if arg:  # a prepare_data run: one source into its folder
    if arg not in SOURCES:
      from reparam_jax.errors import UserError  # noqa: PLC0415
      raise UserError(f"unknown corpus {arg!r}; one of {', '.join(SOURCES)}")
    c.data.source = SOURCES[arg]
    c.data.prepared = os.path.join(CORPUS, arg)
    c.data.mixture = ""
    if arg != "code_train":
      c.data.tokenizer = os.path.join(CORPUS, "code_train", "tokenizer")
  return c
