"""tests/hf: make the reference-model helpers (hf_refs.py) importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
