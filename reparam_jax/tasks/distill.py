"""Knowledge distillation of a fine-tuned encoder (teacher) into a smaller one (student).

  loss = α·L_task + β·T²·KL(softmax(t/T) ‖ softmax(s/T)) + γ·L_CL + δ·L_hidden

(the seeds' α L_task + β L_KD + γ L_CL, plus TinyBERT's hidden-state MSE):
L_task is the cross-entropy on the labels, L_KD Hinton et al.'s soft-target
loss, L_CL SimCSE's InfoNCE between two dropout views of the student's
pooled representation, L_hidden the MSE between the student's last hidden
states, mapped by a learned projection `distill_proj` when the widths
differ, and the teacher's.  Each term is logged separately.

The teacher is `distill.teacher`, a `classify` workdir: its config.json
gives its architecture, its latest checkpoint its weights, and its tokenizer
is reused.  The teacher's weights live in the train state's `extra`
collections (`extra['teacher']`), never in `params`: the optimizer never
sees them, they are sharded by the same logical rules as the student, and
they are checkpointed with the state so a resumed run is exact.

Eval reports the student's metrics (as `classify`) plus `teacher_accuracy`
and `accuracy_vs_teacher` (student / teacher accuracy).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.models.heads import EncoderWithHeads
from reparam_jax.models.layers import Dense
from reparam_jax.objectives.classification import classification_loss
from reparam_jax.objectives.contrastive import info_nce
from reparam_jax.objectives.distillation import hidden_mse, kd_loss
from reparam_jax.rundir import checkpoint
from reparam_jax.tasks.classify import ClassificationTask
from reparam_jax.tasks.encoder import (
  classifier_init_args,
  encoder_model,
  read_run_config,
  section,
  two_views,
)

Batch = dict[str, Any]


class StudentWithTeacher(nn.Module):
  """The student (params at the top level) run beside a frozen teacher.

  `teacher_init()` gives the teacher's weights (boxed with logical names);
  they become the `teacher` variable collection at `init`.
  """

  student: EncoderWithHeads
  teacher: EncoderWithHeads  # an unbound template, applied functionally
  teacher_init: Callable[[], Any]
  project: bool  # learn student → teacher width projection for the hidden loss

  def setup(self):
    nn.share_scope(self, self.student)
    self.teacher_params = self.variable("teacher", "params", self.teacher_init)
    if self.project:
      self.distill_proj = Dense(self.teacher.cfg.embed_dim, ("embed", None), name="distill_proj")

  def __call__(self, ids_BxL: jax.Array, padding_mask_BxL: jax.Array,
               token_types_BxL: jax.Array | None = None, *,
               train: bool = False) -> dict[str, jax.Array]:
    out = dict(self.student(ids_BxL, padding_mask_BxL, token_types_BxL, train=train))
    teacher = self.teacher.clone(parent=None).apply(
        {"params": nn.meta.unbox(self.teacher_params.value)}, ids_BxL, padding_mask_BxL,
        token_types_BxL, train=False)
    out["teacher_logits"] = jax.lax.stop_gradient(teacher["logits"])
    out["teacher_hidden"] = jax.lax.stop_gradient(teacher["hidden"])
    if self.project:
      out["hidden_projected"] = self.distill_proj(out["hidden"])
    return out


class DistillationTask(ClassificationTask):

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    self.dcfg = section(config, "distill")
    if not self.dcfg.teacher:
      raise UserError("distill needs --config.distill.teacher=<workdir of a classify run>")
    self.teacher_run = read_run_config(self.dcfg.teacher)
    if self.teacher_run.get("task") != "classify":
      raise UserError(f"distill.teacher={self.dcfg.teacher} is a {self.teacher_run.get('task')!r} "
                      "run; the teacher must be a fine-tuned 'classify' run")
    if self.dcfg.temperature <= 0:
      raise UserError(f"distill.temperature must be positive, got {self.dcfg.temperature}")
    super().__init__(config, workdir)

  def tokenizer_sources(self) -> tuple[str, ...]:
    return (self.dcfg.teacher,)

  def _teacher_model(self) -> EncoderWithHeads:
    run = self.teacher_run
    return encoder_model(run["model"], run["encoder"], self.tokenizer.vocab_size, run["seq_len"],
                         ("classifier",))

  @classmethod
  def inherited_tokenizer(cls, config: ml_collections.ConfigDict) -> str:
    """The teacher's: student and teacher read the same ids."""
    return section(config, "distill").teacher

  @classmethod
  def model_from_config(cls, config: ml_collections.ConfigDict, vocab_size: int
                        ) -> tuple[nn.Module, tuple[np.ndarray, ...]]:
    """(`model()`, `init_args()`) without reading data or the teacher's weights: the
    teacher's parameters are another collection, so zeros of their shapes stand in."""
    student, init_args = super().model_from_config(config, vocab_size)
    dcfg = section(config, "distill")
    run = read_run_config(dcfg.teacher)
    teacher = encoder_model(run["model"], run["encoder"], vocab_size, run["seq_len"],
                            ("classifier",))
    boxed = jax.eval_shape(teacher.init, jax.random.key(0), *init_args)["params"]
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), boxed)  # noqa: E731
    project = bool(dcfg.hidden_weight) and student.cfg.embed_dim != teacher.cfg.embed_dim
    return StudentWithTeacher(student, teacher, zeros, project), init_args

  def model(self) -> nn.Module:
    student = super().model()
    teacher = self._teacher_model()
    if self.config.seq_len > teacher.cfg.max_len:
      raise UserError(f"seq_len={self.config.seq_len} exceeds the teacher's max_len "
                      f"{teacher.cfg.max_len}")
    project = bool(self.dcfg.hidden_weight) and student.cfg.embed_dim != teacher.cfg.embed_dim
    boxed = jax.eval_shape(teacher.init, jax.random.key(0),
                           *classifier_init_args(self.config.seq_len))["params"]
    # Read now, outside any trace; `init` (traced) then embeds the host arrays.
    teacher_params = _load_onto_boxes(self.dcfg.teacher, boxed)
    return StudentWithTeacher(student, teacher, lambda: teacher_params, project)

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    d = self.dcfg
    inputs = self.inputs(batch)
    if d.gamma and train:
      out, view2 = two_views(apply_fn, inputs, train)
    else:
      out, view2 = apply_fn(*inputs, train=train), None
    l_task, metrics = classification_loss(out["logits"], batch["label"][:, 0])
    l_kd = kd_loss(out["logits"], out["teacher_logits"], d.temperature)
    total = d.alpha * l_task + d.beta * l_kd
    metrics.update(task_loss=l_task, kd_loss=l_kd)
    if d.hidden_weight:
      student_h = out.get("hidden_projected", out["hidden"])
      l_hidden = hidden_mse(student_h, out["teacher_hidden"], batch["padding_mask"])
      total += d.hidden_weight * l_hidden
      metrics["hidden_loss"] = l_hidden
    if view2 is not None:
      l_cl, m = info_nce(out["sentence"], view2["sentence"], d.contrastive_temperature)
      total += d.gamma * l_cl
      metrics.update(m, contrastive_loss=l_cl)
    metrics["loss"] = total
    return total, metrics

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    out = apply_fn(*self.inputs(batch), train=False)
    sums = self.classification_sums(out["logits"], batch)
    teacher_right = jnp.argmax(out["teacher_logits"], -1) == batch["label"][:, 0]
    sums["teacher_correct"] = (teacher_right * batch["weights"][:, 0]).sum()
    return sums

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    out = super().eval_metrics(sums)
    out["teacher_accuracy"] = sums["teacher_correct"] / max(sums["examples"], 1.0)
    out["accuracy_vs_teacher"] = out["accuracy"] / max(out["teacher_accuracy"], 1e-9)
    return out


def _load_onto_boxes(teacher_dir: str, boxed: Any) -> Any:
  """The teacher checkpoint's params in the boxes (logical names) of the model's init."""
  loaded = dict(_flat(jax.device_get(checkpoint.load_params(teacher_dir))))

  def fill(path: tuple, box: Any) -> Any:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    want = box.value if isinstance(box, nn.Partitioned) else box
    if name not in loaded:
      raise UserError(f"teacher checkpoint {teacher_dir} has no parameter {name}")
    value = np.asarray(loaded[name], want.dtype)
    if value.shape != tuple(want.shape):
      raise UserError(f"teacher parameter {name} has shape {value.shape} in {teacher_dir} but "
                      f"its config.json implies {tuple(want.shape)}")
    return box.replace(value=value) if isinstance(box, nn.Partitioned) else value

  return jax.tree_util.tree_map_with_path(fill, boxed,
                                          is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _flat(tree: Any) -> list[tuple[str, Any]]:
  return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
