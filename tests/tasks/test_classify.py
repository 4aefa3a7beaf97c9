"""Classifier head, loss, exact report numbers, partial init_from, bucketed batches."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.data.buckets import bucketed_loader
from reparam_jax.errors import UserError
from reparam_jax.objectives.classification import classification_loss, confusion_counts
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.tasks import classify_report
from tests.tasks.encoder_helpers import VOCAB, init_params, tiny_encoder, train_few_steps


def test_classifier_head_shapes_and_param_tree():
  model = tiny_encoder(num_classes=3)
  ids = np.ones((5, 12), np.int32)
  mask = np.arange(12)[None] < np.array([[3], [12], [1], [7], [5]])
  params = init_params(model, ids, mask)
  assert set(params["classifier"]) == {"ln", "out"}
  assert params["classifier"]["out"]["kernel"].shape == (16, 3)
  assert "embed" in params and "block_0" in params  # backbone at the top level
  out = model.apply({"params": params}, ids, mask)
  assert out["logits"].shape == (5, 3) and out["sentence"].shape == (5, 16)
  assert out["hidden"].shape == (5, 12, 16)


def test_classification_report_matches_hand_count():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
  preds = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1, 1])
  logits = jax.nn.one_hot(preds, 3) * 5.0
  weights = np.ones(10)
  weights[-1] = 0.0  # a padding row: must not count
  cm = np.asarray(confusion_counts(logits, labels, weights))
  # By hand (9 real rows): true 0 → [2, 1, 0]; true 1 → [0, 2, 0]; true 2 → [1, 1, 2].
  np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 1, 2]])
  s = classify_report.summary(cm, ["a", "b", "c"])
  assert s["accuracy"] == pytest.approx(6 / 9)
  assert s["precision/a"] == pytest.approx(2 / 3) and s["recall/a"] == pytest.approx(2 / 3)
  assert s["precision/b"] == pytest.approx(2 / 4) and s["recall/b"] == pytest.approx(1.0)
  assert s["precision/c"] == pytest.approx(1.0) and s["recall/c"] == pytest.approx(2 / 4)
  f1 = [2 / 3, 2 * 0.5 / 1.5, 2 * 0.5 / 1.5]
  assert s["f1/b"] == pytest.approx(f1[1])
  assert s["f1_macro"] == pytest.approx(np.mean(f1))
  text = classify_report.format_report(cm, ["a", "b", "c"])
  lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
  assert lines["b"] == ["0.5000", "1.0000", "0.6667", "2"]
  assert lines["accuracy"] == ["0.6667", "9"]
  assert lines["macro"][1:4] == [f"{np.mean([2 / 3, .5, 1]):.4f}", f"{np.mean([2 / 3, 1, .5]):.4f}",
                                 f"{np.mean(f1):.4f}"]


def test_classification_loss_label_smoothing_and_weights():
  logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])
  loss, m = classification_loss(logits, jnp.array([0, 1]), jnp.array([1.0, 0.0]))
  assert float(loss) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-5)
  assert float(m["accuracy"]) == 1.0
  smooth, _ = classification_loss(logits[:1], jnp.array([0]), label_smoothing=0.2)
  p = jax.nn.log_softmax(logits[0])
  assert float(smooth) == pytest.approx(-(0.9 * float(p[0]) + 0.1 * float(p[1])), rel=1e-5)


def test_classifier_trains():
  model = tiny_encoder(dropout=0.1)
  rng = np.random.default_rng(0)
  ids = rng.integers(7, VOCAB, size=(16, 12)).astype(np.int32)
  labels = (ids[:, 1] > VOCAB // 2).astype(np.int32)  # depends on one token
  mask = np.ones((16, 12), bool)
  params = init_params(model, ids, mask)

  def loss_fn(p, key):
    out = model.apply({"params": p}, ids, mask, train=True, rngs={"dropout": key})
    return classification_loss(out["logits"], labels)[0]

  before, after = train_few_steps(loss_fn, params, steps=40)
  assert after < 0.5 * before


def test_load_matching_params_loads_shared_keys_and_keeps_fresh_head(tmp_path):
  saved = {"embed": {"w": np.full((3, 2), 7.0, np.float32)},
           "mlm_head": {"b": np.ones(4, np.float32)}}
  checkpoint.save_params(str(tmp_path / "params"), saved)
  fresh = {"embed": {"w": jnp.zeros((3, 2))}, "classifier": {"k": jnp.full((2, 2), 3.0)}}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          fresh)
  params, summary = checkpoint.load_matching_params(str(tmp_path), abstract, fresh)
  np.testing.assert_array_equal(params["embed"]["w"], saved["embed"]["w"])
  np.testing.assert_array_equal(params["classifier"]["k"], fresh["classifier"]["k"])
  assert "from the checkpoint: embed" in summary
  assert "freshly initialised: classifier" in summary
  assert "not the model: mlm_head" in summary
  wrong = {"embed": {"w": jnp.zeros((2, 2))}}
  with pytest.raises(UserError, match="shape"):
    checkpoint.load_matching_params(str(tmp_path), jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), wrong), wrong)
  unrelated = {"other": jnp.zeros(2)}
  with pytest.raises(UserError, match="shares no parameter"):
    checkpoint.load_matching_params(str(tmp_path), jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), unrelated),
        unrelated)


def test_bucketed_batches_cover_each_epoch_pad_to_bucket_and_resume():
  lengths = np.array([3, 5, 9, 14, 20, 30, 31, 2] * 8)

  def build(indices, length, rng):
    return {"idx": np.asarray(indices)[:, None], "ids": np.zeros((len(indices), length)),
            "noise": rng.random((len(indices), 1))}

  it = bucketed_loader(lengths, (8, 16, 32), 4, seed=1, build=build)
  first_epoch = [next(it) for _ in range(16)]  # 64 records, buckets of 24/16/24 → 16 batches
  seen = np.concatenate([b["idx"][:, 0] for b in first_epoch])
  assert sorted(seen) == list(range(64))
  for b in first_epoch:
    width = b["ids"].shape[1]
    assert width in (8, 16, 32)
    assert (np.minimum(lengths[b["idx"][:, 0]], 32) <= width).all()
    assert width == 8 or (lengths[b["idx"][:, 0]] > {16: 8, 32: 16}[width]).all()
  # Throughput counts the token positions computed, i.e. the bucket width, not seq_len.
  from reparam_jax.tasks.classify import ClassificationTask
  assert [ClassificationTask.tokens_in(None, b) for b in first_epoch] == [
      4 * b["ids"].shape[1] for b in first_epoch]
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  again = bucketed_loader(lengths, (8, 16, 32), 4, seed=1, build=build)
  again.set_state(state)
  for w in want:
    got = next(again)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def _pairs_corpus(path, n, seed):
  """Sentence pairs labelled by whether both halves use the same word set."""
  import json  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  words = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps", "sings"]
  with open(path, "w") as f:
    for _ in range(n):
      a = list(rng.choice(words, 4))
      same = bool(rng.integers(2))
      b = list(rng.permutation(a)) if same else list(rng.choice(words, 4))
      f.write(json.dumps({"q": " ".join(a), "d": " ".join(b), "y": "same" if same else "other"})
              + "\n")


@pytest.mark.heavy
def test_a_sentence_pair_jsonl_source_trains_with_token_types(tmp_path, capsys):
  """`data.source`/`eval_source` of sentence pairs through the real trainer: the batches carry
  token types (1 on the second sentence) and the model reads them."""
  from reparam_jax import train  # noqa: PLC0415
  from reparam_jax.config import load as config_load  # noqa: PLC0415
  from reparam_jax.tasks.classify import ClassificationTask  # noqa: PLC0415
  from tests.helpers import REPO  # noqa: PLC0415
  _pairs_corpus(tmp_path / "train.jsonl", 256, 0)
  _pairs_corpus(tmp_path / "dev.jsonl", 40, 1)
  spec = "jsonl:{}?text=q&pair=d&label=y"
  args = [f"--config={REPO}/configs/sst2/encoder.py", f"--workdir={tmp_path / 'run'}"] + [
      f"--config.{k}={v}" for k, v in {
          "data.source": spec.format(tmp_path / "train.jsonl"),
          "data.eval_source": spec.format(tmp_path / "dev.jsonl"),
          "data.vocab_size": 40, "model.num_layers": 1, "model.num_heads": 2,
          "model.embed_dim": 16, "model.mlp_dim": 32, "seq_len": 16, "batch_size": 16,
          "eval_batch_size": 32, "num_steps": 2, "log_every": 1, "eval_every": 2,
          "checkpoint_every": 2}.items()]
  final = train.main(args)
  assert final["eval/accuracy"] >= 0 and "report.txt" in os.listdir(tmp_path / "run")
  examples = rundir.read_eval_examples(tmp_path / "run")  # padding dropped: 40 dev pairs
  assert examples["correct"].shape == (40,)
  assert examples["correct"].mean() == pytest.approx(final["eval/accuracy"], abs=1e-9)
  report = open(tmp_path / "run" / "report.txt").read()
  assert "other" in report and "same" in report  # the labels' own names (sorted)

  config, _ = config_load.load(args)
  task = ClassificationTask(config, str(tmp_path / "run"))  # reuses the run's tokenizer
  batch = next(iter(task.eval_batches()))
  types, ids = batch["token_types"], batch["ids"]
  sep = task.tokenizer.piece_id("[SEP]")
  first_sep = np.argmax(ids == sep, axis=1)
  for row in range(4):
    assert not types[row, :first_sep[row] + 1].any() and types[row, first_sep[row] + 1]
  model = task.model()
  params = init_params(model, ids, batch["padding_mask"])
  with_types = model.apply({"params": params}, *task.inputs(batch))["logits"]
  without = model.apply({"params": params}, ids, batch["padding_mask"])["logits"]
  assert not np.allclose(with_types, without)
