"""Value checks of a loaded config, before any device is touched.

`config/load.py` already rejects unknown keys and overrides of the wrong type;
this module rejects values no run could use: a negative rank, a dropout of
1.5, a NaN learning rate, a mesh with two inferred axes, a reparam spec
that does not parse.  Checks that need the devices (mesh vs. device count,
batch vs. data-parallel size) are `training.sharding.validate_for_mesh`.

Every problem is reported, one line each, as a single `UserError` (exit 2).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import ml_collections

from reparam_jax.config.base import MESH_AXES, base_config
from reparam_jax.errors import UserError
from reparam_jax.models.config import ATTENTION_KERNELS
from reparam_jax.models.presets import PRESETS
from reparam_jax.models.stack import REMAT_POLICIES
from reparam_jax.reparam.compose import stages
from reparam_jax.reparam.rules import Plan

ConfigDict = ml_collections.ConfigDict

DTYPES = ("float32", "bfloat16", "float16")

# (dotted key, check, what is expected).  A check takes the value and
# returns True when it is acceptable.
_Check = tuple[str, Callable[[Any], bool], str]


def _positive(v: Any) -> bool:
  return _finite(v) and v > 0


def _non_negative(v: Any) -> bool:
  return _finite(v) and v >= 0


def _finite(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _probability(v: Any) -> bool:
  """A rate in [0, 1): dropout, sparsity (1 would remove everything)."""
  return _finite(v) and 0 <= v < 1


def _mesh_axis(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1)


CHECKS: tuple[_Check, ...] = (
    ("seq_len", _positive, "a positive integer"),
    ("batch_size", _positive, "a positive integer"),
    ("eval_batch_size", _positive, "a positive integer"),
    ("num_steps", _positive, "a positive integer"),
    ("log_every", _positive, "a positive integer"),
    ("eval_every", _positive, "a positive integer"),
    ("checkpoint_every", _positive, "a positive integer"),
    ("keep_checkpoints", _positive, "a positive integer"),
    ("data.vocab_size", _non_negative, "0 (derived) or a positive integer"),
    # A path is checked where it is opened (prepare_data, fine-tuning): a run on a
    # prepared corpus takes the corpus's tokenizer and never reads this one.
    ("data.tokenizer", lambda v: isinstance(v, str) and bool(v.strip()),
     "'char', 'sentencepiece' or the path of a tokenizer folder, tokenizer.json or "
     "SentencePiece .model"),
    ("data.packing", lambda v: v in ("concat", "first_fit"), "'concat' or 'first_fit'"),
    ("data.eval_batches", _positive, "a positive integer"),
    ("model.num_layers", _positive, "a positive integer"),
    ("model.num_heads", _positive, "a positive integer"),
    ("model.embed_dim", _positive, "a positive integer"),
    ("model.mlp_dim", _positive, "a positive integer"),
    ("model.vocab_size", _non_negative, "0 (the tokenizer's) or a positive integer"),
    ("model.max_len", _non_negative, "0 (= seq_len) or a positive integer"),
    ("model.dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    ("model.param_dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    ("model.remat", lambda v: v in (True, False, "True", "False", *REMAT_POLICIES),
     f"one of {', '.join(REMAT_POLICIES)}"),
    ("model.scan_unroll", _positive, "a positive integer (layers per scan iteration)"),
    ("model.attention", lambda v: v in ATTENTION_KERNELS,
     f"one of {', '.join(ATTENTION_KERNELS)}"),
    ("reparam.per_layer", lambda v: v in ("auto", True, False, "True", "False"),
     "'auto', True or False"),
    ("optimizer.lr", _positive, "a positive, finite number"),
    ("optimizer.end_lr", _non_negative, "a non-negative, finite number"),
    ("optimizer.warmup_steps", _non_negative, "a non-negative integer"),
    ("optimizer.b1", _probability, "a number in [0, 1)"),
    ("optimizer.b2", _probability, "a number in [0, 1)"),
    ("optimizer.eps", _positive, "a positive number"),
    ("optimizer.weight_decay", _non_negative, "a non-negative number"),
    ("optimizer.clip_norm", _non_negative, "0 (off) or a positive number"),
    ("optimizer.grad_accum_steps", _positive, "a positive integer"),
    ("optimizer.schedule", lambda v: v in ("cosine", "linear"), "'cosine' or 'linear'"),
    ("reliability.preemption_sync_every", _positive, "a positive integer"),
    ("reliability.preemption_grace_s", _non_negative, "0 (off) or a positive number of seconds"),
    ("reliability.on_nonfinite", lambda v: v in ("stop", "skip"), "'stop' or 'skip'"),
    ("reliability.max_skipped_steps", _non_negative, "a non-negative integer"),
    ("reliability.save_retries", _non_negative, "a non-negative integer"),
    ("reliability.save_retry_wait_s", _non_negative, "a non-negative number of seconds"),
    ("reliability.nan_at_step", _non_negative, "0 (off) or a step number"),
    ("perf.cpu_devices", _non_negative, "0 (JAX's default) or a number of CPU devices"),
)

# Checked wherever they occur in the config's sections (e.g. every `*dropout`), by key name.
_BY_NAME: tuple[tuple[Callable[[str], bool], Callable[[Any], bool], str], ...] = (
    (lambda k: k.endswith("dropout") or k.endswith("sparsity"), _probability,
     "a number in [0, 1)"),
    (lambda k: k == "rank" or k.endswith("_rank"), _positive, "a positive integer"),
)


def validate_config(config: ConfigDict) -> None:
  """Raises one `UserError` listing every problem (one per line); returns if none."""
  problems = list(_problems(config))
  if problems:
    raise UserError("\nerror: ".join(problems))


def _problems(config: ConfigDict) -> Iterator[str]:
  yield from _type_problems(config, base_config())
  flat = dict(_flatten(config))
  for key, ok, expected in CHECKS:
    if key in flat and not _safe(ok, flat[key]):
      yield f"config.{key}={flat[key]!r}: expected {expected}"
  for key, value in flat.items():
    leaf = key.rsplit(".", 1)[-1]
    for applies, ok, expected in _BY_NAME:
      if applies(leaf) and not any(key == c[0] for c in CHECKS) and not _safe(ok, value):
        yield f"config.{key}={value!r}: expected {expected}"
  data = config.get("data") or {}
  if data.get("prepared") and data.get("mixture"):
    yield "config.data.prepared and config.data.mixture are both set: train on one of them"
  if (data.get("prepared") or data.get("mixture")) and not data.get("eval_prepared"):
    yield ("config.data.eval_prepared is empty: a prepared corpus needs a held-out folder too "
           "(prepare_data on a validation source)")
  if config.get("init_adapter") and not config.get("init_from"):
    yield (f"config.init_adapter={config.init_adapter!r} needs config.init_from: the model the "
           "adapter was trained on")
  yield from _model_problems(config)
  yield from _mesh_problems(config)
  yield from _axis_rule_problems(config)
  yield from _reparam_problems(config)
  yield from _holdout_problems(config)


def _holdout_problems(config: ConfigDict) -> Iterator[str]:
  """`data.evaluate_on='holdout'` on data its task does not carve a held-out split from."""
  from reparam_jax.sweeps.tuning import holdout_unread  # pylint: disable=import-outside-toplevel
  problem = holdout_unread(config)
  if problem:
    yield problem


def _safe(ok: Callable[[Any], bool], value: Any) -> bool:
  try:
    return bool(ok(value))
  except TypeError:
    return False


def _flatten(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for k, v in config.items():
    if isinstance(v, ConfigDict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _type_problems(config: ConfigDict, base: ConfigDict) -> Iterator[str]:
  """Fields the trainer knows must keep their type (a config file may set anything)."""
  want = dict(_flatten(base))
  for key, value in _flatten(config):
    if key not in want or want[key] is None:
      continue
    expected = type(want[key])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      continue  # 1 is a fine learning-rate multiplier
    if expected in (tuple, list) and isinstance(value, (tuple, list)):
      continue
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
      yield (f"config.{key}={value!r}: expected {_type_name(expected)}, got "
             f"{_type_name(type(value))}")


def _type_name(t: type) -> str:
  return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
          tuple: "a tuple", list: "a list"}.get(t, t.__name__)


def _model_problems(config: ConfigDict) -> Iterator[str]:
  model = config.get("model")
  if isinstance(model, ConfigDict) and model.get("scan_layers") in (True, "True") and (
      model.get("share_layers") or model.get("layer_dims")):
    yield ("config.model.scan_layers=True needs num_layers identical blocks; "
           "model.share_layers and model.layer_dims need scan_layers=False")
  if not isinstance(model, ConfigDict) or model.get("preset"):
    if isinstance(model, ConfigDict) and model.get("preset"):
      if model.preset not in PRESETS:
        yield (f"config.model.preset={model.preset!r}: unknown; known: "
               f"{', '.join(sorted(PRESETS))}")
    return
  heads, dim = model.get("num_heads"), model.get("embed_dim")
  if _positive(heads) and _positive(dim) and isinstance(heads, int) and dim % heads:
    yield (f"config.model.embed_dim={dim} is not divisible by config.model.num_heads={heads}")
  max_len, seq_len = model.get("max_len"), config.get("seq_len")
  if _positive(max_len) and _positive(seq_len) and max_len < seq_len:
    yield (f"config.model.max_len={max_len} is shorter than config.seq_len={seq_len}; "
           "use 0 (= seq_len) or at least seq_len")


def _mesh_problems(config: ConfigDict) -> Iterator[str]:
  mesh = config.get("mesh")
  if not isinstance(mesh, ConfigDict):
    return
  for axis, size in mesh.items():
    if not _mesh_axis(size):
      yield f"config.mesh.{axis}={size!r}: expected a positive integer or -1 (the rest)"
  if sum(1 for v in mesh.values() if v == -1) > 1:
    yield f"config.mesh {dict(mesh)}: at most one axis may be -1 (inferred)"


def _axis_rule_problems(config: ConfigDict) -> Iterator[str]:
  rules = config.get("axis_rules")
  if rules is None:
    return

  def mesh_axes_ok(axes: Any) -> bool:
    if axes is None or axes in MESH_AXES:
      return True
    return isinstance(axes, (tuple, list)) and all(a in MESH_AXES for a in axes)

  for i, rule in enumerate(rules if isinstance(rules, (tuple, list)) else [rules]):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
            and mesh_axes_ok(rule[1])):
      yield (f"config.axis_rules[{i}]={rule!r}: expected a (logical axis, mesh axis or axes "
             f"or None) pair; mesh axes are {', '.join(MESH_AXES)}")
      return


def _reparam_problems(config: ConfigDict) -> Iterator[str]:
  """Parses the reparam rules (the reparam engine's own checks), then each stage's arguments.

  A rank is checked against the matrix it is applied to when the model is
  built; here, before that, each transform reports the arguments that are
  wrong for any weight (`Transform.arg_problems`: rank ≤ 0, sparsity outside
  [0, 1)).
  """
  cfg = config.get("reparam")
  if not isinstance(cfg, ConfigDict) or not cfg.get("rules"):
    return
  try:
    plan = Plan.from_config(cfg)
  except UserError as e:
    yield str(e)
    return
  except (TypeError, ValueError) as e:  # a transform's constructor rejecting an argument
    yield f"config.reparam.rules: {e}"
    return
  for rule in plan.rules:
    for stage in stages(rule.node):
      for problem in stage.arg_problems():
        yield f"config.reparam.rules: {rule.spec!r} (for {rule.pattern!r}) has {problem}"
