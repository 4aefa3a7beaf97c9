"""`python -m reparam_jax.sample` on a tiny trained run: prompt files, batches, errors."""

from __future__ import annotations

import pytest

from reparam_jax import sample, train
from tests.helpers import tiny_args


@pytest.fixture(scope="module")
def run(tmp_path_factory, raw_data_dir, tfds_dir):
  workdir = str(tmp_path_factory.mktemp("lm"))
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=4, eval_every=4,
                       checkpoint_every=4))
  return workdir


@pytest.mark.heavy
def test_a_prompt_file_in_batches_gives_each_rows_own_greedy_text(run, tmp_path):
  prompts = ["ROMEO:", "O", "First Citizen:"]  # the tiny run's context is 16 characters
  path = tmp_path / "prompts.txt"
  path.write_text("\n".join(prompts) + "\n\n")  # a blank line is not a prompt
  common = [f"--workdir={run}", f"--prompt_file={path}", "--num_tokens=24", "--temperature=0"]
  batched = sample.main(common + ["--batch_size=2"])
  alone = [sample.main([f"--workdir={run}", f"--prompt={p}", "--num_tokens=24",
                        "--temperature=0"])[0] for p in prompts]
  assert batched == alone
  for text, prompt in zip(batched, prompts):
    assert text.startswith(prompt) and len(text) == len(prompt) + 24  # one char a token


def test_past_the_context_and_sampling_flags(run):
  # The tiny run's context is 16 tokens: 40 new ones need windows.
  (text,) = sample.main([f"--workdir={run}", "--prompt=ROMEO:", "--num_tokens=40",
                         "--top_k=5", "--top_p=0.9", "--seed=3"])
  assert len(text) == len("ROMEO:") + 40


@pytest.mark.parametrize("args, message", [
    (["--top_p=0"], "top_p=0.0 is outside (0, 1]"),
    (["--temperature=-1"], "temperature=-1.0 is negative"),
    (["--prompt="], "encodes to no tokens"),
    (["--prompt_file=/nonexistent/prompts.txt"], "cannot read --prompt_file"),
    (["--stop_token_ids=a,b"], "expected comma-separated integers"),
])
def test_bad_input_is_one_line_and_exit_2(run, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    sample.main([f"--workdir={run}", "--num_tokens=4"] + args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]
