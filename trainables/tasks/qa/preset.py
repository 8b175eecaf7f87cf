"""QA: paragraph plus question in, a few words out."""

PRESET = {
    "trial": {"eval_examples": 48, "eval_every": 40, "max_length": 256},
}
