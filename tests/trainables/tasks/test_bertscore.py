"""Scoring with each reference embedded once per process gives what bert-score's own scorer gives."""

import pytest

from trainables.tasks import bertscore, get_task
from trainables.tasks.qg.task import QUERY_SEPARATOR


@pytest.mark.parametrize("kept", [bertscore.REFERENCES_KEPT, 5])  # 5: most references embedded at every call
def test_kept_reference_embeddings_score_as_bert_score_itself_does(kept, monkeypatch):
    monkeypatch.setattr(bertscore, "_references", {})
    monkeypatch.setattr(bertscore, "REFERENCES_KEPT", kept)
    rows = list(get_task("qg").splits()["validation"].select(range(40)))
    references = [QUERY_SEPARATOR.join(row["queries"]) for row in rows]
    # Candidates of every kind: the reference itself, part of it, a paraphrase, another row's
    # queries, and duplicates, in batches of other shapes than the references' first embedding.
    candidates = [
        [references[i], QUERY_SEPARATOR.join(row["queries"][:1]), f"What about {row['queries'][0]}"][i % 3]
        for i, row in enumerate(rows)
    ]
    candidates[5] = candidates[6] = references[20]
    reference_scorer = bertscore._scorer()
    for chosen in (range(40), range(0, 40, 3), range(39, -1, -1)):  # the second and third: kept embeddings
        ours = bertscore.bertscore([candidates[i] for i in chosen], [references[i] for i in chosen])
        theirs = reference_scorer.score([candidates[i] for i in chosen], [references[i] for i in chosen])
        for our_column, their_column in zip(ours, theirs, strict=True):
            assert our_column == pytest.approx(their_column.tolist(), abs=1e-5)
    assert len(bertscore._references) == min(kept, len(set(references)))
    assert bertscore._references.keys() <= set(references)
