"""The README and the docs site say what the code does: the site builds strictly (no broken link or
anchor), every `python -m MODULE` they name answers --help, every option they name exists in its
command line and every option of the project's command lines is in them, and the generated option
tables are current."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from trainables import winners

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PROJECT_PACKAGES = ("sweeps", "analysis", "serve", "trainables")
SWEEP = "sweeps.run"

# Under pytest-xdist, this module's tests share a worker, so that each command runs once.
pytestmark = pytest.mark.xdist_group("docs")

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PYTHON_MODULE = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")
PYTHON_SCRIPT = re.compile(r"\bpython3? ((?:bench|scripts)/\w+\.py)\b")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def pages() -> dict[Path, str]:
    return {path: path.read_text() for path in [README, *sorted(DOCS.glob("*.md"))]}


def code_segments(text: str) -> list[str]:
    """Every command-like piece of code: the lines of fenced blocks and the inline code spans,
    split at `&&`, `;` and `|`."""
    blocks = FENCE.findall(text)
    rest = FENCE.sub("", text)
    pieces = [line for block in blocks for line in block.splitlines()] + INLINE_CODE.findall(rest)
    return [part for piece in pieces for part in re.split(r"&&|;|\|(?!\|)", piece) if part.strip()]


def command_of(segment: str) -> str | None:
    """The project command a piece of code runs (`sweeps.run`, `bench/cuda_7b.py`), `external` for
    another program's, or None for code that runs nothing (a bare option, a path, JSON)."""
    if match := PYTHON_MODULE.search(segment):
        return match.group(1)
    if match := PYTHON_SCRIPT.search(segment):
        return match.group(1)
    first = segment.split()[0] if segment.split() else ""
    return None if first.startswith("--") or not re.match(r"^[A-Za-z/]", first) else "external"


def after_command(segment: str, command: str) -> str:
    return segment[segment.index(command) + len(command) :]


def named_modules() -> list[str]:
    found = {match for text in pages().values() for match in PYTHON_MODULE.findall(text)}
    return sorted(found)


def named_scripts() -> list[str]:
    return sorted({match for text in pages().values() for match in PYTHON_SCRIPT.findall(text)})


def is_project(command: str) -> bool:
    return command.split(".")[0] in PROJECT_PACKAGES or command.startswith(("bench/", "scripts/"))


@cache
def help_outputs() -> dict[str, subprocess.CompletedProcess]:
    """`python -m MODULE --help` of every module the README and the docs name, side by side."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}

    def run(module: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", module, "--help"]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    modules = named_modules()
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(modules, pool.map(run, modules), strict=True))


def options_in_help(text: str) -> set[str]:
    """The options argparse lists in its `options:` column (descriptions left out)."""
    lines = [line for line in text.splitlines() if line.startswith("  -") and not line.startswith("   ")]
    return {option for line in lines for option in OPTION.findall(re.split(r"\s{2,}", line.strip())[0])}


def options_in_script(path: str) -> set[str]:
    """A bench/ or scripts/ file's own options, read from its add_argument calls (running its --help
    would import torch and more); a benchmark that passes its arguments to a sweep takes the
    sweep's options too."""
    source = (ROOT / path).read_text()
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
    ]
    own = {
        arg.value
        for call in calls
        for arg in call.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
    }
    return own | (cli_options(SWEEP) if "sweep_arguments(" in source else set())


def cli_options(command: str) -> set[str]:
    if command.startswith(("bench/", "scripts/")):
        return options_in_script(command)
    return options_in_help(help_outputs()[command].stdout)


def project_commands() -> list[str]:
    return [command for command in [*named_modules(), *named_scripts()] if is_project(command)]


def test_no_inline_code_crosses_a_line():
    """The checks below read commands from code spans: each span must lie on one line."""
    crossing = [
        (path.name, line)
        for path, text in pages().items()
        for line in FENCE.sub("", text).splitlines()
        if line.count("`") % 2
    ]
    assert crossing == []


def test_every_named_module_answers_help():
    failed = {
        module: (done.returncode, done.stderr[-2000:])
        for module, done in help_outputs().items()
        if done.returncode != 0 or "usage:" not in done.stdout
    }
    assert not failed, failed
    assert {SWEEP, "serve.run", "analysis.report", "serve.export"} <= set(help_outputs())


def test_every_named_script_exists():
    assert [script for script in named_scripts() if not (ROOT / script).is_file()] == []


def test_every_option_the_docs_name_exists():
    known = {command: cli_options(command) for command in project_commands()}
    everything = set().union(*known.values())
    wrong = []
    for path, text in pages().items():
        for segment in code_segments(text):
            command = command_of(segment)
            if command is None:  # a bare option, as prose names it: some command line has it
                wrong += [
                    (path.name, option, "any")
                    for option in OPTION.findall(segment)
                    if option not in everything
                ]
            elif command in known:
                options = OPTION.findall(after_command(segment, command))
                wrong += [(path.name, option, command) for option in options if option not in known[command]]
        prose = INLINE_CODE.sub("", FENCE.sub("", text))
        wrong += [(path.name, option, "any") for option in OPTION.findall(prose) if option not in everything]
    assert wrong == []


def test_every_option_of_the_command_lines_is_in_the_docs():
    named = {option for text in pages().values() for option in OPTION.findall(text)}
    missing = {
        command: sorted(cli_options(command) - named - {"--help"})
        for command in project_commands()
        if cli_options(command) - named - {"--help"}
    }
    assert missing == {}
    assert {SWEEP, "serve.run"} <= set(project_commands())


def test_the_option_tables_are_generated_from_the_parsers():
    spec = importlib.util.spec_from_file_location("options_table", ROOT / "scripts" / "options_table.py")
    options_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(options_table)
    page = options_table.PAGE.read_text()
    assert options_table.generated_part(page) == options_table.render(), (
        "docs/configuration.md is stale: run `python scripts/options_table.py --write`"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            "mkdocs.yml",
            "--site-dir",
            out,
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_builds_strictly(site):
    assert (site / "index.html").is_file() and (site / "configuration" / "index.html").is_file()


def test_the_readme_links_to_what_exists(site):
    """mkdocs checks the links inside docs/; the README's go to files and to the anchors the site
    builds (the same ids GitHub gives its headings)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            broken.append(target)
        elif anchor:
            page = site / Path(path).relative_to("docs").with_suffix("") / "index.html"
            if f'id="{anchor}"' not in page.read_text():
                broken.append(target)
    assert broken == []


def test_the_readme_is_short_and_starts_with_a_command():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    assert "```bash" in lines[:30], "the first command within the first 30 lines"
    # The test command is CI's, byte for byte, on one line (tests/test_install.py): the one long line.
    long_lines = [line for line in lines if len(line) > 110 and not line.startswith("pip install ")]
    assert long_lines == []


def test_the_winners_schema_is_documented():
    models = [
        winners.Winners,
        winners.Winner,
        winners.Comparison,
        winners.MethodComparison,
        winners.Validation,
        winners.WinnerTest,
        winners.ComparedMethod,
        winners.Trial,
    ]
    page = (DOCS / "output-files.md").read_text()
    missing = sorted({field for model in models for field in model.model_fields if f"`{field}`" not in page})
    assert missing == []
