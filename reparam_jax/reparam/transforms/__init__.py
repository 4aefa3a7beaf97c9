"""The built-in transforms: importing this package registers every one of them.

This is the one list.  A new transform is one module here that defines its
class with `@register` (see `reparam/base.py` for the protocol), plus one
line below.  The test suite takes its list of transforms, and each one's
example specs, from the registry this fills.
"""

from reparam_jax.reparam.transforms import (  # noqa: F401 (imported to register)
    delta,
    ia3,
    identity,
    lora,
    lowrank,
    magnitude,
    mask,
    packed,
    q4,
    quant,
    smooth,
    spherical,
    variational,
    vera,
)
