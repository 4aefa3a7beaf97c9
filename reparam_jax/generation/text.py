"""Text from a model: a decoder LM continues prompts, an encoder–decoder answers them.

The model is a training run's latest checkpoint (or a `compress` output), or a
pretrained model: a Hugging Face GPT-2, Llama-family or T5 folder or its
`convert_hf` output, decoded with the folder's own tokenizer.  Both kinds of model decode with the
cached on-device generators (decode.py, seq2seq.py).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax

from reparam_jax.data import hf_tokenizers
from reparam_jax.data.tokenizers import Tokenizer, load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.generation import seq2seq
from reparam_jax.generation.decode import Sampling, decoding_params, generate
from reparam_jax.hf import family, is_encoder_decoder, pretrained
from reparam_jax.hf.files import read_config
from reparam_jax.hf.files import stop_token_ids as stop_tokens_of
from reparam_jax.hf.importer import MODEL_FILE, SOURCE_FILE, import_folder
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.models.seq2seq import EncoderDecoder
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir.workdir import CONFIG, Run, load_run
from reparam_jax import tasks
from reparam_jax.tasks import seq2seq as seq2seq_task
from reparam_jax.tasks.lm import lm_model


def sample_run(workdir: str, prompts: Sequence[str], num_tokens: int, sampling: Sampling,
               seed: int = 0, stop_token_ids: Sequence[int] = (), batch_size: int = 0,
               beams: int = 1, length_penalty: float = 1.0,
               early_stopping: bool | str = False) -> list[str]:
  """Each prompt followed by up to `num_tokens` tokens from the model at `workdir`.

  `workdir` is a training workdir (its latest checkpoint), a `compress` output,
  a Hugging Face folder (GPT-2, the Llama family, T5) or a `convert_hf` output
  of one; a pretrained model stops at its own end-of-text tokens
  (generation_config.json) unless `stop_token_ids` are given.  For an
  encoder–decoder the prompt is the encoder's input (`<extra_id_N>` marks a
  sentinel) and the output is the decoder's text, from the checkpoint's
  `decoder_start_token_id`; `beams > 1` is beam search.
  """
  if not prompts:
    raise UserError("no prompts given; pass --prompt=TEXT or --prompt_file=FILE")
  source = pretrained.kind(workdir)
  if source in ("hf", "converted"):
    model, params, tokenizer, hf_config = pretrained_model(workdir, source)
    if not stop_token_ids:  # the model's own, where `generate` would stop
      stop_token_ids = stop_tokens_of(workdir, hf_config)
    if isinstance(model, EncoderDecoder):
      vocab = seq2seq_task.Vocabulary.of_pretrained(tokenizer)
      start = hf_config.get("decoder_start_token_id", hf_config.get("pad_token_id", 0))
      return _answer(model, params, vocab, prompts, num_tokens, sampling, seed, batch_size,
                     seq2seq.Beam(beams, length_penalty, early_stopping), start,
                     stop_token_ids or (seq2seq_task.EOS,))
    if beams > 1:
      raise UserError("--beams is for encoder–decoder models; a language model samples or "
                      "decodes greedily (--temperature=0)")
    return _continue(model, params, tokenizer, prompts, num_tokens, sampling, seed,
                     stop_token_ids, batch_size)
  _check_is_run(workdir)
  run = load_run(workdir)  # config, params and, for pruned runs, their masks
  config = run.config
  task = tasks.task_class(config)
  if task.ENCODER_DECODER:
    vocab = seq2seq_task.Vocabulary(load_tokenizer(run.workdir), config.seq2seq.num_sentinels)
    model = seq2seq_task.seq2seq_model(config, vocab.size)
    params = decoding_params(run.params, config.reparam, run.masks)
    return _answer(model, params, vocab, prompts, num_tokens, sampling, seed, batch_size,
                   seq2seq.Beam(beams, length_penalty, early_stopping), seq2seq_task.PAD,
                   stop_token_ids or (seq2seq_task.EOS,))
  if beams > 1:
    raise UserError("--beams is for encoder–decoder runs; a language model samples or decodes "
                    "greedily (--temperature=0)")
  if not task.CAUSAL_LM:
    raise UserError(f"{workdir} is a {config.task!r} run, not a decoder language model: "
                    "only a language model generates text")
  tokenizer = load_tokenizer(workdir)
  model = lm_model(config, tokenizer.vocab_size)
  # The reparameterization's effective weights, once for the whole call (not per token).
  params = decoding_params(run.params, config.reparam, run.masks)
  return _continue(model, params, tokenizer, prompts, num_tokens, sampling, seed,
                   stop_token_ids, batch_size)


def _continue(model: nn.Module, params: Any, tokenizer: Tokenizer, prompts: Sequence[str],
              num_tokens: int, sampling: Sampling, seed: int, stop_token_ids: Sequence[int],
              batch_size: int) -> list[str]:
  """Each prompt followed by the decoder LM's continuation, in batches of `batch_size`."""
  ids = [tokenizer.encode(p).tolist() for p in prompts]
  empty = [i for i, p in enumerate(ids) if not p]
  if empty:
    raise UserError(f"prompt {empty[0]} ({prompts[empty[0]]!r}) encodes to no tokens; give at "
                    "least one character")
  batch = batch_size or len(ids)
  texts = []
  for start in range(0, len(ids), batch):
    out = generate(model, params, ids[start:start + batch], num_tokens, sampling,
                   jax.random.fold_in(jax.random.key(seed), start), stop_token_ids)
    for row, prompt in enumerate(prompts[start:start + batch]):
      new = out.tokens[row, :out.lengths[row]].tolist()
      texts.append(prompt + continuation(tokenizer, ids[start + row], new))
  return texts


