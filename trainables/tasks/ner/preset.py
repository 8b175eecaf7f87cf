"""NER: long OCR prompts and ~80-token JSON answers, so longer sequences and fewer generated examples."""

PRESET = {
    "trial": {"eval_examples": 24, "eval_every": 40, "max_length": 512},
}
