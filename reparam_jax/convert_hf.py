r"""Imports a Hugging Face model folder (GPT-2, BERT, Llama/Qwen 2/Mistral, T5) as a project
checkpoint.

  python -m reparam_jax.convert_hf --from=/models/gpt2 --to=/ckpt/gpt2

reads `config.json` and `model.safetensors` (or `pytorch_model.bin`, read
without PyTorch) and writes into the `--to` folder:

  params/          the params checkpoint; start training from it with
                   `--config.init_from=/ckpt/gpt2`
  hf_model.json    the model as a config `model` section (every
                   `TransformerConfig` field)
  hf_source.json   family, architecture, heads and the original config.json
                   (what `export_hf` needs to write the model back)
  tokenizer.json   the folder's tokenizer (GPT-2 BPE or BERT WordPiece), in
                   the form `load_tokenizer` reads, when the folder has one

A run started with `--config.init_from=/ckpt/gpt2` (or with the Hugging Face
folder itself) takes the architecture and tokenizer from it
(reparam_jax/hf/pretrained.py).
Heads live next to the Transformer's own parameters under `mlm_head/`,
`nsp_head/` and `classifier/` (see reparam_jax/models/heads.py); GPT-2's
LM head is the tied output layer.  Mapping tables: reparam_jax/hf/gpt2.py,
reparam_jax/hf/bert.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from reparam_jax.errors import exit_on_user_error
from reparam_jax.hf.importer import MODEL_FILE, convert


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.convert_hf", allow_abbrev=False,
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--from", dest="src", required=True, help="Hugging Face model folder")
  parser.add_argument("--to", dest="dst", required=True, help="where to write the checkpoint")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  out = convert(args.src, args.dst)
  dst = os.path.abspath(args.dst)
  heads = ", ".join(h for h, v in out["heads"].items() if v) or "none"
  print(f"imported {args.src}: {out['params']:,} parameters (heads: {heads}) -> {dst}/params")
  if out["tokenizer"] is not None:
    tok = out["tokenizer"]
    print(f"tokenizer: {tok.kind}, {tok.vocab_size:,} tokens -> {dst}/tokenizer.json")
  print(f"model section: {dst}/{MODEL_FILE}; start a run from this checkpoint with "
        f"--config.init_from={dst} (its architecture and tokenizer come with it; "
        "docs/pretrained.md)")
  return out


if __name__ == "__main__":
  main()
