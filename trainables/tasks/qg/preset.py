"""QG: short targets, so generation needs few tokens and evaluation can look at more examples."""

PRESET = {
    "trial": {"eval_examples": 48, "eval_every": 40, "max_length": 256},
}
