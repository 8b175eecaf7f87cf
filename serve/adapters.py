"""The adapter registry: the only adapters a server will ever load are the ones its sweeps'
winners.json files name (their winners, or the trials chosen with --trials or --pareto).

Request fields are looked up in this registry by id and never used as paths. A winner whose
method saves a whole model (full fine-tuning) is served as a model of its own, beside the base.
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path

from trainables import winners
from trainables.config import ConfigError
from trainables.methods import METHODS, Method
from trainables.tasks import get_task
from trainables.tasks.custom import is_task_file
from trainables.winners import WINNERS_FILE, Trial, Winner

BASE_MODEL_ID = "base"
# The trials a server may serve: those that ended, or at least kept a checkpoint, without failing.
SERVABLE_STATUSES = ("completed", "stopped_early", "running", "lost")


class OutsideRoots(ConfigError):
    """A path outside the directories a server may read sweeps from (serve.run --adapter-root)."""


def check_inside(roots: tuple[Path, ...] | None, *paths: Path) -> None:
    """Raises OutsideRoots for a path that, symlinks followed, lies outside every root (resolved
    ones); None: no roots to keep to."""
    if roots is None:
        return
    for path in paths:
        try:
            real = Path(os.path.realpath(path))
        except ValueError:  # a null byte
            raise ConfigError(f"{str(path)!r} is not a path") from None
        if not any(real.is_relative_to(root) for root in roots):
            raise OutsideRoots(f"{path} lies outside the allowed --adapter-root directories")


@dataclass(frozen=True)
class ServingFacts:
    """How a winner is served: its method's facts and what its saved directory declares."""

    quantize_4bit: bool  # trained on the 4-bit base (QLoRA), so served on it
    standalone: bool  # a whole model (its own weights), not an adapter on the base
    shares_mixed_batch: bool  # answers in one batch with other such adapters on its base
    served_together_when_equal: tuple[str, ...]  # config fields adapters on one base must share
    prompt_positions: int  # positions it puts before every prompt (prompt tuning's virtual tokens)

    @classmethod
    def of(cls, method: Method, saved: Path, quantize_4bit: bool) -> "ServingFacts":
        """The facts of `method`'s winner saved in `saved`, trained on a 4-bit base or not."""
        return cls(
            quantize_4bit=quantize_4bit,
            standalone=method.standalone,
            shares_mixed_batch=method.shares_mixed_batch,
            served_together_when_equal=method.served_together_when_equal,
            prompt_positions=method.prompt_positions(saved),
        )


@dataclass(frozen=True)
class Adapter:
    adapter_id: str
    task: str  # the task's name, e.g. qg
    task_ref: str  # what get_task resolves: a registered name or a task file's path
    method: str
    base_model: str
    path: Path
    quality: float | None
    serving: ServingFacts
    sweep: Path  # the experiment directory whose winners.json named it
    trial_id: str | None = None
    # Which addition through the admin API registered it (0: at start): an id removed and added
    # again gets another load key, so a replica never answers with weights it cached before.
    registration: int = 0

    @property
    def load_key(self) -> str:
        """What the replicas load and cache it by: its id and registration."""
        return f"{self.adapter_id}@{self.registration}"


@dataclass(frozen=True)
class Registry:
    adapters: dict[str, Adapter]  # the sweeps in the order given, each best first
    bases: dict[str, str]  # the base models by id: `base` for the first sweep's, then base-2, ...

    @classmethod
    def of(cls, adapters: list[Adapter]) -> "Registry":
        """The registry of these adapters, each id once; a clash is a ConfigError naming both sweeps."""
        by_id: dict[str, Adapter] = {}
        for adapter in adapters:
            if adapter.adapter_id in by_id:
                first, second = by_id[adapter.adapter_id].sweep / WINNERS_FILE, adapter.sweep / WINNERS_FILE
                where = f"both {first} and {second}" if first != second else f"{first} twice"
                raise ConfigError(f"id '{adapter.adapter_id}' is in {where}; serve them apart")
            by_id[adapter.adapter_id] = adapter
        models = list(dict.fromkeys(adapter.base_model for adapter in adapters))
        ids = [BASE_MODEL_ID, *(f"{BASE_MODEL_ID}-{n}" for n in range(2, len(models) + 1))]
        return cls(by_id, dict(zip(ids, models, strict=True)))

    def quantized_bases(self, base_model: str) -> tuple[bool, ...]:
        """The copies of `base_model` a replica holds, as whether each is 4-bit: the ones its
        adapters were trained on.

        QLoRA adapters were trained and scored on a 4-bit base, the others on a full-precision one;
        each is served on its own. Standalone models bring their own weights and do not count.
        """
        on_base = {
            a.serving.quantize_4bit
            for a in self.adapters.values()
            if a.base_model == base_model and not a.serving.standalone
        }
        return tuple(sorted(on_base or {False}))

    def for_task(self, task: str) -> list[Adapter]:
        return [adapter for adapter in self.adapters.values() if adapter.task == task]

    def adding(self, adapters: list[Adapter], registration: int) -> "Registry":
        """This registry with `adapters` added (a ConfigError where an id is taken), each marked
        with this registration, on the bases it holds already."""
        marked = [replace(adapter, registration=registration) for adapter in adapters]
        added = Registry.of([*self.adapters.values(), *marked])
        return Registry(added.adapters, self.bases)

    def without(self, adapter_id: str) -> "Registry":
        kept = {key: adapter for key, adapter in self.adapters.items() if key != adapter_id}
        return Registry(kept, self.bases)


