"""python -m sweeps.run TASK [options]: search PEFT methods and hyperparameters for a task.

Baseline trials (the untouched base model, zero- and k-shot) run first, then Optuna's TPE
searches the methods' spaces, in one Ray Tune experiment, while ASHA stops poor trials early. Each
method's best configuration is then trained to the whole budget (the equal-budget comparison the
verdict compares methods by; --no-compare-methods skips it), and with --finalist-seeds K the top of
the Pareto front is re-trained with K-1 more seeds (the compared methods run K seeds too). Results
land in <storage>/<task>/<name>/ with trials.csv and trials.parquet; --resume continues an
interrupted sweep.
"""

import argparse
import functools
import logging
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
from pydantic.fields import FieldInfo

from analysis import load, measurements, rank, report
from sweeps import extend, results, stages, study
from sweeps.objectives import Objective
from sweeps.settings import (
    SweepSettings,
    available_train_size,
    check_generation_budget,
    check_methods_run_on_model,
    resolve,
    trial_budget,
)
from sweeps.spaces import DefineByRun, first_points, sampler
from trainables.errors import ConfigError
from trainables.evaluation import scoring
from trainables.methods import BASELINE
from trainables.record import EVALUATIONS
from trainables.tasks import TASKS
from trainables.winners import WINNERS_FILE

RUN_AGAIN = "run_again"  # the grid key under which a later stage's run travels, its whole config
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
EXPERIMENT_STATE = "experiment_state*.json"


# Settings the command line does not set: the task is its positional argument; the rest come from
# the task's preset or --config.
NOT_ON_THE_COMMAND_LINE = {"task", "search", "trial", "baseline_shots", "grace_evals", "winners"}
# Settings of which a command line gives one at most: a trial's length is steps or epochs.
EXCLUSIVE = ("max_steps", "epochs")


def option(field: FieldInfo) -> dict:
    """argparse's arguments for a SweepSettings field: its type, choices and help from the model.
    Every default is None, so that an option not given leaves the preset's or the YAML's value."""
    kind = field.annotation
    if isinstance(kind, types.UnionType):  # X | None: the option gives an X
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    extra = field.json_schema_extra or {}
    arguments = {
        "help": field.description,
        "default": None,
        **({"metavar": extra["metavar"]} if extra else {}),
    }
    if kind is bool:
        return arguments | {"action": argparse.BooleanOptionalAction if field.default else "store_true"}
    if typing.get_origin(kind) is typing.Literal:
        return arguments | {"choices": list(typing.get_args(kind))}
    if typing.get_origin(kind) is list:
        return arguments | {"type": lambda text: text.split(",")}
    return arguments | {"type": kind}


def parser() -> argparse.ArgumentParser:
    """The sweep's command line, generated from SweepSettings: one option per field."""
    cli = argparse.ArgumentParser(prog="python -m sweeps.run", description=__doc__.split("\n\n")[0])
    cli.add_argument("task", help=f"a registered task ({', '.join(TASKS)}) or a YAML task file")
    cli.add_argument("--config", help="YAML file overriding the task's preset")
    exclusive = cli.add_mutually_exclusive_group()
    for name, field in SweepSettings.model_fields.items():
        if name not in NOT_ON_THE_COMMAND_LINE:
            group = exclusive if name in EXCLUSIVE else cli
            group.add_argument(f"--{name.replace('_', '-')}", **option(field))
    cli.add_argument(
        "--verbose", action="store_true", help="Tune's full output and every trial's log, not one status line"
    )
    return cli


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def experiment_states(sweep_dir: Path) -> list[Path]:
    """The Tune experiment states a sweep has saved: its search's (baselines included), and those
    of the stages with an experiment of their own."""
    experiments = [
        sweep_dir,
        sweep_dir / load.COMPARISON_DIR,
        sweep_dir / load.FINALISTS_DIR,
        *extend.extension_dirs(sweep_dir),
    ]
    return [state for experiment in experiments for state in experiment.glob(EXPERIMENT_STATE)]


def last_saved(sweep_dir: Path) -> float:
    return max(state.stat().st_mtime for state in experiment_states(sweep_dir))


