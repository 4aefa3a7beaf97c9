"""Training objectives as pure functions of model outputs and targets.

One file per objective; every function returns float32 scalars (or sums that
the caller normalises) and never touches parameters, so tasks combine them
freely and tests check them on hand-made arrays.

  mlm.py             masked-LM cross-entropy over gathered masked positions
  nsp.py             next-sentence prediction (binary cross-entropy over 2 logits)
  classification.py  sequence-classification cross-entropy and confusion counts
  distillation.py    soft-target KL (Hinton et al. 2015) and hidden-state MSE (TinyBERT)
  contrastive.py     InfoNCE between two views (SimCSE, Gao et al. 2021)
"""
