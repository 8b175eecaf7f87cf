"""Writes the shipped NER data set: synthetic ID-document OCR text from documents.py.

python -m trainables.tasks.ner.generate [OUT_DIR] [--seed N] [--count N]

Deterministic for a seed: the same seed gives byte-identical files (a test checks the shipped
files against this script's defaults).
"""

from pathlib import Path

from trainables.tasks.data import generator_cli
from trainables.tasks.data import write_splits as write_jsonl_splits
from trainables.tasks.ner.documents import generate

SEED = 20261123
COUNT = 480
TEST_SHARE = 0.25
DEFAULT_OUT = Path(__file__).resolve().parent / "data"


def write_splits(out_dir: Path, count: int = COUNT, seed: int = SEED) -> None:
    documents = generate(count, seed)
    test_size = round(count * TEST_SHARE)
    write_jsonl_splits(out_dir, {"train": documents[test_size:], "test": documents[:test_size]})


if __name__ == "__main__":
    cli = generator_cli(__doc__, DEFAULT_OUT, SEED)
    cli.add_argument("--count", type=int, default=COUNT)
    args = cli.parse_args()
    write_splits(args.out_dir, args.count, args.seed)