def experiment_dir(settings: SweepSettings) -> Path:
    """The sweep's directory; for --resume or --extend without --name, the sweep of the task saved last."""
    earlier = "extend" if settings.extend else "resume" if settings.resume else None
    if earlier and settings.name is None:
        started = [d for d in settings.task_dir.glob("*/") if experiment_states(d)]
        if not started:
            raise ConfigError(f"{earlier}: no earlier sweep of '{settings.task}' under {settings.task_dir}")
        return max(started, key=last_saved)
    directory = settings.task_dir / settings.experiment_name
    started = bool(experiment_states(directory))
    if earlier and not started:
        raise ConfigError(f"{earlier}: no sweep to {earlier} at {directory}")
    if not earlier and started:
        raise ConfigError(f"name: {directory} already holds a sweep; pass --resume or another --name")
    return directory


def use_cluster_token(settings: SweepSettings) -> None:
    """`ray start --head` (Ray 2.60) turns token authentication on where ~/.ray/auth_token exists,
    while clients default to off; an explicit RAY_AUTH_MODE wins.

    Must run before Ray is imported: it reads the mode then.
    """
    if settings.address is not None and RAY_TOKEN_FILE.is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect(settings: SweepSettings, verbose: bool) -> None:
    import ray

    try:
        # A cluster we join has its own dashboard; a local one gets one on loopback.
        local = {"include_dashboard": True, "dashboard_host": "127.0.0.1"} if settings.address is None else {}
        # Quiet, the trials' own lines (one per evaluation) stay in their logs, on the dashboard.
        quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
        context = ray.init(address=settings.address, **local, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"address: cannot reach a Ray cluster at '{settings.address}' ({error})") from None
    if context.dashboard_url:
        print(
            f"Ray dashboard: http://{context.dashboard_url}  (each trial's actor, log with its metrics, and "
            "resources; it asks for Ray's token: `ray get-auth-token` prints it)",
            flush=True,
        )


def trial_resources(settings: SweepSettings) -> dict:
    import torch

    gpus = (
        settings.gpus_per_trial if settings.gpus_per_trial is not None else float(torch.cuda.is_available())
    )
    return {"cpu": settings.cpus_per_trial, "gpu": gpus}


def scoring_workers(settings: SweepSettings) -> scoring.ScoringPool:
    """The verdict's scoring runs beside itself with the trials' resources and concurrency. One
    serves the whole sweep: what its search starts scoring, the verdict waits for."""
    return scoring.ScoringPool(trial_resources(settings), settings.concurrency)


def evaluations_per_trial(settings: SweepSettings) -> int:
    config, total_steps = trial_budget(settings, settings.methods[0], available_train_size(settings))
    return math.ceil(total_steps / config.eval_every)


def trial_values(config: dict) -> dict:
    """A trial's own config: a later stage's run travels as one grid value."""
    return config.get(RUN_AGAIN, config)


def trial_dirname(trial) -> str:
    config = trial_values(trial.config)
    return f"{trial.trial_id}-{config.get('method')}"


def tune_config(**options):
    """Tune's settings for a phase of the sweep, with what every phase shares."""
    from ray import tune

    # A worker process runs trial after trial: a new trial otherwise starts a Python process and
    # imports torch, transformers and peft (seconds) before its clock starts. Safe because a trial
    # finds its directory in Tune's storage context, not its working directory, and starts its own
    # peak-memory window (measure.reset_peak_memory).
    return tune.TuneConfig(trial_dirname_creator=trial_dirname, reuse_actors=True, **options)


def kept_checkpoint():
    """Each trial keeps its best checkpoint by the quality its periodic evaluations report."""
    from ray import tune

    return tune.CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="quality", checkpoint_score_order="max"
    )


def quiet_libraries(verbose: bool) -> None:
    """Silences what the user cannot act on; an explicit environment variable wins."""
    # Each trial keeps one checkpoint (num_to_keep=1, by design), which makes Tune save the
    # experiment's state at every checkpoint and warn, every few seconds, that this may slow it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose:
        return
    import optuna

    # Tune's new output engine prints an experiment heading at every verbosity; the legacy one
    # prints nothing at verbose=0, where SweepProgress speaks instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # it logs each study it creates


