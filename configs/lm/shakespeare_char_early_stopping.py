r"""Quick start run long (up to 6000 steps) with early stopping on the validation loss.

Evaluates every 100 steps; stops once `eval/loss` has not improved by more
than 0.005 for 4 evaluations in a row, then restores the best params (they
become the final checkpoint and done.json's metrics; `stop_reason` says why
it stopped).  The cosine schedule spans the 6000-step budget.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_early_stopping.py \
      --workdir=workdirs/shakespeare_char_early_stopping

Hardware: 1 CPU host (2 cores, 24 GiB), 2 CPU devices as in the quick start.
Runtime: not measured (at most 3× the quick start's 2000 steps, plus an
evaluation every 100 steps).
Expected: not measured yet; whether this patience/min_delta pair stops the model
before step 6000 is unverified (the mechanism is tested in tests/regularization/).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.num_steps = 6000
  c.eval_every = 100
  c.checkpoint_every = 500
  c.early_stopping.metric = "eval/loss"
  c.early_stopping.mode = "min"
  c.early_stopping.patience = 4
  c.early_stopping.min_delta = 0.005
  return c
