"""Instruction fine-tuning (data/instructions.py, the lm task's instruction rows, the trainer's
before/after generations): the loss mask, the masked loss, packing, bad records, and
configs/lm/smollm2_lora.py and smollm2_qlora.py end to end from a tiny random Llama folder."""

import json
import os
import re

import jax
import numpy as np
import pytest
import tokenizers

from configs.lm import smollm2_lora, smollm2_qlora
from reparam_jax import train
from reparam_jax.data import hf_tokenizers, instructions
from reparam_jax.errors import UserError
from reparam_jax.hf.common import flatten
from reparam_jax.hf.importer import import_folder
from reparam_jax.models.presets import PRESETS
from reparam_jax.reparam import Reparam
from reparam_jax.rundir.workdir import load_run
from reparam_jax.tasks.lm import LanguageModelTask
from tests.hf.test_llama_run import _hf_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EOS = "<|end_of_text|>"
COLOURS = ("red", "green", "blue", "black", "white", "yellow")


def _pairs(n: int, offset: int = 0) -> list[dict[str, str]]:
  """Prompt/response records with an easily learnt answer: the response's words recur."""
  out = []
  for i in range(offset, offset + n):
    colour = COLOURS[i % len(COLOURS)]
    out.append({"prompt": f"Name the colour number {i}.", "response": f"The colour is {colour}."})
  return out


def _write_jsonl(path, records) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
  return f"jsonl:{path}"


def _corpus_text() -> str:
  fmt = instructions.InstructionFormat()
  return "\n".join(fmt.prompt_text(r["prompt"]) + r["response"] for r in _pairs(60)) * 4