def terminal(
    verbose: bool, stage: str, planned: int, budget_usd: float | None = None, spent_before: float = 0.0
) -> dict:
    """RunConfig's output settings: Tune's own (verbose) or one status line and a line per trial."""
    from sweeps.progress import SweepProgress  # imports Ray, which use_cluster_token must precede

    if verbose:
        return {"verbose": 1}
    return {"verbose": 0, "callbacks": [SweepProgress(stage, planned, budget_usd, spent_before)]}


def outputs(
    settings: SweepSettings,
    directory: Path,
    verbose: bool,
    stage: str,
    planned: int,
    budget_usd: float | None = None,
    spent_before: float = 0.0,
) -> dict:
    """RunConfig's output settings: the terminal's, and with --mlflow every trial logged to MLflow."""
    shown = terminal(verbose, stage, planned, budget_usd, spent_before)
    if settings.mlflow is None:
        return shown
    from sweeps.tracking import MlflowTrials  # imports Ray, which use_cluster_token must precede

    return with_callback(shown, MlflowTrials(settings.mlflow, directory, stage, trial_values))


def with_callback(run_options: dict, callback) -> dict:
    """RunConfig options with one more Tune callback after those they hold."""
    return run_options | {"callbacks": [*run_options.get("callbacks", []), callback]}


def fit_or_resume(directory: Path, build_tuner, trainable) -> bool:
    """Fit a new experiment or continue a saved one; False when it was interrupted (Ctrl-C)."""
    from ray import tune

    if tune.Tuner.can_restore(str(directory)):
        grid = tune.Tuner.restore(str(directory), trainable=trainable, resume_unfinished=True).fit()
    else:
        grid = build_tuner().fit()
    return grid.num_terminated + grid.num_errors == len(grid)


def steps_per_trial(settings: SweepSettings) -> int:
    return trial_budget(settings, settings.methods[0], available_train_size(settings))[1]


def spent_so_far(directory: Path) -> float:
    """Dollars every trial of the sweep has cost so far (baselines, search, extensions)."""
    return load.trials(directory)["cost_usd"].fill_null(0.0).sum()


def early_stopping(settings: SweepSettings):
    """ASHA on the first objective, or Pareto-aware successive halving over them all
    (sweeps.schedulers); both halve at every rung, from grace_evals evaluations on."""
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.schedulers import ParetoSuccessiveHalving

    evaluations = evaluations_per_trial(settings)
    rungs = {
        "time_attr": EVALUATIONS,  # which the baselines never report: left alone
        "max_t": evaluations,
        "grace_period": min(settings.grace_evals, evaluations),
        "reduction_factor": 2,
    }
    pareto = settings.scheduler == "pareto" or (settings.scheduler is None and len(settings.objectives) > 1)
    if pareto:
        return ParetoSuccessiveHalving(settings.objectives, **rungs)
    first = Objective(settings.objectives[0])
    return ASHAScheduler(metric=first.metric, mode=first.mode, **rungs)


