"""The spec strings the reparameterization tests run: taken from the registry.

Every registered transform lists `examples`; a new transform is tested by
every generic test below without editing any list.  Compositions are the
stacking rules of `compose.py`, which no single transform owns.
"""

from reparam_jax.reparam import TRANSFORMS

EXAMPLES = [spec for cls in TRANSFORMS.values() for spec in cls.examples]

COMPOSITIONS = [
    "spherical|lora(rank=2)", "lowrank(rank=2)|spherical", "lowrank(rank=2)|variational",
    "lowrank(rank=2)|lora(rank=1)", "weightnorm|lowrank(rank=2)",
    "lowrank(rank=2)|mask(sparsity=0.5)",
    "quant(bits=8)|mask(sparsity=0.5)",
]

# Transforms whose gradient is not the derivative of a smooth function by design
# (straight-through estimators, data-dependent masks; their own tests check the
# gradients they promise), or that train nothing.
NOT_SMOOTH = {"quant", "qweight", "q4", "packed", "sparse24", "mask", "frozen"}
NOT_TRAINABLE = {"qweight", "q4", "packed", "sparse24", "frozen"}
# Storage forms a model cannot be initialized in (only converted into: `from_dense`).
# None at present: qweight and q4 initialize by quantizing the model's own init sample.
CONVERT_ONLY: set[str] = set()


def name_of(spec: str) -> str:
  return spec.split("(")[0].split("|")[0]


def smooth(specs: list[str]) -> list[str]:
  # DoRA's magnitude treats the column norm as a constant by default (the
  # paper's choice); with detach_norm=False it is an ordinary smooth map.
  return [s for s in specs if not {name_of(p) for p in s.split("|")} & NOT_SMOOTH
          and not ("magnitude" in s and "detach_norm=False" not in s)]


def initializable(specs: list[str]) -> list[str]:
  return [s for s in specs if not {name_of(p) for p in s.split("|")} & CONVERT_ONLY]


def trainable(specs: list[str]) -> list[str]:
  return [s for s in specs if not {name_of(p) for p in s.split("|")} & NOT_TRAINABLE]