def continuation(tokenizer: Tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
  """The text `new_ids` add after the prompt's tokens.

  Decoded in context, not alone: a SentencePiece decoder drops the leading space of
  the first token it decodes (the dummy prefix), which mid-text is a real space
  between words, and a byte-level token may end a UTF-8 character the prompt began.
  """
  head = tokenizer.decode(list(prompt_ids))
  whole = tokenizer.decode(list(prompt_ids) + list(new_ids))
  return whole[len(head):] if whole.startswith(head) else tokenizer.decode(list(new_ids))


def _check_is_run(workdir: str) -> None:
  """A one-line error for a folder that holds no model `sample` reads."""
  config_path = os.path.join(workdir, CONFIG)
  if not os.path.exists(config_path):
    raise UserError(f"--workdir={workdir} is neither a training workdir or compress output "
                    f"({CONFIG} + checkpoint), a convert_hf output ({MODEL_FILE} + params/) "
                    "nor a Hugging Face model folder (config.json + weights)")
  found = pretrained.read_json(config_path)
  if "model_type" in found:  # a Hugging Face folder of a family the project does not read
    family(found["model_type"], config_path)


def pretrained_model(path: str, source: str) -> tuple[nn.Module, Any, Tokenizer, dict[str, Any]]:
  """(model, params, tokenizer, HF config.json) of a Hugging Face folder (`source` 'hf') or
  its `convert_hf` output ('converted'): a decoder LM or an encoder–decoder (T5), and the
  folder's own tokenizer.

  The checks (a generator? a tokenizer?) read only the small files, before the weights.
  """
  if source == "converted":
    section = pretrained.read_json(os.path.join(path, MODEL_FILE))
    info = pretrained.read_json(os.path.join(path, SOURCE_FILE))
    what = info.get("architecture") or "model"
    hf, encoder_decoder = info.get("hf_config") or {}, bool(info.get("encoder_decoder"))
  else:
    hf = read_config(path)
    fam = family(hf.get("model_type"), os.path.join(path, "config.json"))
    section, encoder_decoder = fam.model_fields(hf), is_encoder_decoder(fam)
    what = (hf.get("architectures") or [hf.get("model_type")])[0]
  if not (section.get("causal") or encoder_decoder):
    raise UserError(f"{path} holds a {what}, not a decoder language model or an encoder–"
                    "decoder: sample generates with those (a GPT-2, Llama-family or T5 folder, "
                    "its convert_hf output, or an lm or seq2seq training run)")
  tokenizer = hf_tokenizers.load(path)
  if tokenizer is None:
    raise UserError(f"{path} has no tokenizer (tokenizer.json, tokenizer.model / spiece.model, "
                    "or vocab.json + merges.txt); sample needs the model's own to encode "
                    "prompts and decode its tokens")
  if source == "converted":
    params = checkpoint.load_params(path)
    cfg = transformer_config({k: tuple(v) if isinstance(v, list) else v
                              for k, v in section.items()})
  else:
    params, cfg, _, _ = import_folder(path)
  model = EncoderDecoder(cfg) if encoder_decoder else Transformer(cfg)
  return model, params, tokenizer, hf


def _answer(model: nn.Module, params: Any, vocab: seq2seq_task.Vocabulary,
            prompts: Sequence[str], num_tokens: int, sampling: Sampling, seed: int,
            batch_size: int, beam: seq2seq.Beam, start_id: int,
            stop_token_ids: Sequence[int]) -> list[str]:
  """The decoder's text for each prompt of an encoder–decoder, each input ending in EOS."""
  if len(stop_token_ids) != 1:
    raise UserError(f"an encoder–decoder stops at one EOS id; got --stop_token_ids="
                    f"{','.join(map(str, stop_token_ids))}")
  eos = int(stop_token_ids[0])
  ids = [vocab.encode(p) + [seq2seq_task.EOS] for p in prompts]
  batch = batch_size or len(ids)
  texts = []
  for start in range(0, len(ids), batch):
    out = seq2seq.generate(model, params, ids[start:start + batch], num_tokens,
                           start_id=start_id, eos_id=eos, pad_id=seq2seq_task.PAD,
                           sampling=sampling, beam=beam,
                           rng=jax.random.fold_in(jax.random.key(seed), start))
    texts += [vocab.decode(out.tokens[row, :out.lengths[row]].tolist())
              for row in range(out.tokens.shape[0])]
  return texts
