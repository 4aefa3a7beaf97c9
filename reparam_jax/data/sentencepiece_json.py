"""SentencePiece models (`tokenizer.model`, `spiece.model`) as `tokenizers` pipelines.

Llama 2, Mistral v0.1, T5 and many other checkpoints ship their tokenizer as a
SentencePiece `ModelProto`.  `backend` rebuilds it with Hugging Face's
`tokenizers` library, so it encodes like every other pretrained tokenizer of
the project (hf_tokenizers.HfTokenizer: batch encoding in Rust, added tokens,
`save` to a `tokenizer.json`), with SentencePiece's own rules read from the
proto rather than assumed per family:

  normalizer   the proto's precompiled character map (T5's NFKC-based `nmt_nfkc`;
               none for Llama's `identity`), then, as its `normalizer_spec` says,
               extra spaces removed, a dummy prefix space, spaces written `▁`
  model        BPE: vocabulary ids are piece ids; a merge's rank is its result's
               score (SentencePiece merges the best-scoring pair first), so
               merges are every split of a normal piece into two normal pieces,
               ranked by the whole piece's score.  Unigram: the pieces and scores.
               Byte fallback (`<0x41>`) as the proto's trainer_spec says.
  pre-tokens   Unigram models trained with `split_by_whitespace` are segmented
               word by word (no piece holds a `▁` past its start, so this is the
               same Viterbi path, found faster); BPE runs over the whole text.
  added        control pieces (`<s>`, `</s>`, `<pad>`) as special tokens, user-
               defined pieces as plain added tokens (both whole, never split), and
               T5's sentinels `<extra_id_0>` … numbered down from the top of the
               vocabulary (`<extra_id_0>` is the last id), as transformers adds them.
  decoder      `▁` back to spaces, byte pieces back to bytes, the dummy prefix
               dropped.

tests/hf/test_tokenizers.py checks the ids against transformers' tokenizers
and SentencePiece itself on the shared SST-2 and Tiny Shakespeare text.
"""

from __future__ import annotations

from typing import Any

import tokenizers
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors

from reparam_jax.errors import UserError

FILENAMES = ("tokenizer.model", "spiece.model")  # Llama 2 / Mistral, T5
# ModelProto.SentencePiece.Type and TrainerSpec.ModelType values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
SPACE = "▁"


def read_model(path: str) -> Any:
  """The `ModelProto` of a SentencePiece model file."""
  proto = spm_pb2.ModelProto()
  try:
    with open(path, "rb") as f:
      proto.ParseFromString(f.read())
  except (OSError, DecodeError) as e:
    raise UserError(f"{path}: not a readable SentencePiece model ({e})") from None
  if not proto.pieces:
    raise UserError(f"{path}: a SentencePiece model with no pieces")
  return proto


def _bpe_merges(pieces: list[Any]) -> list[tuple[str, str]]:
  """Every split of a normal piece into two normal pieces, best-scoring result first."""
  normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == NORMAL}
  ranked = []
  for piece, (score, index) in normal.items():
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in normal and right in normal:
        ranked.append((-score, index, left, right))
  ranked.sort()
  return [(left, right) for _, _, left, right in ranked]


def _model(proto: Any, where: str) -> Any:
  spec = proto.trainer_spec
  pieces = list(proto.pieces)
  if spec.model_type == UNIGRAM:
    return models.Unigram([(p.piece, p.score) for p in pieces], unk_id=spec.unk_id,
                          byte_fallback=spec.byte_fallback)
  if spec.model_type == BPE:
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    return models.BPE(vocab, _bpe_merges(pieces), unk_token=pieces[spec.unk_id].piece,
                      fuse_unk=True, byte_fallback=spec.byte_fallback)
  kinds = {3: "word", 4: "char"}
  raise UserError(f"{where}: a SentencePiece {kinds.get(spec.model_type, spec.model_type)} "
                  "model; only unigram (T5) and BPE (Llama 2) models are supported")


def _normalizer(spec: Any) -> Any:
  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    # SentencePiece strips and collapses spaces only (its charsmap has already mapped
    # other whitespace where the normalization rule says so).
    steps += [normalizers.Replace(Regex(r"^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
  if spec.add_dummy_prefix:
    steps.append(normalizers.Prepend(" "))
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", SPACE))
  return normalizers.Sequence(steps)


def sentinel_tokens(count: int) -> list[str]:
  """T5's sentinels in id order: `<extra_id_{count-1}>` first, `<extra_id_0>` last."""
  return [f"<extra_id_{k}>" for k in reversed(range(count))]


def backend(proto: Any, where: str, extra_ids: int = 0, add_bos: bool | None = None,
            add_eos: bool | None = None) -> tokenizers.Tokenizer:
  """The `tokenizers.Tokenizer` that encodes like the SentencePiece model `proto`, with
  `extra_ids` sentinels after its pieces.

  The post-processor (used for `document_boundaries`, never by `encode`) adds BOS where
  the model has one (Llama 2) and EOS where it has none (T5), unless `add_bos` / `add_eos`
  (tokenizer_config.json's `add_bos_token` / `add_eos_token`) say otherwise.
  """
  spec, norm = proto.trainer_spec, proto.normalizer_spec
  out = tokenizers.Tokenizer(_model(proto, where))
  out.normalizer = _normalizer(norm)
  if (spec.model_type == UNIGRAM and spec.split_by_whitespace
      and not spec.allow_whitespace_only_pieces and norm.escape_whitespaces):
    out.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never",
                                                 split=True)
  steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
  if norm.add_dummy_prefix:
    steps.append(decoders.Strip(content=" ", left=1, right=0))
  out.decoder = decoders.Sequence(steps)
  pieces = list(proto.pieces)
  out.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                          for p in pieces if p.type == CONTROL])
  user = [AddedToken(p.piece, normalized=False) for p in pieces if p.type == USER_DEFINED]
  if user:
    out.add_tokens(user)
  if extra_ids:
    out.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in sentinel_tokens(extra_ids)])
  bos = pieces[spec.bos_id].piece if 0 <= spec.bos_id < len(pieces) else None
  eos = pieces[spec.eos_id].piece if 0 <= spec.eos_id < len(pieces) else None
  add_bos = bos is not None and (add_bos if add_bos is not None else True)
  add_eos = eos is not None and (add_eos if add_eos is not None else bos is None)
  single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
  pair = single + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
  specials = (([(bos, spec.bos_id)] if add_bos else [])
              + ([(eos, spec.eos_id)] if add_eos else []))
  out.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                     special_tokens=specials)
  return out


def special_names(proto: Any) -> dict[str, str]:
  """tokenizer_config.json-style `{bos,eos,unk,pad}_token` names of the model's own pieces."""
  spec, pieces = proto.trainer_spec, list(proto.pieces)
  out = {}
  for key, index in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id),
                     ("pad", spec.pad_id)):
    if 0 <= index < len(pieces):
      out[f"{key}_token"] = pieces[index].piece
  return out
