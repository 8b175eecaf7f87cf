"""The README's two commands are what a new user runs: CI runs the test command itself, and both
install the versions the tests passed with (constraints.txt)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = "-c constraints.txt"


def readme_commands() -> list[str]:
    """The shell lines of the README's bash blocks that install the project."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [
        line
        for block in blocks
        for line in block.splitlines()
        if line.startswith("pip install ") and "torch==" in line
    ]


def pinned() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}


def test_ci_runs_the_readme_test_command_in_a_new_environment():
    main_job, tests = readme_commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in tests and f"{{ {tests}; }}" in ci
    assert re.search(r'^rm -rf "\$venv"\npython3 -m venv "\$venv"$', ci, re.MULTILINE)
    assert "sweeps.run" in main_job


def test_both_readme_commands_install_with_the_constraints():
    for command in readme_commands()[:2]:
        installs = [part for part in command.split(" && ") if part.startswith("pip install")]
        assert len(installs) == 2 and all(CONSTRAINTS in part for part in installs), command


def test_every_declared_requirement_is_pinned_to_one_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r).group()).lower() for r in requirements}
    names.discard("peft-sweeps")  # the test extra names the project itself, for its mlflow extra
    pins = pinned()
    assert sorted(names - pins.keys()) == []
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.!]*", version) for version in pins.values()), pins
    assert pins["torch"] == "2.13.0"  # no local build tag: the same pin admits the CUDA build
