r"""The corpus pipeline's goals, measured: tokenizing, packing, streaming, memory.

  python -m bench.data_pipeline --workdir=/tmp/bench_data [--corpus_mb=64] [--big_mb=1024]
      [--sections=prepare,loader,packing,rss] [--rounds=3]

The corpus is made here, no download: the Python standard library's own source
files, cut at blank lines into documents of mixed lengths (log-uniform between
64 bytes and 16 KiB), written as JSON Lines files of at most 16 MiB; repeated
copies (each document prefixed by its copy number) make it as large as asked.
The tokenizer is a byte-level BPE (GPT-2's kind, 16,384 pieces, `<|endoftext|>`
after each document) trained here with Hugging Face `tokenizers` on the first
16 MiB.

Sections, each timed in fresh processes pinned to one CPU core
(`sched_setaffinity`, `RAYON_NUM_THREADS=1`), alternating ours and the peer,
medians over `--rounds`:

- `prepare`: `prepare_data`'s tokenize-and-write (token_shards.prepare) in
  tokens/s, against the peer: the same tokenizer called directly
  (`Tokenizer.encode_batch_fast`, as prepare calls it, on the same JSON Lines
  documents in batches of 512, nothing written).
  Goal: ≥ 1 M tokens/s per core.
- `loader`: the training input pipeline (`packed_train_loader`, `concat` and
  `first_fit`) from the prepared shards, in tokens/s, against the tokens/s the
  quick-start train step consumes (measured here: the trainer's own jitted step,
  bench/lm_step.py, median of 30) and a GPT-2-small step on one H100 (not
  measured here: see `GPT2_SMALL_H100_TOKENS_S`).  Goals: ≥ 20× and ≥ 5×.
- `packing`: non-padding tokens of `first_fit` rows, and the share of
  documents each packing splits (first_fit: those longer than a row, packed
  as row-sized pieces; concat: those crossing a row boundary).  Goal:
  first_fit ≥ 98 % non-padding.
- `rss`: peak resident memory of `prepare` and of 2,000 `first_fit` loader
  batches (8 × 1,024 tokens) on a `--small_mb` (10) corpus against a
  `--big_mb` (1,024) one.  Goal: within ± 10 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench import timing

FILE_BYTES = 16 << 20
DOC_BYTES = (64, 16 << 10)
BPE_VOCAB = 16_384
EOS = "<|endoftext|>"

# A GPT-2-small step's tokens/s on one H100, not measured by this project: its
# measured GPT-2-medium step (docs/performance.md, "The train step on an H100":
# 106,337 tokens/s, 26.1 % MFU with cuDNN attention, bf16, context 1024) at the
# same MFU with GPT-2 small's model FLOPs per token (6 · 124.4 M + attention
# 12 · 12 layers · 768 · 1024 = 859.9 M): 0.261 · 989e12 / 859.9e6.
GPT2_SMALL_H100_TOKENS_S = 0.261 * 989e12 / (6 * 124_439_808 + 12 * 12 * 768 * 1024)


# -- the corpus ------------------------------------------------------------------------


def _stdlib_texts() -> Iterator[str]:
  root = sysconfig.get_paths()["stdlib"]
  for dirpath, dirnames, files in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    for name in sorted(files):
      if name.endswith(".py"):
        try:
          with open(os.path.join(dirpath, name), encoding="utf-8") as f:
            yield f.read()
        except (UnicodeDecodeError, OSError):
          continue


def _documents(seed: int) -> Iterator[str]:
  """Blank-line blocks of the standard library grouped into documents of random lengths."""
  rng = random.Random(seed)
  lo, hi = map(math.log, DOC_BYTES)
  target, doc = math.exp(rng.uniform(lo, hi)), []
  size = 0
  for text in _stdlib_texts():
    for block in text.split("\n\n"):
      doc.append(block)
      size += len(block) + 2
      if size >= target:
        yield "\n\n".join(doc)
        target, doc, size = math.exp(rng.uniform(lo, hi)), [], 0


def make_corpus(folder: str, total_bytes: int, seed: int = 0) -> dict[str, Any]:
  """JSON Lines files of `{"text": document}` adding up to `total_bytes` of text."""
  if os.path.exists(os.path.join(folder, "done.json")):
    with open(os.path.join(folder, "done.json")) as f:
      return json.load(f)
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  base = list(_documents(seed))
  written = docs = part = 0
  out, out_bytes = None, 0
  copy = 0
  while written < total_bytes:
    for doc in base:
      text = doc if copy == 0 else f"# copy {copy}\n{doc}"
      if out is None or out_bytes >= FILE_BYTES:
        if out is not None:
          out.close()
        out = open(os.path.join(folder, f"part-{part:05d}.jsonl"), "w", encoding="utf-8")
        part, out_bytes = part + 1, 0
      line = json.dumps({"text": text}) + "\n"
      out.write(line)
      out_bytes += len(line)
      written += len(text.encode("utf-8"))
      docs += 1
      if written >= total_bytes:
        break
    copy += 1
  out.close()
  summary = {"files": part, "documents": docs, "text_bytes": written}
  with open(os.path.join(folder, "done.json"), "w") as f:
    json.dump(summary, f)
  return summary


def train_bpe(corpus: str, out: str, sample_bytes: int = 16 << 20) -> str:
  """A byte-level BPE tokenizer folder (tokenizer.json + tokenizer_config.json)."""
  if os.path.exists(os.path.join(out, "tokenizer.json")):
    return out
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  def sample() -> Iterator[str]:
    seen = 0
    for path in sorted(p for p in os.listdir(corpus) if p.endswith(".jsonl")):
      with open(os.path.join(corpus, path), encoding="utf-8") as f:
        for line in f:
          text = json.loads(line)["text"]
          seen += len(text)
          yield text
          if seen >= sample_bytes:
            return

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=[EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(sample(), trainer)
  os.makedirs(out, exist_ok=True)
  tok.save(os.path.join(out, "tokenizer.json"))
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "GPT2Tokenizer", "eos_token": EOS, "bos_token": EOS}, f)
  return out


# -- one measurement per process ---------------------------------------------------------


def _one_core() -> None:
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_prepare(corpus: str, tokenizer: str, out: str) -> dict[str, Any]:
  from reparam_jax.data import sources, token_shards
  from reparam_jax.data.tokenizers import open_tokenizer
  shutil.rmtree(out, ignore_errors=True)
  source = sources.open_source(f"jsonl:{corpus}/*.jsonl")
  tok = open_tokenizer(tokenizer)
  start = time.perf_counter()
  summary = token_shards.prepare(source, tok, out, progress=False)
  seconds = time.perf_counter() - start
  return {"tokens": summary["tokens"], "documents": summary["documents"], "seconds": seconds,
          "tokens_s": summary["tokens"] / seconds, "peak_rss_mib": _peak_rss_mib()}


def measure_tokenizer_peer(corpus: str, tokenizer: str) -> dict[str, Any]:
  """The same tokenizer, called directly on the same documents (one `encode_batch_fast` per
  512: ids without character offsets, the call prepare makes)."""
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(os.path.join(tokenizer, "tokenizer.json"))
  start = time.perf_counter()
  tokens = documents = 0
  for path in sorted(p for p in os.listdir(corpus) if p.endswith(".jsonl")):
    with open(os.path.join(corpus, path), encoding="utf-8") as f:
      batch = []
      for line in f:
        batch.append(json.loads(line)["text"])
        if len(batch) == 512:
          tokens += sum(len(e.ids) + 1
                        for e in tok.encode_batch_fast(batch, add_special_tokens=False))
          documents += len(batch)
          batch = []
      if batch:
        tokens += sum(len(e.ids) + 1
                      for e in tok.encode_batch_fast(batch, add_special_tokens=False))
        documents += len(batch)
  seconds = time.perf_counter() - start
  return {"tokens": tokens, "documents": documents, "seconds": seconds,
          "tokens_s": tokens / seconds}


def measure_loader(shards: str, packing: str, seq_len: int, batch: int,
                   batches: int) -> dict[str, Any]:
  from reparam_jax.data import corpus, token_shards
  folder = token_shards.TokenShards(shards)
  it = corpus.packed_train_loader([folder], [1.0], seq_len, batch, seed=0, packing=packing)
  first = next(it)  # building the pipeline: not throughput
  rows = tokens = real = 0
  start = time.perf_counter()
  for _ in range(batches):
    b = next(it)
    rows += b["tokens"].shape[0]
    tokens += b["tokens"].size
    real += int((b["segment_ids"] > 0).sum()) if "segment_ids" in b else b["tokens"].size
  seconds = time.perf_counter() - start
  del first
  return {"packing": packing, "seq_len": seq_len, "batch": batch, "batches": batches,
          "tokens_s": tokens / seconds, "non_padding": real / tokens, "seconds": seconds,
          "peak_rss_mib": _peak_rss_mib()}


def measure_quickstart_step(steps: int = 30) -> dict[str, Any]:
  """The quick-start config's train step (bench/lm_step.py), median step time and tokens/s."""
  from bench.lm_step import QUICKSTART, StepRunner
  from reparam_jax.config import load as config_load
  from reparam_jax.training.devices import configure_cpu_devices
  config = config_load.load_config_file(QUICKSTART)
  configure_cpu_devices(config.perf.cpu_devices)  # as `train` runs it: its CPU devices, all cores
  runner = StepRunner(config, vocab_size=65)  # the quick start's character vocabulary
  for i in range(3):
    runner.run(i)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    runner.run(i)
    times.append(time.perf_counter() - t0)
  step = statistics.median(times)
  tokens = config.batch_size * config.seq_len
  return {"step_ms": step * 1e3, "tokens_per_step": tokens, "tokens_s": tokens / step}


