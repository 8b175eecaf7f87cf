"""Every distribution the project imports is declared in pyproject.toml, so that `pip install -e .`
(with the extras the README names) installs all of it."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "results"}


def normalised(name: str) -> str:
    """A distribution's name as the packaging standards compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalised(re.match(r"[A-Za-z0-9._-]+", requirement).group())


def declared() -> set[str]:
    extras = [r for requirements in PROJECT.get("optional-dependencies", {}).values() for r in requirements]
    return {requirement_name(r) for r in [*PROJECT["dependencies"], *extras]}


def project_files() -> list[Path]:
    return [
        path
        for path in ROOT.rglob("*.py")
        if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]


def local_modules(root: Path, files: list[Path]) -> set[str]:
    """The project's own top-level names: its directories, and the modules of plain script
    directories (no __init__.py), which import each other by file name."""
    tops = {path.relative_to(root).parts[0] for path in files}
    scripts = {path.stem for path in files if not (path.parent / "__init__.py").is_file()}
    return {top.removesuffix(".py") for top in tops} | scripts


def imported_tops(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file, wherever they are (lazy ones included)."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops


def undeclared(root: Path, files: list[Path], wanted: set[str]) -> dict[str, str]:
    """Third-party import -> why it is not covered, for every import of the files no declared
    distribution provides."""
    providers = importlib.metadata.packages_distributions()
    local = local_modules(root, files)
    problems = {}
    for path in files:
        for top in imported_tops(path) - local - set(sys.stdlib_module_names):
            # A package not installed here (a GPU-only one) is known by its import name alone.
            distributions = {normalised(d) for d in providers.get(top, [top])}
            if not distributions & wanted:
                problems[top] = (
                    f"imported by {path.relative_to(root)}, from {', '.join(sorted(distributions))}"
                )
    return problems


def test_every_imported_distribution_is_declared():
    assert undeclared(ROOT, project_files(), declared()) == {}


def test_the_check_finds_an_undeclared_import(tmp_path):
    module = tmp_path / "uses_numpy.py"
    module.write_text("def lazily():\n    import numpy.linalg\n")
    assert set(undeclared(tmp_path, [module], declared() - {"numpy"})) == {"numpy"}
