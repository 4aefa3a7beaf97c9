"""Pruning: mask schedules and updates, sensitivity pruning, sparsity reports."""