def packing_loss(shards: str, seq_len: int, rows: int) -> dict[str, Any]:
  """What each packing gives up on `rows` rows: padding, cut tokens, split documents."""
  import numpy as np

  from reparam_jax.data import token_shards
  folder = token_shards.TokenShards(shards)
  n = min(len(folder), 20_000)
  lengths = np.array([len(folder[i]["tokens"]) for i in range(n)])
  row = seq_len + 1
  ff = measure_loader(shards, "first_fit", seq_len, 8, rows // 8)
  # first_fit packs a document longer than a row as row-sized pieces: it is split too.
  pieces = float(np.mean(lengths > row))
  # concat: a document is split when it does not end inside the row it starts in; counted
  # on these documents concatenated in file order, cut every `row` tokens.
  ends = np.cumsum(lengths)
  starts = ends - lengths
  split = float(np.mean(starts // row != (ends - 1) // row))
  return {"seq_len": seq_len, "first_fit_non_padding": ff["non_padding"],
          "first_fit_documents_split": pieces, "concat_non_padding": 1.0,
          "concat_documents_split": split,
          "doc_tokens_p10_p50_p90": [int(x) for x in np.percentile(lengths, [10, 50, 90])],
          "documents_sampled": n}


def _child(args: argparse.Namespace) -> None:
  if args.child != "step":  # the quick-start step runs as training runs it, on every core
    _one_core()
  kind, kwargs = args.child, json.loads(args.child_args)
  fn = {"prepare": measure_prepare, "peer": measure_tokenizer_peer, "loader": measure_loader,
        "step": measure_quickstart_step, "packing": packing_loss}[kind]
  print("RESULT " + json.dumps(fn(**kwargs)), flush=True)


def _run_child(kind: str, **kwargs: Any) -> dict[str, Any]:
  env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="true",
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)  # the test suite's setting: not training's
  out = subprocess.run([sys.executable, "-m", "bench.data_pipeline", f"--child={kind}",
                        f"--child_args={json.dumps(kwargs)}"], env=env, capture_output=True,
                       text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"{kind} failed ({out.returncode}):\n{out.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


# -- the report --------------------------------------------------------------------------


def _median(runs: Sequence[dict[str, Any]], key: str) -> float:
  return statistics.median(r[key] for r in runs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m bench.data_pipeline")
  parser.add_argument("--workdir", default="/tmp/reparam_bench_data")
  parser.add_argument("--corpus_mb", type=float, default=64)
  parser.add_argument("--small_mb", type=float, default=10, help="rss: the small corpus")
  parser.add_argument("--big_mb", type=float, default=1024, help="rss: the large corpus")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--loader_batches", type=int, default=300)
  parser.add_argument("--rss_batches", type=int, default=2000)
  parser.add_argument("--sections", default="prepare,loader,packing,rss")
  parser.add_argument("--out", default="", help="also write the figures to this JSON file")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--child_args", default="{}", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    _child(args)
    return {}
  sections = set(args.sections.split(","))
  os.makedirs(args.workdir, exist_ok=True)
  corpus = os.path.join(args.workdir, f"corpus_{args.corpus_mb:g}mb")
  shards = os.path.join(args.workdir, f"shards_{args.corpus_mb:g}mb")
  made = make_corpus(corpus, int(args.corpus_mb * (1 << 20)))
  tokenizer = train_bpe(corpus, os.path.join(args.workdir, "bpe"))
  report: dict[str, Any] = {"corpus": made, "cpu": timing.cpu_model(), "rounds": args.rounds}
  print(f"corpus: {made['documents']:,} documents, {made['text_bytes'] / 2**20:.1f} MiB of text "
        f"in {made['files']} files; CPU {report['cpu']}; one core per measurement")

  if "prepare" in sections or not os.path.exists(os.path.join(shards, "manifest.json")):
    ours, peer = [], []
    for r in range(args.rounds if "prepare" in sections else 1):
      first, second = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
      for side in (first, second):
        if side == "ours":
          ours.append(_run_child("prepare", corpus=corpus, tokenizer=tokenizer, out=shards))
        elif "prepare" in sections:
          peer.append(_run_child("peer", corpus=corpus, tokenizer=tokenizer))
    if "prepare" in sections:
      report["prepare"] = {"ours_tokens_s": _median(ours, "tokens_s"),
                           "peer_tokens_s": _median(peer, "tokens_s"),
                           "tokens": ours[0]["tokens"], "runs": {"ours": ours, "peer": peer}}
      p = report["prepare"]
      print(f"prepare_data: {p['ours_tokens_s']:,.0f} tokens/s on one core "
            f"(goal ≥ 1,000,000); the tokenizer alone {p['peer_tokens_s']:,.0f}; "
            f"ratio {p['ours_tokens_s'] / p['peer_tokens_s']:.2f}; {p['tokens']:,} tokens")

  if "loader" in sections:
    step = [_run_child("step") for _ in range(args.rounds)]
    quick = _median(step, "tokens_s")
    loaders = {}
    for packing in ("concat", "first_fit"):
      for seq_len, batch in ((64, 12), (1024, 8)):
        runs = [_run_child("loader", shards=shards, packing=packing, seq_len=seq_len,
                           batch=batch, batches=args.loader_batches)
                for _ in range(args.rounds)]
        loaders[f"{packing}_L{seq_len}_B{batch}"] = _median(runs, "tokens_s")
    report["loader"] = {"tokens_s": loaders, "quickstart_step": step,
                        "quickstart_tokens_s": quick,
                        "gpt2_small_h100_tokens_s_estimate": GPT2_SMALL_H100_TOKENS_S}
    print(f"quick-start train step: {_median(step, 'step_ms'):.1f} ms, {quick:,.0f} tokens/s; "
          f"GPT-2 small on an H100 (estimate): {GPT2_SMALL_H100_TOKENS_S:,.0f} tokens/s")
    for name, rate in loaders.items():
      print(f"loader {name}: {rate:,.0f} tokens/s on one core = {rate / quick:.1f}× the quick-"
            f"start step (goal ≥ 20), {rate / GPT2_SMALL_H100_TOKENS_S:.2f}× GPT-2 small on an "
            "H100 (goal ≥ 5)")

  if "packing" in sections:
    report["packing"] = [_run_child("packing", shards=shards, seq_len=s, rows=4000)
                         for s in (1024, 2048)]
    for p in report["packing"]:
      print(f"packing at {p['seq_len']} tokens: first_fit {p['first_fit_non_padding']:.2%} "
            f"non-padding (goal ≥ 98 %), splits {p['first_fit_documents_split']:.2%} of the "
            f"documents (those longer than a row) into pieces; concat 100 % non-padding, "
            f"splits {p['concat_documents_split']:.2%} of the documents across rows; document "
            f"tokens p10/p50/p90 {p['doc_tokens_p10_p50_p90']}")

  if "rss" in sections:
    rss = {}
    for name, mb in (("small", args.small_mb), ("big", args.big_mb)):
      c = os.path.join(args.workdir, f"corpus_{mb:g}mb")
      s = os.path.join(args.workdir, f"shards_{mb:g}mb_rss")
      size = make_corpus(c, int(mb * (1 << 20)))
      prep = _run_child("prepare", corpus=c, tokenizer=tokenizer, out=s)
      load = _run_child("loader", shards=s, packing="first_fit", seq_len=1024, batch=8,
                        batches=args.rss_batches)
      rss[name] = {"text_bytes": size["text_bytes"],
                   "prepare_peak_rss_mib": prep["peak_rss_mib"],
                   "loader_peak_rss_mib": load["peak_rss_mib"], "tokens": prep["tokens"]}
    report["rss"] = rss
    for part in ("prepare", "loader"):
      a, b = rss["small"][f"{part}_peak_rss_mib"], rss["big"][f"{part}_peak_rss_mib"]
      print(f"peak RSS of {part}: {a:,.0f} MiB on {rss['small']['text_bytes'] / 2**20:,.0f} MiB "
            f"of text, {b:,.0f} MiB on {rss['big']['text_bytes'] / 2**20:,.0f} MiB: "
            f"{b / a - 1:+.1%} (goal within ± 10 %)")

  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
