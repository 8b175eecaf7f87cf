"""The adapter registry: the only adapters a server will ever load are the ones winners.json names.

Request fields are looked up in this registry by id and never used as paths. A winner whose
method saves a whole model (full fine-tuning) is served as a model of its own, beside the base.
"""

from dataclasses import dataclass
from pathlib import Path

from trainables import winners
from trainables.config import ConfigError
from trainables.methods import METHODS, Method
from trainables.tasks import get_task
from trainables.winners import WINNERS_FILE

BASE_MODEL_ID = "base"


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
    path: Path
    quality: float | None
    serving: ServingFacts


@dataclass(frozen=True)
class Registry:
    base_model: str
    adapters: dict[str, Adapter]  # in winners.json order: best first

    @property
    def quantized_bases(self) -> tuple[bool, ...]:
        """The bases a replica holds, as whether each is 4-bit: the ones the adapters were trained on.

        QLoRA adapters were trained and scored on a 4-bit base, the others on a full-precision one;
        each is served on its own. Standalone models bring their own weights and do not count.
        """
        on_base = {a.serving.quantize_4bit for a in self.adapters.values() if not a.serving.standalone}
        return tuple(sorted(on_base or {False}))

    def for_task(self, task: str) -> list[Adapter]:
        return [adapter for adapter in self.adapters.values() if adapter.task == task]


def load_registry(experiment_dir: Path, top: int | None = None) -> Registry:
    """The top winners of a sweep; every problem is a ConfigError naming the file and field."""
    path = experiment_dir / WINNERS_FILE
    listed = winners.read(experiment_dir).winners
    listed = listed[:top] if top else listed
    if not listed:
        raise ConfigError(f"{path}: lists no winners")
    bases = {winner.base_model for winner in listed}
    if len(bases) != 1:
        raise ConfigError(
            f"{path}: winners share no base model ({', '.join(sorted(bases))}); serve one at a time"
        )
    adapters = {}
    for position, winner in enumerate(listed):
        where = f"{path}: winners[{position}]"
        try:
            task = get_task(winner.task).name
        except KeyError as error:
            raise ConfigError(f"{where}: {error.args[0]}") from None
        method = METHODS.get(winner.method)
        if method is None:
            raise ConfigError(f"{where}: unknown method '{winner.method}'; known: {', '.join(METHODS)}")
        # Absolute for the replicas, whose working directory is not this one; an absolute path stays.
        path = experiment_dir.resolve() / winner.adapter_path
        missing = [name for name in method.saved_files if not (path / name).is_file()]
        if missing:
            raise ConfigError(f"{where}: adapter_path {path} lacks {', '.join(missing)} (safetensors only)")
        serving = ServingFacts.of(method, path, winner.quantize_4bit)
        if winner.id == BASE_MODEL_ID or winner.id in adapters:
            raise ConfigError(f"{where}: id '{winner.id}' is reserved or repeated")
        adapters[winner.id] = Adapter(
            adapter_id=winner.id,
            task=task,
            task_ref=winner.task,
            method=winner.method,
            path=path,
            quality=winner.validation.quality,
            serving=serving,
        )
    return Registry(base_model=bases.pop(), adapters=adapters)
