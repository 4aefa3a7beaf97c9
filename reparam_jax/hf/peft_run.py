"""A LoRA/DoRA (or VeRA, (IA)³) training run's adapter as a PEFT folder (`export_hf --peft_dir`).

A PEFT adapter is meaningful only on top of the base model it was trained
from, so besides `peft.export_peft_adapter` this checks the run against its
`init_from`: every parameter outside the adapters and modules_to_save (the
classifier) must still equal the base model's.  A run that trained anything
else (LayerNorms, the pooler) cannot be expressed as an adapter and is a
UserError naming that parameter; `export_hf --to` exports the merged model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.hf import pretrained
from reparam_jax.hf.importer import SOURCE_FILE
from reparam_jax.hf.peft import adapter_bases, export_peft_adapter
from reparam_jax.pytree import layers
from reparam_jax.pytree.paths import dict_leaves
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint, sharded
from reparam_jax.rundir import workdir as rundir


def _base_name(init_from: str) -> str | None:
  """What PEFT's base_model_name_or_path should name: the Hugging Face folder itself,
  or the one a convert_hf output came from."""
  if pretrained.kind(init_from) == "hf":
    return os.path.abspath(init_from)
  source = os.path.join(init_from, SOURCE_FILE)
  if os.path.exists(source):
    with open(source, encoding="utf-8") as f:
      return json.load(f).get("from")
  return None


@jax.jit
def _equal(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.array_equal(a, b)


def _same(value: jax.Array, base: Any) -> bool:
  """`value` == `base` elementwise, compared where `value` lives (no host gathers either:
  in a multi-host run both may be split over the processes)."""
  return bool(_equal(value, sharded.reshard(base, value.sharding)))


def check_against_base(params: Any, rp: Reparam, base: Any, saved: tuple[str, ...],
                       where: str) -> None:
  """UserError naming the first parameter, outside the adapters and `saved` module paths,
  whose value differs from (or is absent in) the base model's."""
  dense = dict(dict_leaves(sharded.apply_spread(rp.to_dense, params)))
  for path, w0 in adapter_bases(params, rp).items():
    dense[path] = jnp.asarray(w0)
  base_flat = dict(dict_leaves(base))
  for path, value in dense.items():
    if any(path.startswith(s + "/") for s in saved):
      continue
    if path not in base_flat:
      raise UserError(f"parameter {path} is not in the base model {where}; a PEFT adapter "
                      "carries only adapter weights and the classifier, so export the merged "
                      "model with --to instead")
    if base_flat[path].shape != value.shape or not _same(value, base_flat[path]):
      raise UserError(f"parameter {path} differs from the base model {where} (the run trained "
                      "it); a PEFT adapter carries only adapter weights and the classifier, so "
                      "export the merged model with --to instead")


def export_run_adapter(workdir: str, out_dir: str) -> dict[str, Any]:
  """Writes the adapter of the training run in `workdir` (latest checkpoint) to `out_dir`."""
  config_path = rundir.path(workdir, rundir.CONFIG)
  if pretrained.kind(workdir) != "run" or not os.path.isdir(
      rundir.path(workdir, rundir.CHECKPOINTS)):
    raise UserError(f"--workdir={workdir} is not a training workdir (config.json + "
                    "checkpoints/); --peft_dir exports the adapter of a LoRA run")
  with open(config_path, encoding="utf-8") as f:
    run_config = json.load(f)
  rp = Reparam.from_config(run_config.get("reparam") or {})
  if rp.has_state:
    raise UserError(f"{workdir}: the run's rules have masks (sparsity); PEFT has no "
                    "counterpart, export the merged model with --to instead")
  params = layers.unstack_layers(checkpoint.load_params(workdir))  # PEFT numbers its layers
  init_from = os.path.expandvars(run_config.get("init_from") or "")
  saved = ("classifier",) if "classifier" in params else ()
  if saved and set(params["classifier"]) != {"out"}:
    raise UserError(f"{workdir}: the classifier has {sorted(set(params['classifier']) - {'out'})}"
                    " besides its linear layer; Hugging Face's BertForSequenceClassification "
                    "has no counterpart (encoder.classifier_norm=False is needed)")
  if run_config.get("init_layers"):
    raise UserError(f"{workdir}: init_layers={tuple(run_config['init_layers'])} cut the base "
                    "model, so no Hugging Face model is its base; export with --to instead")
  base_name = None
  if init_from:
    base = pretrained.load_params(init_from)
    check_against_base(params, rp, base, saved, f"init_from={init_from}")
    base_name = _base_name(init_from)
  return export_peft_adapter(params, rp, out_dir, base_model_name_or_path=base_name,
                             modules_to_save=[f"{s}/out" for s in saved])
