"""--objectives, --budget-usd and --extend: refused before Ray starts when they cannot be run, and
an extension's settings taken from the sweep it extends."""

import pytest
import ray

from sweeps import extend, run
from sweeps.settings import resolve


def test_help_names_the_search_options(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    shown = capsys.readouterr().out
    assert all(option in shown for option in ("--objectives", "--budget-usd", "--extend", "--scheduler"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--objectives", "quality,speed"],
            "objectives: unknown ['speed']; known: quality, cost",
        ),
        (["--budget-usd", "-1"], "budget_usd: Input should be greater than 0"),
        (["--extend", "0", "--name", "x"], "extend: Input should be greater than or equal to 1"),
        (["--extend", "2", "--name", "never-ran"], "extend: no sweep to extend at"),
        (["--extend", "2"], "extend: no earlier sweep of 'qg'"),
    ],
)
def test_bad_search_options_are_one_line_and_exit_code_2_before_ray(tmp_path, capsys, options, message):
    assert run.main(["qg", *options, "--storage", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not ray.is_initialized()


def test_extending_a_sweep_from_before_extensions_is_refused(tmp_path, capsys):
    sweep_dir = tmp_path / "qg" / "old"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "experiment_state-2026.json").write_text("{}")
    assert run.main(["qg", "--extend", "1", "--name", "old", "--storage", str(tmp_path)]) == 2
    assert "has no sweep_settings.json" in capsys.readouterr().err


def test_an_extension_keeps_what_defines_the_sweep_and_takes_how_to_run_it(tmp_path):
    sweep = resolve(
        "qg", None, {"max_steps": 30, "objectives": ["quality", "cost"], "storage": str(tmp_path)}
    )
    extend.save_settings(sweep, tmp_path)
    command = {"max_steps": 99, "concurrency": 3, "budget_usd": 0.5, "extend": 2, "storage": str(tmp_path)}
    extension = extend.extension_settings(resolve("qg", None, command), tmp_path)
    assert extension.max_steps == 30 and extension.objectives == ["quality", "cost"]
    assert extension.concurrency == 3 and extension.budget_usd == 0.5 and extension.extend == 2