@dataclass(frozen=True)
class Choice:
    """Which of a sweep's entries to serve: its winners (the top ones), or named trials, or its
    Pareto front."""

    top: int | None = None
    trials: tuple[str, ...] = ()  # trial ids or serving ids
    pareto: bool = False

    @property
    def of_trials(self) -> bool:
        return bool(self.trials) or self.pareto


def load_registry(
    directories: list[Path], choice: Choice = Choice(), roots: tuple[Path, ...] | None = None
) -> Registry:
    """The chosen adapters of every sweep; every problem is a ConfigError naming the file and field.

    roots: where every file read must lie (OutsideRoots else), checked before it is read.
    """
    adapters = [adapter for directory in directories for adapter in load_sweep(directory, choice, roots)]
    if choice.trials:
        found = {name for adapter in adapters for name in (adapter.adapter_id, adapter.trial_id)}
        if missing := [name for name in choice.trials if name not in found]:
            listed = ", ".join(str(directory / WINNERS_FILE) for directory in directories)
            raise ConfigError(f"trial '{missing[0]}' is not in {listed}")
    return Registry.of(adapters)


def load_sweep(
    directory: Path, choice: Choice = Choice(), roots: tuple[Path, ...] | None = None
) -> list[Adapter]:
    """A sweep's chosen adapters, in its winners.json's order."""
    path = directory / WINNERS_FILE
    check_inside(roots, directory, path)
    saved = winners.read(directory)
    if not choice.of_trials:
        listed = saved.winners[: choice.top] if choice.top else saved.winners
        if not listed:
            raise ConfigError(f"{path}: lists no winners")
        return [_adapter(directory, w, f"{path}: winners[{n}]", roots) for n, w in enumerate(listed)]
    if saved.trials is None:
        raise ConfigError(
            f"{path}: lists no trials, only winners; run `python -m analysis.report {directory}` again"
        )
    chosen = [
        (n, trial)
        for n, trial in enumerate(saved.trials)
        # The front's trials that kept a checkpoint, as the winners are picked from them.
        if (choice.pareto and trial.pareto and trial.adapter_path is not None)
        or {trial.trial_id, trial.id} & set(choice.trials)
    ]
    if choice.pareto and not chosen:
        raise ConfigError(f"{path}: no trial on the Pareto front kept a checkpoint")
    return [_adapter(directory, _servable(trial, f"{path}: trials[{n}]"), f"{path}: trials[{n}]", roots)
            for n, trial in chosen]  # fmt: skip


def _servable(trial: Trial, where: str) -> Winner:
    """A chosen trial as a winner would name it; refused where it failed or kept no checkpoint."""
    if trial.status not in SERVABLE_STATUSES:
        raise ConfigError(f"{where}: trial {trial.trial_id} ({trial.id}) {trial.status}; nothing to serve")
    if trial.adapter_path is None:
        raise ConfigError(f"{where}: trial {trial.trial_id} ({trial.id}) kept no checkpoint to serve")
    return Winner(
        id=trial.id,
        task=trial.task,
        method=trial.method,
        base_model=trial.base_model,
        quantize_4bit=trial.quantize_4bit,
        adapter_path=trial.adapter_path,
        trial_id=trial.trial_id,
        validation={"quality": trial.validation_quality},
    )


def _adapter(directory: Path, winner: Winner, where: str, roots: tuple[Path, ...] | None) -> Adapter:
    if is_task_file(winner.task):  # a YAML task is read too: it must lie under the roots as well
        check_inside(roots, Path(winner.task))
    try:
        task = get_task(winner.task).name
    except KeyError as error:
        raise ConfigError(f"{where}: {error.args[0]}") from None
    method = METHODS.get(winner.method)
    if method is None:
        raise ConfigError(f"{where}: unknown method '{winner.method}'; known: {', '.join(METHODS)}")
    if not method.saved_files:  # the baseline: the untouched base model, always served as `base`
        raise ConfigError(f"{where}: method '{winner.method}' saves nothing to serve")
    # Absolute for the replicas, whose working directory is not this one; an absolute path stays.
    path = directory.resolve() / winner.adapter_path
    check_inside(roots, path, *(path / name for name in method.saved_files))
    missing = [name for name in method.saved_files if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{where}: adapter_path {path} lacks {', '.join(missing)} (safetensors only)")
    if winner.id == BASE_MODEL_ID or winner.id.startswith(f"{BASE_MODEL_ID}-"):
        raise ConfigError(f"{where}: id '{winner.id}' is reserved for the base models")
    return Adapter(
        adapter_id=winner.id,
        task=task,
        task_ref=winner.task,
        method=winner.method,
        base_model=winner.base_model,
        path=path,
        quality=winner.validation.quality,
        serving=ServingFacts.of(method, path, winner.quantize_4bit),
        sweep=directory,
        trial_id=winner.trial_id,
    )
