"""Compression pipelines over trained checkpoints (SVD → prune → quantize → fine-tune)."""
