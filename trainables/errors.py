"""The error a bad config raises, and how a pydantic error becomes its one line: a leaf module, so
that the config, the registries and the tasks all use it without importing one another."""

from pydantic import ValidationError


class ConfigError(ValueError):
    """A trial or sweep config is invalid; the message names every field at fault, on one line."""


def problems(error: ValidationError, prefix: str = "") -> list[str]:
    """Each problem of a ValidationError, naming its field (after `prefix`, e.g. `adalora.`)."""
    found = []
    for item in error.errors():
        field = prefix + ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown option"
        found.append(f"{field}: {message}")
    return found


def describe(error: ValidationError) -> str:
    """Every problem of a ValidationError on one line, each naming its field."""
    return "invalid config: " + "; ".join(problems(error))
