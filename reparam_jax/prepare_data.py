r"""Tokenize a corpus once into ArrayRecord shards that training reads.

  python -m reparam_jax.prepare_data --config=configs/lm/x.py [--out=DIR] \
      [--config.data.source=jsonl:/corpus/*.jsonl] [--config.data.tokenizer=/models/gpt2] \
      [--process_index=I --process_count=N]

Reads `config.data.source` (any spec of reparam_jax/data/sources) and writes
`--out` (default `config.data.prepared`): one shard per source file or range
of records, a manifest and the tokenizer (reparam_jax/data/token_shards.py).
The tokenizer is `config.data.tokenizer`: a path (a Hugging Face folder, a
tokenizer.json, a SentencePiece .model), the tokenizer of `config.init_from`,
or "char" / "sentencepiece" fitted on the first 10 MB of the source's text.
Run it again after a kill: finished shards are kept.  On several hosts, run
it on each with its `--process_index` of `--process_count` (each writes its
own shards into the shared folder).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reparam_jax.config import load as config_load
from reparam_jax.data import corpus
from reparam_jax.errors import exit_on_user_error


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  config, rest = config_load.load(argv)
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.prepare_data", allow_abbrev=False)
  parser.add_argument("--out", default="", help="output folder (default: config.data.prepared)")
  parser.add_argument("--process_index", type=int, default=0, help="this process's index")
  parser.add_argument("--process_count", type=int, default=1, help="processes sharing the work")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  args = parser.parse_args(rest)
  summary = corpus.prepare_from_config(config, args.out, process_index=args.process_index,
                                       process_count=args.process_count,
                                       progress=not args.no_progress)
  rate = summary["tokens"] / max(summary["seconds"], 1e-9)
  print(f"prepare_data: {summary['out']}: {summary['mine']} of {summary['shards']} shards are "
        f"this process's, {summary['already_done']} were done; wrote {summary['documents']:,} "
        f"documents, {summary['tokens']:,} tokens in {summary['seconds']:.1f} s "
        f"({rate:,.0f} tokens/s); skipped {summary['skipped']} malformed")
  return summary


if __name__ == "__main__":
  main()
