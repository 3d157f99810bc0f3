"""The ``random:SIZE[:SEED]`` model spec (``--model``, ``load_model``, the training config's ``init``).

One parser for every caller, and no torch import, so configs can be checked cheaply.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import CheckpointError

RANDOM_PREFIX = "random:"
DEFAULT_RANDOM_SIZE = "small"


class RandomSpec(NamedTuple):
    size: str
    seed: int | None  # None: the caller's default (0 for load_model, the run's seed for training)


def is_random_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(RANDOM_PREFIX)


def parse_random_spec(spec: str) -> RandomSpec | None:
    """``random:SIZE[:SEED]`` -> (SIZE, SEED); None when ``spec`` is not a random spec.

    An empty SIZE means ``small`` (``random:`` is ``random:small``) and an empty or absent SEED
    means the caller's default. The size is checked where the network is built (``preset_config``).
    """
    if not is_random_spec(spec):
        return None
    parts = spec.split(":")
    if len(parts) > 3:
        raise CheckpointError(f"model spec {spec!r} has too many parts; use random:SIZE or random:SIZE:SEED "
                              "(e.g. random:small:0)")
    size = parts[1] or DEFAULT_RANDOM_SIZE
    seed = None
    if len(parts) == 3 and parts[2]:
        try:
            seed = int(parts[2])
        except ValueError:
            raise CheckpointError(f"model spec {spec!r}: SEED must be a whole number (random:SIZE:SEED, e.g. "
                                  "random:small:0)") from None
    return RandomSpec(size, seed)
