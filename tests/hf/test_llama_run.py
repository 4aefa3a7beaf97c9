"""A Llama-family decoder end to end without torch: a Hugging Face folder (written by
export_hf from random weights), LoRA fine-tuning started from it, sampling from the run,
the run's adapter as a PEFT folder, and the merged model exported and read back."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from reparam_jax import export_hf, sample, train
from reparam_jax.hf import exporter, importer
from reparam_jax.hf.common import flatten
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.rundir import checkpoint
from tests.helpers import tiny_args

LLAMA = dict(vocab_size=300, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
             mlp_dim=48, max_len=64, norm="rms", activation="silu", mlp_gated=True, rope=True,
             use_bias=False, tie_embeddings=False, layer_norm_eps=1e-5)
ALL_PROJECTIONS = r"block_\d+/(attn|mlp)/\w+/kernel"


def _hf_folder(tmp_path, text: str) -> str:
  """A LlamaForCausalLM folder with a byte-level BPE, as the Hub would hold one."""
  cfg = TransformerConfig(**LLAMA)
  params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  converted = tmp_path / "converted"
  os.makedirs(converted)
  checkpoint.save_params(str(converted / "params"), flax.linen.meta.unbox(params))
  (converted / importer.MODEL_FILE).write_text(json.dumps(importer.model_section(cfg)))
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text], vocab_size=300, special_tokens=["<|end_of_text|>"])
  bpe.save(str(converted / "tokenizer.json"))
  (converted / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))
  folder = str(tmp_path / "hf")
  export_hf.export(str(converted), folder)
  with open(os.path.join(folder, "config.json")) as f:
    assert json.load(f)["architectures"] == ["LlamaForCausalLM"]
  return folder


def test_lora_fine_tuning_from_a_llama_folder_samples_and_exports(tmp_path, raw_data_dir,
                                                                   tfds_dir):
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    folder = _hf_folder(tmp_path, f.read()[:100_000])
  run = str(tmp_path / "run")
  args = tiny_args(run, raw_data_dir, tfds_dir, num_steps=3, eval_every=3, checkpoint_every=3,
                   seq_len=32, batch_size=8, init_from=folder, **{
                       # adapters only, as PEFT trains a causal LM (lm_head is not a task head)
                       "finetune.freeze": "lora", "finetune.head_regex": "classifier",
                       "reparam.rules": repr(((ALL_PROJECTIONS, "lora(rank=2, alpha=4)"),))})
  for field in ("num_layers", "num_heads", "embed_dim", "mlp_dim", "rope"):  # from the folder
    args.append(f"--config.model.{field}=None")
  final = train.main(args)
  assert final["step"] == 3 and np.isfinite(final["eval/loss"])
  with open(os.path.join(run, "config.json")) as f:
    model = json.load(f)["model"]
  assert (model["num_kv_heads"], model["norm"], model["mlp_gated"]) == (2, "rms", True)

  texts = sample.main([f"--workdir={run}", "--prompt=ROMEO:", "--num_tokens=8",
                       "--temperature=0", "--stop_token_ids=299"])
  assert texts[0].startswith("ROMEO:") and len(texts[0]) > len("ROMEO:")

  export_hf.main([f"--workdir={run}", f"--peft_dir={tmp_path / 'adapter'}"])
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    assert sorted(json.load(f)["target_modules"]) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]

  export_hf.main([f"--workdir={run}", f"--to={tmp_path / 'merged'}"])
  merged, cfg, _, source = importer.import_folder(str(tmp_path / "merged"))
  assert source["architecture"] == "LlamaForCausalLM" and cfg.kv_heads == 2
  dense, _, _, _ = exporter.load_for_export(run)  # the run's LoRA merged into W₀
  ours = flatten(merged)
  assert set(ours) == set(dense)
  for path, value in ours.items():
    np.testing.assert_array_equal(value, np.asarray(dense[path]), err_msg=path)
