"""Prompt-lookup drafting (Saxena 2023): the next tokens guessed by copying what came before.

A task that answers by copying its input (NER's values are spans of the OCR text, QA's answers
spans of the context, QG's queries repeat the conversation's entities) often continues the way
its prompt, or its answer so far, did after the same few tokens. The draft is what followed the
latest earlier occurrence of the row's last `ngram` tokens (or, failing that, of fewer), up to
`tokens` of them. Answers of one model also share their form (NER's keys come in one order,
with the same punctuation), so the answers already given by the same adapter are searched too
(as SuffixDecoding does, Oliaro et al. 2024), and the longer match wins. The running batch
checks a draft in one forward pass and keeps the prefix that greedy decoding chooses itself
(decoding.batch), so drafts change how fast, never what.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptLookup:
    """tokens: the longest draft (k). ngram: the longest suffix looked up (n), down to one token.
    The defaults come from measuring the shipped tasks' evaluation (docs/prompt-lookup.md): on
    CPU each drafted token costs about a tenth of a decoding step's fixed cost, so short drafts
    pay best."""

    tokens: int = 3
    ngram: int = 6


DEFAULT_LOOKUP = PromptLookup()


def chosen(on: bool, tokens: int, ngram: int) -> PromptLookup | None:
    """The settings a config's prompt-lookup options choose; None where it is off."""
    return PromptLookup(tokens, ngram) if on else None


# Tokens of earlier answers searched per adapter (each adds up to n index entries); beyond, afresh.
ANSWERS_KEPT = 20_000


class NgramIndex:
    """Tokens and where each of their n-grams (n up to `ngram`) last ended with a token after
    it, kept up to date as tokens come, so that a lookup costs a few dictionary reads."""

    def __init__(self, ngram: int, tokens: list[int] = ()):
        self.ngram = ngram
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> index just past its latest occurrence
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams that end here are now followed by `token`
            for n in range(1, min(self.ngram, end) + 1):
                self.ends[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def continuation(self, context: list[int], limit: int) -> tuple[int, list[int]]:
        """The longest suffix of `context` found here (its length, 0: none), and up to `limit`
        tokens that followed its latest occurrence."""
        for n in range(min(self.ngram, len(context)), 0, -1):
            end = self.ends.get(tuple(context[-n:]))
            if end is not None:
                return n, self.tokens[end : end + limit]
        return 0, []


class Drafter:
    """Drafts for the rows of one decoding runtime: each greedy row's own tokens (its prompt, then
    its answer), and the answers each adapter (None: the base model) has finished.

    window: the model's shortest sliding attention window, if any. A row's rejected draft tokens
    stay in the cache as masked columns, and a sliding window counts columns: the batch drafts
    only while no row can reach the window however its drafts go (RunningBatch.step), where the
    window then hides exactly what it hides without drafts, that is nothing.
    """

    def __init__(self, lookup: PromptLookup, window: int | None = None):
        self.lookup, self.window = lookup, window
        self.answers: dict[str | None, NgramIndex] = {}

    def row(self, prompt: list[int]) -> NgramIndex:
        return NgramIndex(self.lookup.ngram, prompt)

    def draft(self, own: NgramIndex, adapter: str | None, limit: int) -> list[int]:
        """Up to min(limit, lookup.tokens) tokens that followed the longest match of the row's
        last tokens, in the row itself or in its adapter's earlier answers."""
        limit = min(limit, self.lookup.tokens)
        if limit <= 0:
            return []
        matched, draft = own.continuation(own.tokens, limit)
        answers = self.answers.get(adapter)
        if answers is not None and matched < self.lookup.ngram:
            longer, elsewhere = answers.continuation(own.tokens[-self.lookup.ngram :], limit)
            if longer > matched:
                return elsewhere
        return draft

    def answered(self, adapter: str | None, answer: list[int]) -> None:
        """A finished answer (its tokens, EOS included), searched by later drafts of its adapter."""
        answers = self.answers.get(adapter)
        if answers is None or len(answers.tokens) > ANSWERS_KEPT:
            answers = self.answers[adapter] = NgramIndex(self.lookup.ngram)
        answers.extend(answer)