def search_algorithm(settings: SweepSettings, directory: Path, first: list[dict], baselines: list[dict]):
    """The baselines first, then Optuna's TPE on the study kept in the sweep's directory; at most
    `concurrency` trials at once, and, with --budget-usd, no trial started past the budget."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.budget import DollarBudget
    from sweeps.searchers import BaselinesFirst

    objectives = [Objective(name) for name in settings.objectives]
    earlier = study.load(directory)
    # An extension's sampler draws afresh rather than replaying the random start of the search's.
    optuna_sampler = sampler(settings.seed + (len(earlier.trials) if earlier else 0))
    study.open_study(directory, objectives, optuna_sampler)
    several = len(objectives) > 1
    searcher = OptunaSearch(
        space=DefineByRun(settings.methods, settings.search, settings.trial_constants()),
        metric=[o.metric for o in objectives] if several else objectives[0].metric,
        mode=[o.mode for o in objectives] if several else objectives[0].mode,
        points_to_evaluate=first,
        sampler=optuna_sampler,
        study_name=study.STUDY_NAME,
        storage=study.storage(directory),
    )
    limited = ConcurrencyLimiter(BaselinesFirst(searcher, baselines), max_concurrent=settings.concurrency)
    if settings.budget_usd is None:
        return limited
    return DollarBudget(limited, settings.budget_usd, steps_per_trial(settings), spent_so_far(directory))


def search_tuner(
    settings: SweepSettings,
    directory: Path,
    experiment: Path,
    samples: int,
    first: list[dict],
    trainable,
    workers: scoring.ScoringPool,
    verbose: bool,
    baselines: Sequence[dict] = (),
):
    """The Tuner of the sweep's search (experiment: the sweep's directory), which runs `baselines`
    first, or of an extension of it (experiment: its extension-<k> directory); `workers` score
    what ended trials still need measured."""
    from ray import tune

    from sweeps.early_measurements import MeasureEndedTrials

    stage = "search" if experiment == directory else experiment.name
    trials = samples + len(baselines)
    return tune.Tuner(
        trainable,
        tune_config=tune_config(
            search_alg=search_algorithm(settings, directory, first, list(baselines)),
            scheduler=early_stopping(settings),
            num_samples=trials,
            time_budget_s=settings.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=kept_checkpoint(),
            **with_callback(
                outputs(
                    settings, directory, verbose, stage, trials, settings.budget_usd, spent_so_far(directory)
                ),
                MeasureEndedTrials(workers, trials),
            ),
        ),
    )


def baseline_configs(settings: SweepSettings) -> list[dict]:
    """The untouched base model at each of the sweep's baseline shots (zero- and k-shot)."""
    return [
        settings.trial_constants() | {"method": BASELINE, "shots": shots} for shots in settings.baseline_shots
    ]


def run_search(
    settings: SweepSettings, directory: Path, trainable, workers: scoring.ScoringPool, verbose: bool
) -> bool:
    def build():
        first = first_points(settings.methods, settings.search)[: settings.samples]
        baselines = baseline_configs(settings)
        return search_tuner(
            settings, directory, directory, settings.samples, first, trainable, workers, verbose, baselines
        )

    return fit_or_resume(directory, build, trainable)


def run_extensions(
    settings: SweepSettings, directory: Path, trainable, workers: scoring.ScoringPool, verbose: bool
) -> bool:
    """With --extend N, a new extension of N trials (no method is enqueued first again: the study
    already holds each method's trials); otherwise (--resume) the sweep's interrupted extensions go on."""
    from ray import tune

    if settings.extend is None:
        finished = True
        for earlier in extend.extension_dirs(directory):
            if tune.Tuner.can_restore(str(earlier)):
                finished = fit_or_resume(earlier, None, trainable) and finished
        return finished
    new = extend.next_extension_dir(directory)

    def build():
        return search_tuner(settings, directory, new, settings.extend, [], trainable, workers, verbose)

    return fit_or_resume(new, build, trainable)


def trial_trainable(config: dict) -> None:
    """The trainable. It imports the training code where the trial runs: the driver never loads
    PEFT or the model classes, seconds that every sweep's start would otherwise wait for. Its name
    is what Tune saves with an experiment and checks on --resume, as trainables.training.trial.tune_trainable's was."""
    from trainables.training import trial

    trial.tune_trainable(config)


def chosen_trial_trainable(config: dict) -> None:
    """A later stage's run of a chosen configuration; its whole config is one grid value, as Tune
    grids one key at a time."""
    trial_trainable(config[RUN_AGAIN])


