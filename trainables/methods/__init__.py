"""METHODS registry: name -> the method's module's facts (see base.Method).

Adding a method is its module here and one line below; tests are parametrized over the registry.
"""

from trainables import architecture
from trainables.config import METHOD_SCOPE
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
from trainables.methods.base import BuildContext, Dimension, Method, is_prompt_learning

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


def scoped(method: str, name: str) -> str:
    """A method's hyperparameter as a sweep names it: lora.learning_rate, a dimension of its own."""
    return f"{method}{METHOD_SCOPE}{name}"


def hyperparameter_names(methods: list[str] | None = None) -> list[str]:
    """The scoped names of every dimension of the methods (all of them by default), in order."""
    return [
        scoped(method, dimension.field)
        for method in methods or METHODS
        for dimension in METHODS[method].dimensions
    ]


def search_dimensions() -> dict[str, Dimension]:
    """Every search key of a sweep's `search:` block, and the dimension it ranges over."""
    dimensions = {}
    for method in METHODS.values():
        for dimension in method.dimensions:
            # Methods that share a search key search it alike (a test holds them to it).
            dimensions.setdefault(dimension.search_key, dimension)
    return dimensions


def refusals(model_path: str, methods: list[str]) -> list[str]:
    """Why each of these methods cannot run on the model, one line each (none where all can), read
    from its architecture before anything trains."""
    skeleton = architecture.skeleton(model_path)
    model_type = architecture.model_type(skeleton)
    if reason := architecture.unsupported_reason(skeleton):
        return [f"methods {', '.join(methods)} cannot run on model type '{model_type}': {reason}"]
    return [
        f"method '{method}' cannot run on model type '{model_type}': {reason}"
        for method in methods
        if (reason := METHODS[method].refusal(skeleton))
    ]


__all__ = [
    "BASELINE",
    "METHODS",
    "BuildContext",
    "Dimension",
    "Method",
    "hyperparameter_names",
    "is_prompt_learning",
    "refusals",
    "scoped",
    "search_dimensions",
    "trained_methods",
]
