"""METHODS registry: name -> the method's module's facts (see base.Method).

Adding a method is its module here and one line below; tests are parametrized over the registry.
"""

from trainables.methods import (
    adalora,
    baseline,
    dora,
    full,
    ia3,
    lora,
    lora_plus,
    pissa,
    prompt_tuning,
    qlora,
    rslora,
    vera,
)
from trainables.methods.base import BuildContext, Dimension, Method

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        qlora.METHOD,
        lora.METHOD,
        adalora.METHOD,
        ia3.METHOD,
        prompt_tuning.METHOD,
        full.METHOD,
        dora.METHOD,
        rslora.METHOD,
        pissa.METHOD,
        vera.METHOD,
        lora_plus.METHOD,
        baseline.METHOD,
    )
}

BASELINE = baseline.METHOD.name  # the baseline stage's trials run it


def trained_methods() -> list[str]:
    """Every method but the baseline: the ones whose trials can win."""
    return [name for name, method in METHODS.items() if method.trains]


def search_dimensions() -> dict[str, Dimension]:
    """Every search key of a sweep's `search:` block, and the dimension it ranges over."""
    dimensions = {}
    for method in METHODS.values():
        for dimension in method.dimensions:
            # Methods that share a search key search it alike (a test holds them to it).
            dimensions.setdefault(dimension.search_key, dimension)
    return dimensions


__all__ = [
    "BASELINE",
    "METHODS",
    "BuildContext",
    "Dimension",
    "Method",
    "search_dimensions",
    "trained_methods",
]
