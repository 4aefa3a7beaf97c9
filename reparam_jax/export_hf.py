r"""Exports a project checkpoint as a Hugging Face model folder.

  python -m reparam_jax.export_hf --workdir=RUN --to=/models/my-gpt2
  python -m reparam_jax.export_hf --workdir=LORA_RUN --peft_dir=/adapters/my-lora

`RUN` is a training workdir (its latest checkpoint; a reparameterized run is
first merged to dense weights with `Reparam.to_dense`)
or a folder written by `convert_hf`.  Writes `config.json` and
`model.safetensors` that `transformers`' `from_pretrained` loads
(GPT2LMHeadModel; BertModel / BertForMaskedLM / BertForPreTraining /
BertForSequenceClassification by the heads present;
T5ForConditionalGeneration for an encoder–decoder), plus the tokenizer
files when the run used a Hugging Face tokenizer.  Fields of the original
config.json (label names, token ids) are kept when the run started from an
imported checkpoint (`--config.init_from`).

`--format=compressed-tensors` writes a run whose reparam rules store kernels `packed`
(docs/compression.md) in the compressed-tensors format that llm-compressor writes and
vLLM serves: those projections as `pack-quantized` weights with their group scales,
the rest dense (reparam_jax/hf/compressed_tensors.py, docs/pretrained.md).  The default,
`--format=dense`, merges every reparameterization into dense float32 weights.

`--peft_dir` writes a LoRA/DoRA run's adapter alone in PEFT's format
(adapter_config.json + adapter_model.safetensors, docs/peft.md), which
`peft.PeftModel.from_pretrained` loads onto the run's `init_from` model.

A model over `--max_shard_mb` (5000, transformers' 5 GB) is written as
numbered safetensors files with an index, as `save_pretrained` does.
Multi-host: every process runs the same command with the trainer's flags
(`--distributed`, or `--coordinator_address=... --num_processes=N
--process_id=I`); each reads its shards, tensors are gathered one at a time,
and process 0 writes the folder holding at most one file's tensors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.hf import compressed_tensors
from reparam_jax.hf.exporter import MAX_SHARD_BYTES, export
from reparam_jax.hf.peft_run import export_run_adapter
from reparam_jax.training import devices


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.export_hf", allow_abbrev=False,
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="training workdir or convert_hf output folder")
  parser.add_argument("--to", dest="dst", help="Hugging Face folder to write")
  parser.add_argument("--peft_dir", help="PEFT adapter folder to write (a LoRA/DoRA run's "
                      "adapter alone; docs/peft.md)")
  parser.add_argument("--max_shard_mb", type=int, default=MAX_SHARD_BYTES // 10**6,
                      help="largest safetensors file (MB); a bigger model is split over "
                      "several files with an index")
  parser.add_argument("--format", default="dense", choices=("dense", "compressed-tensors"),
                      help="dense: every reparameterization merged into float32 weights; "
                      "compressed-tensors: packed kernels as pack-quantized weights")
  devices.add_distributed_flags(parser)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if not args.dst and not args.peft_dir:
    parser.error("pass --to (the whole model) and/or --peft_dir (the LoRA adapter alone)")
  if args.max_shard_mb <= 0:
    parser.error(f"--max_shard_mb={args.max_shard_mb} must be positive")
  devices.init_distributed_from_args(args)
  say = print if jax.process_index() == 0 else (lambda *_: None)  # once, not per process
  out: dict[str, Any] = {}
  if args.peft_dir:
    out["peft"] = export_run_adapter(args.workdir, args.peft_dir)
    config = out["peft"]["config"]
    kind = {"LORA": "LoRA", "VERA": "VeRA", "IA3": "(IA)³"}[config["peft_type"]]
    detail = "".join(f", {k}={config[k]}" for k in ("r", "use_dora") if k in config)
    say(f"exported the adapter of {args.workdir} ({out['peft']['modules']} {kind} modules"
        f"{detail}) to "
        f"{os.path.abspath(args.peft_dir)} in PEFT's format; base model: "
        f"{config['base_model_name_or_path'] or 'unknown (the run has no init_from)'}")
  if not args.dst:
    return out
  if args.format == "compressed-tensors":
    if jax.process_count() > 1:
      raise UserError("--format=compressed-tensors is written by one process; run export_hf "
                      "without --distributed")
    out.update(compressed_tensors.export(args.workdir, args.dst))
    say(f"packed kernels: {out['quantized']} projections as pack-quantized "
        "(compressed-tensors), the rest dense")
  else:
    out.update(export(args.workdir, args.dst, args.max_shard_mb * 10**6))
  tok = "with its tokenizer" if out["tokenizer"] is not None else (
      "without a tokenizer (the workdir has none in GPT-2 BPE or WordPiece form)")
  files = f"{out['files']} files" if out["files"] > 1 else "one file"
  say(f"exported {args.workdir} as {out['architecture']} ({out['values']:,} values in "
      f"{out['tensors']} tensors, {files}) to {os.path.abspath(args.dst)}, {tok}")
  return out


if __name__ == "__main__":
  main()