def _tokenizer_folder(tmp_path) -> str:
  """A byte-level BPE with an EOS token, saved as a Hugging Face tokenizer folder."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([_corpus_text()], vocab_size=300, special_tokens=[EOS])
  folder = tmp_path / "tokenizer"
  os.makedirs(folder)
  hf_tokenizers.HfTokenizer(bpe._tokenizer, {"eos_token": EOS}).save(str(folder))
  return str(folder)


def test_rows_weight_the_response_and_eos_only(tmp_path):
  tok = hf_tokenizers.load(_tokenizer_folder(tmp_path))
  eos = tok.backend.token_to_id(EOS)
  fmt = instructions.InstructionFormat()
  example = instructions.Example(fmt.prompt_text("Name the colour number 3."),
                                 "The colour is blue.")
  prompt, response = tok.encode(example.prompt).tolist(), tok.encode(example.response).tolist()
  rows = instructions.encode_rows(tok, [example], seq_len=40)
  n = len(prompt) + len(response) + 1
  assert n <= 41
  assert rows.tokens[0, :n].tolist() == prompt + response + [eos]
  # Target j is token j + 1: weight 1 exactly on the response tokens and the EOS.
  expected = np.zeros(40, np.float32)
  expected[len(prompt) - 1:n - 1] = 1.0
  np.testing.assert_array_equal(rows.weights[0], expected)
  assert (rows.truncated, rows.empty) == (0, 0)

  short = instructions.encode_rows(tok, [example], seq_len=len(prompt) + 2)  # 3 response tokens
  assert short.truncated == 1 and short.weights[0].sum() == 3
  assert short.weights[0, :len(prompt) - 1].sum() == 0
  assert instructions.encode_rows(tok, [example], seq_len=len(prompt) - 1).empty == 1

  alpaca = instructions.InstructionFormat(prompt_field="instruction", input_field="input",
                                          response_field="output")
  assert alpaca.prompt_text("Sum them.", "1 2") == fmt.prompt_text("Sum them.\n\n1 2")


def _tiny_task(tmp_path, **data) -> LanguageModelTask:
  c = smollm2_lora.get_config()
  c.init_from = ""
  for name in PRESETS["smollm2_135m"]:  # a tiny Llama-shaped decoder instead of SmolLM2
    c.model[name] = None if name not in ("vocab_size", "max_len") else 0
  c.model.update({"num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "embed_dim": 16,
                  "mlp_dim": 32, "causal": True, "norm": "rms", "activation": "silu",
                  "mlp_gated": True, "rope": True, "use_bias": False, "tie_embeddings": True,
                  "pre_norm": True, "dtype": "float32"})
  c.seq_len, c.eval_batch_size = data.pop("seq_len", 40), 4
  c.data.tokenizer = _tokenizer_folder(tmp_path)
  c.data.source = _write_jsonl(tmp_path / "train.jsonl", _pairs(6))
  c.data.eval_source = _write_jsonl(tmp_path / "val.jsonl", _pairs(3, offset=6))
  c.data.update(data)
  os.makedirs(tmp_path / "run", exist_ok=True)  # the trainer creates it before the task
  return LanguageModelTask(c, str(tmp_path / "run"))


def test_loss_is_the_mean_over_response_tokens(tmp_path):
  task = _tiny_task(tmp_path)
  model = task.model()
  params = model.init(jax.random.key(0), *task.init_args())["params"]
  batch = next(iter(task.eval_batches()))
  apply_fn = lambda *a, **k: model.apply({"params": params}, *a, **k)
  loss, _ = task.loss(apply_fn, batch, train=False)

  # By hand: log-probabilities of each response token (and EOS) given what precedes it.
  tok, eos = task.tokenizer, task.tokenizer.backend.token_to_id(EOS)
  logits = np.asarray(model.apply({"params": params}, batch["tokens"][:, :-1])["logits"],
                      np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = []
  for row, record in enumerate(_pairs(3, offset=6)):
    start = len(tok.encode(task.format.prompt_text(record["prompt"])))
    targets = tok.encode(record["response"]).tolist() + [eos]
    for k, t in enumerate(targets):
      assert batch["tokens"][row, start + k] == t
      nll.append(-logp[row, start + k - 1, t])
  assert float(batch["weights"].sum()) == len(nll)  # the padded 4th row weighs nothing
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)


def test_packed_rows_compute_what_each_example_computes_alone(tmp_path):
  task = _tiny_task(tmp_path, packing="first_fit", seq_len=64)
  model = task.model()
  params = model.init(jax.random.key(0), *task.init_args())["params"]
  apply_fn = lambda *a, **k: model.apply({"params": params}, *a, **k)
  packed = task.rows["train"]
  alone = instructions.encode_rows(task.tokenizer, instructions.read_examples(
      task.config.data.source, task.format), 64)
  assert packed.segment_ids is not None and len(packed) < len(alone) == packed.num_examples

  # Each example is one segment, whole, its positions from 0.
  segments = []
  for r in range(len(packed)):
    for s in range(1, packed.segment_ids[r].max() + 1):
      at = packed.segment_ids[r] == s
      assert packed.positions[r][at].tolist() == list(range(at.sum()))
      segments.append(tuple(packed.tokens[r][at]))
  assert sorted(segments) == sorted(tuple(t[:n]) for t, n in zip(alone.tokens, alone.lengths))

  # The same loss terms, summed: attention stays within a segment, the prompts weigh 0.
  sums = [LanguageModelTask.eval_sums(task, apply_fn, r[np.arange(len(r))])  # every row
          for r in (packed, alone)]
  assert float(sums[0]["tokens"]) == float(sums[1]["tokens"]) == alone.weights.sum()
  np.testing.assert_allclose(float(sums[0]["loss_sum"]), float(sums[1]["loss_sum"]), rtol=1e-5)


@pytest.mark.parametrize("record, message", [
    ('{"prompt": "Hi"}', r"bad.jsonl:2: no field 'response'"),
    ('{"prompt": "Hi", "response": 3}', r"bad.jsonl:2: field 'response' is a JSON number"),
    ('["Hi", "there"]', r"bad.jsonl:2: a JSON array, not an object"),
    ('{"prompt": "Hi", "response": "x"', r"bad.jsonl:2: not JSON"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, record, message):
  bad = _write_jsonl(tmp_path / "bad.jsonl", [_pairs(1)[0], record])
  with pytest.raises(UserError, match=message) as e:
    _tiny_task(tmp_path, eval_source=bad)
  assert "\n" not in str(e.value)


def _tiny_run_args(tmp_path, config: str, folder: str, run: str) -> list[str]:
  overrides = {
      "init_from": folder, "seq_len": 64, "batch_size": 8, "eval_batch_size": 16,
      "num_steps": 30, "log_every": 1, "eval_every": 30, "checkpoint_every": 30,
      "optimizer.lr": 1e-2, "optimizer.warmup_steps": 2, "model.dtype": "float32",
      "data.source": f"jsonl:{tmp_path / 'train.jsonl'}",
      "data.eval_source": f"jsonl:{tmp_path / 'val.jsonl'}",
      "sample.prompts": "('Name the colour number 7.', 'Name the colour number 2.')",
      "sample.num_tokens": 8,
  }
  args = [f"--config={os.path.join(REPO, config)}", f"--workdir={run}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  # The folder's architecture (a 2-layer Llama), not SmolLM2-135M's.
  args += [f"--config.model.{name}=None" for name in PRESETS["smollm2_135m"]]
  return args


def _train_losses(run: str) -> list[float]:
  with open(os.path.join(run, "metrics.jsonl")) as f:
    return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def _generations(out: str, when: str) -> list[str]:
  return re.findall(rf"^generation \d {when} \(step \d+\): .+$", out, re.MULTILINE)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> str:
  return _hf_folder(tmp_path_factory.mktemp("llama"), _corpus_text())


@pytest.mark.heavy  # a training run from a Hugging Face folder: 25-30 s each on the 2-core box
@pytest.mark.parametrize("config", ["configs/lm/smollm2_lora.py", "configs/lm/smollm2_qlora.py"])
def test_instruction_tuning_from_a_llama_folder(tmp_path, llama_folder, config, capsys):
  _write_jsonl(tmp_path / "train.jsonl", _pairs(48))
  _write_jsonl(tmp_path / "val.jsonl", _pairs(8, offset=48))
  run = str(tmp_path / "run")
  args = _tiny_run_args(tmp_path, config, llama_folder, run)
  if "qlora" in config:  # the tiny model's matrices have 32 and 48 rows: NF4 blocks of 16
    (pattern, recipe), = smollm2_qlora.get_config().reparam.rules
    assert "block_size=64" in recipe
    args.append("--config.reparam.rules=" + repr(
        ((pattern, recipe.replace("block_size=64", "block_size=16")),)))
  final = train.main(args)
  out = capsys.readouterr().out

  # The frozen random output layer keeps the logits small, so the loss falls slowly
  # (5.70 → 5.24 here); the greedy answers show what was learnt.
  losses = _train_losses(run)
  assert len(losses) == 30 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
  assert np.isfinite(final["eval/loss"])
  before, after = _generations(out, "before training"), _generations(out, "after training")
  assert len(before) == len(after) == 2, out
  assert all(g.startswith('generation 0') and '"Name the colour number 7." -> ' in g
             for g in (before[0], after[0]))
  assert not any('-> "The colour is' in g for g in before), before
  assert all('-> "The colour is' in g for g in after), after  # the response's form, learnt
  packed = re.search(r"instructions \(train\): 48 examples in (\d+) rows", out)
  assert packed and int(packed.group(1)) < 48, out  # the configs pack first-fit

  # Only the adapters trained: each base is the folder's weight (its NF4 codes for QLoRA),
  # the embeddings and the untied lm_head are the folder's.
  with open(os.path.join(run, "config.json")) as f:
    rules = tuple(tuple(r) for r in json.load(f)["reparam"]["rules"])
  start = flatten(Reparam.from_config({"rules": rules}).from_dense(
      import_folder(llama_folder)[0]))
  params = load_run(run).params
  for path, value in flatten(params).items():
    if not path.endswith(("lora_a", "lora_b")):
      np.testing.assert_array_equal(value, start[path], err_msg=path)
  query = params["block_0"]["attn"]["query"]["kernel"]
  assert np.abs(query["lora_b"]).max() > 0
  if "qlora" in config:
    assert query["base"]["packed"].dtype == np.uint8