def run_stage(
    settings: SweepSettings,
    directory: Path,
    workers: scoring.ScoringPool,
    verbose: bool,
    stage: str,
    configs_of: Callable[[pl.DataFrame], list[dict]],
) -> bool:
    """A stage that trains chosen configurations again (sweeps.stages), as a Tune experiment in
    the sweep's `stage` directory; configs_of picks them from the sweep's measured trials."""
    from ray import tune

    trainable = tune.with_resources(chosen_trial_trainable, trial_resources(settings))

    def build(configs: list[dict]):
        return tune.Tuner(
            trainable,
            param_space={RUN_AGAIN: tune.grid_search(configs)},
            tune_config=tune_config(max_concurrent_trials=settings.concurrency),
            run_config=tune.RunConfig(
                name=stage,
                storage_path=str(directory),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=kept_checkpoint(),
                **outputs(
                    settings, directory, verbose, stage, len(configs), spent_before=spent_so_far(directory)
                ),
            ),
        )

    experiment = directory / stage
    if tune.Tuner.can_restore(str(experiment)):
        return fit_or_resume(experiment, None, trainable)
    configs = configs_of(measurements.measured_trials(directory, workers))
    if not configs:
        return True  # every run it would make, the sweep has already
    return fit_or_resume(experiment, functools.partial(build, configs), trainable)


def later_stages(settings: SweepSettings) -> list[tuple[str, Callable[[pl.DataFrame], list[dict]]]]:
    """The stages after the search that the sweep runs, in order, each with how it picks its runs."""
    chosen = []
    if settings.compare_methods:
        compared = functools.partial(
            stages.comparison_configs, first_seed=settings.seed, seeds=settings.finalist_seeds
        )
        chosen.append((load.COMPARISON_DIR, compared))
    if settings.finalist_seeds > 1:
        finalists = functools.partial(
            stages.finalist_configs,
            winners=settings.winners,
            first_seed=settings.seed,
            seeds=settings.finalist_seeds,
        )
        chosen.append((load.FINALISTS_DIR, finalists))
    return chosen


def sweep(settings: SweepSettings, directory: Path, verbose: bool = False) -> bool:
    """Run (or continue) the sweep; False when it was interrupted before the end."""
    use_cluster_token(settings)
    # Not in resolve(): the check needs the model's tokenizer, which for the embedded model comes
    # with its build (minutes, once). Here that build happens once, not in every trial at the same
    # time, and a bad budget is refused before Ray starts or any trial trains.
    check_generation_budget(settings)
    check_methods_run_on_model(settings)
    from ray import tune

    quiet_libraries(verbose)
    connect(settings, verbose)
    trainable = tune.with_resources(trial_trainable, trial_resources(settings))
    workers = scoring_workers(settings)
    print(f"sweep: {settings.task} on {settings.model}, results in {directory}", flush=True)
    # While Tune runs, a trial without a final word is running; once it stops, such a trial is lost.
    with load.running_sweep(directory):
        extend.save_settings(settings, directory)
        if settings.extend:  # the sweep it extends has run its stages
            finished = run_extensions(settings, directory, trainable, workers, verbose)
        else:
            finished = run_search(settings, directory, trainable, workers, verbose)
            finished = finished and run_extensions(settings, directory, trainable, workers, verbose)
            for stage, configs_of in later_stages(settings):
                finished = finished and run_stage(settings, directory, workers, verbose, stage, configs_of)
    trials = load.trials(directory)
    results.write_tables(trials, directory)
    print(results.summary(trials))
    print(f"trials: {directory / 'trials.csv'}")
    if finished:
        try:
            report.build(directory, rank.parse_weights(""), top=settings.winners, workers=workers)
            print(f"report: {directory / 'report.html'}  winners: {directory / WINNERS_FILE}")
        except load.NotAnExperiment as error:
            print(f"no winners: {error}", file=sys.stderr)
    return finished


def settings_of(args: argparse.Namespace) -> SweepSettings:
    """The sweep the parsed command line describes (ConfigError when it cannot be run)."""
    # --verbose changes what the terminal shows, not the sweep: it is no setting of the sweep's.
    cli_values = {key: value for key, value in vars(args).items() if key not in ("task", "config", "verbose")}
    return resolve(args.task, args.config, cli_values)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_of(args)
        directory = experiment_dir(settings)
        if settings.extend:
            settings = extend.extension_settings(settings, directory)
    except ConfigError as error:
        return fail(str(error))
    try:
        finished = sweep(settings, directory, args.verbose)
    except ConfigError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        finished = False
    if not finished:
        print(
            f"interrupted; nothing is lost. Continue with: --name {directory.name} --resume", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
