"""Benchmark suite: `python -m bench.run [--smoke | --gpu]` (see docs/performance.md)."""
