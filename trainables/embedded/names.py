"""The pretraining documents: the shipped tasks' train rows, and copies of them with invented names.

Each train row is one document, its input fields and answer kept together in order but without the
prompt format, so fine-tuning still has the format to teach. Copies of those documents with their
rare recurring words replaced by invented ones teach the model to look back and copy (a name it has
never seen can only be predicted from its first mention). The invented names are spliced from real
rare words, so they are spelt and tokenized like a task's unseen names.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from trainables.tasks.spec import Task

if TYPE_CHECKING:
    from trainables.embedded import EmbeddedSpec


def _field_text(value) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def row_document(task: Task, row: dict) -> str:
    """A row's input fields and answer, kept together in order, without the prompt format.

    What comes later in such a document depends on what came earlier, which is what the tasks ask.
    """
    fields = [row[name] for name in (*task.inputs, *task.optional_inputs) if row.get(name)]
    return "\n".join([*map(_field_text, fields), task.format_target(row)])


def row_documents() -> list[str]:
    """Every shipped task's train rows as documents: validation and test rows are never read."""
    from trainables.tasks import TASKS

    return [row_document(task, row) for task in TASKS.values() for row in task.splits()["train"]]


class NameInventor:
    """Fresh words for recurring ones, so a document's later mentions can only be predicted by copying.

    A model cannot memorise a name it has never seen: it must look back to the first mention.
    """

    ONSETS = (
        "b",
        "d",
        "f",
        "g",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "z",
        "br",
        "dr",
        "gl",
        "st",
        "tr",
    )
    VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
    CODAS = ("", "", "n", "r", "l", "s", "m", "k", "nd", "st")
    WORD = re.compile(r"[^\W\d_]{3,}|\d{3,}")

    def __init__(self, documents: list[str], common_share: float = 0.02, style: str = "syllables"):
        if style not in self.STYLES:
            raise ValueError(f"invented_names: {style!r} is not one of {', '.join(self.STYLES)}")
        self._fresh = self.STYLES[style]
        # Words in many documents are the language itself (the, user, passport): keep those.
        document_frequency = Counter(w.lower() for d in documents for w in set(self.WORD.findall(d)))
        self.common = {w for w, n in document_frequency.items() if n > common_share * len(documents)}
        # Spliced names join the head of one rare word to the tail of another, so they are spelt
        # (and tokenized) like the real words a task's unseen names are, not like one syllable set.
        self.rare_words = sorted(
            w for w in document_frequency if w not in self.common and w.isalpha() and len(w) >= 4
        )

    def _spliced(self, word: str, rng: random.Random) -> str:
        head, tail = rng.choice(self.rare_words), rng.choice(self.rare_words)
        head_length = rng.randint(2, len(head) - 1)
        tail_length = min(len(tail) - 1, max(2, len(word) - head_length))
        return head[:head_length] + tail[-tail_length:]

    def _syllables(self, word: str, rng: random.Random) -> str:
        syllables = max(1, min(4, round(len(word) / 3)))
        return "".join(
            rng.choice(self.ONSETS) + rng.choice(self.VOWELS) + rng.choice(self.CODAS)
            for _ in range(syllables)
        )

    # The ways to invent a name, by the spec's `invented_names`.
    STYLES: ClassVar[dict[str, Callable[[NameInventor, str, random.Random], str]]] = {
        "syllables": _syllables,
        "spliced": _spliced,
    }

    def _invent(self, word: str, rng: random.Random) -> str:
        if word.isdigit():
            return "".join(rng.choice("0123456789") for _ in word)
        fresh = self._fresh(self, word, rng)
        if word.isupper():
            return fresh.upper()
        return fresh.capitalize() if word[0].isupper() else fresh

    def rename(self, document: str, rng: random.Random) -> str:
        """The document with every rare word that occurs at least twice replaced, consistently."""
        counts = Counter(self.WORD.findall(document))
        recurring = sorted(w for w, n in counts.items() if n >= 2 and w.lower() not in self.common)
        if not recurring:
            return document
        fresh = {word: self._invent(word, rng) for word in recurring}
        pattern = re.compile(
            r"\b(" + "|".join(map(re.escape, sorted(recurring, key=len, reverse=True))) + r")\b"
        )
        return pattern.sub(lambda match: fresh[match.group(0)], document)


def pretraining_documents(spec: EmbeddedSpec) -> list[str]:
    """The train rows as documents, plus `renamed_copies` copies of each with invented names."""
    documents = row_documents()
    inventor = NameInventor(documents, style=spec.invented_names)
    rng = random.Random(spec.seed)
    renamed = [inventor.rename(d, rng) for _ in range(spec.renamed_copies) for d in documents]
    return documents + renamed
