"""Files written whole or not at all: a crash mid-write leaves the file as it was before (or no file),
never half of one that breaks every later report, resume or serve."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; once the block ends, the file is flushed to disk
    and renamed onto `path` in one step. On an exception `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    written = Path(temporary)
    try:
        yield written
        with open(written, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(written, path)
    finally:
        written.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    with replaced_atomically(path) as written:
        written.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def directory_replaced_atomically(directory: Path) -> Iterator[Path]:
    """A temporary directory beside `directory` to fill; renamed onto it once the block ends (an
    empty `directory` is replaced). On an exception nothing is left behind."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    filled = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".partial"))
    try:
        yield filled
        if directory.is_dir():
            directory.rmdir()  # only an empty one: callers refuse to export over anything else
        os.replace(filled, directory)
    finally:
        shutil.rmtree(filled, ignore_errors=True)
