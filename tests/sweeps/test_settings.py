import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from transformers import LlamaConfig

from sweeps import run
from sweeps.settings import SearchRanges, default_methods, resolve, trial_budget
from sweeps.spaces import DefineByRun
from trainables import models
from trainables.errors import ConfigError
from trainables.methods import METHODS, search_dimensions, trained_methods


def test_precedence_defaults_preset_yaml_cli(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("samples: 7\nmax_steps: 50\ntrial:\n  batch_size: 4\nsearch:\n  ranks: [4, 8]\n")
    settings = resolve("qg", str(config), {"max_steps": 30, "storage": str(tmp_path)})
    assert settings.samples == 7  # YAML over the default
    assert settings.max_steps == 30  # command line over YAML
    assert settings.trial == {"eval_examples": 48, "eval_every": 40, "max_length": 256, "batch_size": 4}
    assert settings.search.ranks == [4, 8] and settings.search.alphas == SearchRanges().alphas
    assert settings.concurrency == 2  # untouched default


def test_prompt_lookup_is_on_for_every_trial_unless_the_command_line_turns_it_off(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("trial:\n  prompt_lookup_tokens: 5\n")
    on = resolve("qg", str(config), {"storage": str(tmp_path)}).trial_constants()
    assert on["prompt_lookup"] is True and on["prompt_lookup_tokens"] == 5
    off = run.settings_of(run.parser().parse_args(["qg", "--no-prompt-lookup", "--storage", str(tmp_path)]))
    assert off.trial_constants()["prompt_lookup"] is False
    config.write_text("trial:\n  prompt_lookup: false\n")  # the sweep's own option, not the trial block's
    with pytest.raises(ConfigError, match="prompt_lookup set by the sweep itself"):
        resolve("qg", str(config), {})


def test_local_model_paths_become_absolute(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(Path(tiny_model).parent)
    settings = resolve("qg", None, {"model": Path(tiny_model).name, "storage": str(tmp_path)})
    assert settings.model == tiny_model


def test_smoke_shrinks_the_budget_and_still_tries_every_method(tmp_path):
    settings = resolve("qg", None, {"smoke": True, "storage": str(tmp_path)})
    assert settings.samples == len(default_methods(None)) and settings.max_steps <= 10
    assert settings.trial["train_examples"] <= 64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "task: unknown task 'nope'"),
        (["qg", "--methods", "lora,dorra"], "methods: unknown ['dorra']"),
        (["qg", "--samples", "0"], "samples: Input should be greater than or equal to 1"),
        (["qg", "--model", "/no/such/model"], "model: model path '/no/such/model' has no config.json"),
        (["qg", "--storage", "/proc/no-such-dir"], "storage: '/proc/no-such-dir' cannot be written"),
        (["qg", "--address", "127.0.0.1:1"], "address: cannot reach a Ray cluster at '127.0.0.1:1'"),
        (["qg", "--resume", "--name", "never-ran"], "resume: no sweep to resume"),
        (["qg", "--mlflow", "nope://store"], "mlflow: cannot log to 'nope://store': "),
        # MLflow 3 keeps its file store only for those who opt in (MLFLOW_ALLOW_FILE_STORE).
        (
            ["qg", "--mlflow", "file:///no-such/mlruns"],
            "cannot log to 'file:///no-such/mlruns': The filesystem",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    if "--storage" not in argv:
        argv = [*argv, "--storage", str(tmp_path)]
    assert run.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error
    assert "\n" not in error


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("search:\n  learning_rate: [0.1, 0.001]\n", "search.learning_rate: impossible range [0.1, 0.001]"),
        ("search:\n  prompt_tuning_learning_rate: [1.0, 100.0]\n", "need 0 <= low < high <= 1"),
        (
            "search:\n  dropout: [0.0, 1.0]\n",
            "search.dropout: impossible range [0.0, 1.0]: need 0 <= low < high < 1",
        ),
        ("search:\n  ranks: [2]\n  adalora_target_ranks: [4]\n", "adalora_target_ranks must not exceed"),
        ("trial:\n  batch_size: 0\n", "trial: batch_size: Input should be greater than or equal to 1"),
        ("trial:\n  method: lora\n", "trial: method set by the sweep itself"),
        ("sampels: 3\n", "sampels: unknown option"),
        ("samples: [3\n", ":2: not valid YAML"),
        (
            "max_steps: 10\ntrial:\n  adalora.tinit: 6\n  adalora.tfinal: 6\n",
            "adalora.tinit + adalora.tfinal: 6 + 6",
        ),
        ("trial:\n  adalora_tinit: 6\n", "trial: adalora_tinit: unknown option; did you mean adalora.tinit?"),
        ("methods: [lora, ia3]\ntrial:\n  rank: 4\n", "trial: rank: unknown option"),
    ],
)
def test_yaml_errors_name_the_file_and_key(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml_text)
    assert run.main(["qg", "--config", str(config), "--storage", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(config) in error and message in error


def test_existing_sweep_name_needs_resume(tmp_path, capsys):
    (tmp_path / "qg" / "taken").mkdir(parents=True)
    (tmp_path / "qg" / "taken" / "experiment_state-2026.json").write_text("{}")
    assert run.main(["qg", "--name", "taken", "--storage", str(tmp_path)]) == 2
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["/abs/dir", "..", "", "a/b", "../../elsewhere", ".hidden", "x" * 101])
def test_a_name_is_one_safe_path_component_under_the_results_root(tmp_path, capsys, name):
    outside = tmp_path / "outside"
    assert run.main(["qg", "--name", name, "--storage", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "name: String should match pattern" in error
    assert not outside.exists() and not (tmp_path / "results").exists()  # nothing written anywhere


@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_every_method_searches_its_hyperparameters_and_shares_search_keys_alike(method):
    spec = METHODS[method]
    assert spec.dimensions, "nothing to search"
    for dimension in spec.dimensions:
        assert dimension.field in {*spec.hyperparameters.model_fields, "learning_rate"}
        # A search key several methods read has one meaning, and one default range.
        assert search_dimensions()[dimension.search_key] == dimension
        assert getattr(SearchRanges(), dimension.search_key) == dimension.default


def test_a_method_option_fixed_for_the_sweep_reaches_only_its_own_trials(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("methods: [lora, adalora]\ntrial:\n  adalora.target_rank: 2\n  lora.rank: 4\n")
    settings = resolve("qg", str(config), {"storage": str(tmp_path)})
    adalora, _ = trial_budget(settings, "adalora", 100)
    lora, _ = trial_budget(settings, "lora", 100)
    assert (adalora.hyperparameters.target_rank, adalora.hyperparameters.rank) == (2, 8)
    assert lora.hyperparameters.rank == 4


def test_define_by_run_space_samples_each_methods_own_dimensions():
    ranges = SearchRanges()
    space = DefineByRun(trained_methods(), ranges, {"task": "qg"})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(60):
        trial = study.ask()
        assert space(trial) == {"task": "qg"}
        seen.setdefault(trial.params["method"], []).append(trial.params)
        study.tell(trial, 0.0)
    assert set(seen) == set(trained_methods())
    for params in seen["ia3"]:
        assert set(params) == {"method", "ia3.learning_rate"}  # IA3 has no dropout
    for params in seen["full"]:
        assert set(params) == {"method", "full.learning_rate"}
        assert ranges.full_learning_rate[0] <= params["full.learning_rate"] <= ranges.full_learning_rate[1]
    for params in seen["adalora"]:
        assert {"adalora.rank", "adalora.alpha", "adalora.target_rank"} <= set(params)
    for params in seen["prompt_tuning"]:
        assert set(params) == {"method", "prompt_tuning.learning_rate", "prompt_tuning.num_virtual_tokens"}
        assert params["prompt_tuning.num_virtual_tokens"] in ranges.virtual_tokens
        assert (
            ranges.prompt_tuning_learning_rate[0]
            <= params["prompt_tuning.learning_rate"]
            <= ranges.prompt_tuning_learning_rate[1]
        )
    assert pickle.loads(pickle.dumps(space)) == space  # Tune pickles the searcher for --resume


def test_unknown_option_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parser().parse_args(["qg", "--learning-rate", "0.1"])
    assert exit_info.value.code == 2


def test_full_fine_tuning_is_in_the_default_sweep_only_below_1b_parameters(tmp_path, tiny_model):
    small = resolve("qg", None, {"model": tiny_model, "storage": str(tmp_path)})
    assert small.methods == [m for m in METHODS if METHODS[m].in_default_sweep] and "full" in small.methods
    assert "full" in resolve("qg", None, {"storage": str(tmp_path)}).methods  # embedded, not built for it
    # A 1.7B-parameter Llama, config only: counted on the meta device, no weights needed.
    big = tmp_path / "big-model"
    LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=16,
    ).save_pretrained(big)
    assert 1_000_000_000 < models.parameter_count(str(big)) < 2_000_000_000
    assert resolve("qg", None, {"model": str(big), "storage": str(tmp_path)}).methods == [
        m for m in default_methods(tiny_model) if m != "full"
    ]
    assert resolve("qg", None, {"model": str(big), "smoke": True, "storage": str(tmp_path)}).samples == 5
    chosen = resolve("qg", None, {"model": str(big), "methods": ["full", "lora"], "storage": str(tmp_path)})
    assert chosen.methods == ["full", "lora"]  # named explicitly: allowed on a big model


def test_parameter_count_matches_the_loaded_model(tiny_model):
    loaded = models.load_model(tiny_model)
    assert models.parameter_count(tiny_model) == sum(p.numel() for p in loaded.parameters())


def test_the_driver_checks_a_sweep_without_loading_the_training_code(tmp_path):
    """The driver never trains: PEFT, bitsandbytes, bert-score, the model classes and the trial code
    load in the trials. Each would add to the seconds every sweep waits before its first trial."""
    training_code = [
        "peft",
        "bitsandbytes",
        "bert_score",
        "transformers.modeling_utils",
        "trainables.training.trial",
    ]
    checked = (
        "import sys\n"
        "from sweeps import run, settings\n"
        f"sweep = run.settings_of(run.parser().parse_args(['qg', '--storage', {str(tmp_path)!r}]))\n"
        "settings.check_generation_budget(sweep)\n"
        "run.tune_config(scheduler=run.early_stopping(sweep))\n"
        f"print([name for name in {training_code!r} if name in sys.modules])\n"
    )
    loaded = subprocess.run([sys.executable, "-c", checked], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr[-2000:]


def test_mlflow_credentials_leave_the_uri_for_the_environment(tmp_path, monkeypatch, capsys):
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(variable, "")  # recorded as absent, so the test's own setting is undone
        monkeypatch.delenv(variable)
    settings = resolve(
        "qg", None, {"mlflow": "http://ana:s%40cret@127.0.0.1:5000/track", "storage": str(tmp_path)}
    )
    assert settings.mlflow == "http://127.0.0.1:5000/track"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ana"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s@cret"
    # A URI MLflow refuses is named in the error without its password.
    assert run.main(["qg", "--mlflow", "nosuch://bob:hunter2@host/x", "--storage", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "nosuch://host/x" in error and "hunter2" not in error


def test_the_command_line_is_generated_from_the_settings_model():
    """One option per setting, its help the field's description: the two cannot drift apart."""
    from sweeps.settings import SweepSettings

    options = {action.dest: action for action in run.parser()._actions if action.option_strings}
    settings = {
        name: field
        for name, field in SweepSettings.model_fields.items()
        if name not in run.NOT_ON_THE_COMMAND_LINE
    }
    assert settings.keys() <= options.keys() and options.keys() - settings.keys() == {
        "help",
        "config",
        "verbose",
    }
    for name, field in settings.items():
        assert options[name].help == field.description and field.description, name
        assert options[name].option_strings[0] == f"--{name.replace('_', '-')}"
    parsed = run.parser().parse_args(["qg", "--methods", "lora,ia3", "--no-compare-methods", "--epochs", "2"])
    assert (parsed.methods, parsed.compare_methods, parsed.epochs, parsed.max_steps) == (
        ["lora", "ia3"],
        False,
        2.0,
        None,
    )
