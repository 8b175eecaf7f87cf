"""winners.json, the file a sweep hands to serving and export: one typed model that its writer
(analysis.report) and every reader (serve) use, so the two cannot drift.

A reader accepts a file that holds only what serving needs (a winner's id, task, method, base
model, adapter path and precision): the rest is what the verdict found, for people and tools.
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from trainables import files
from trainables.errors import ConfigError, problems

WINNERS_FILE = "winners.json"
SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Comparison(Strict):
    """A difference of test quality between two sides, with both sides' training budgets."""

    against: str
    difference: float
    ci95: list[float]
    distinguishable: bool  # the interval leaves out 0
    steps: int
    seeds: int
    against_steps: int
    against_seeds: int
    equal_budget: bool  # both trained as long, or the other side is the untouched base model
    real_difference: bool  # distinguishable at equal budget: never at unequal budgets
    meaning: str  # in words: a real difference, not distinguishable, or unequal budgets


class MethodComparison(Comparison):
    method: str
    against_method: str


class Validation(Strict):
    """The figure that ranked a winner: its quality on the whole validation split."""

    quality: float | None = None  # the mean over its seeds when re-trained with more
    quality_std: float | None = None
    seeds: int | None = None
    examples: int | None = None
    step: int | None = None  # the evaluation whose checkpoint is served
    latency_s: float | None = None
    latency_per_token_s: float | None = None


class TestFigures(BaseModel):
    """Figures on the test split: quality with its interval, and the task's own metrics (extra
    fields, named as the task names them)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    quality: float
    quality_ci95: list[float]


class WinnerTest(TestFigures):
    examples: int
    steps: int
    comparisons: list[Comparison]


class Winner(Strict):
    id: str
    task: str  # a registered task's name, or a task file's path
    method: str
    base_model: str
    quantize_4bit: bool
    adapter_path: str  # relative to the sweep's directory (absolute in files written by hand)
    trial_id: str | None = None
    exports: list[str] = []  # what `python -m serve.export --to` can write of it
    checkpoint_path: str | None = None
    config: dict = {}
    validation: Validation = Validation()
    utility: float | None = None
    best_on_validation: bool = False
    test: WinnerTest | None = None


class Trial(Strict):
    """A trial of the sweep as a server can name it (`python -m serve.run --trials`, `--pareto`):
    any point of the leaderboard, not only the winners."""

    trial_id: str
    id: str  # its serving id, as a winner's would be
    task: str
    method: str
    base_model: str
    quantize_4bit: bool
    status: str  # completed, stopped_early, failed, running or lost (analysis.load)
    pareto: bool  # on the Pareto front
    adapter_path: str | None = None  # its kept checkpoint's, relative to the sweep; None: none kept
    validation_quality: float | None = None


class ComparedMethod(Strict):
    """A method as the verdict compares it: its best configuration's runs at equal budget."""

    method: str
    id: str
    trial_ids: list[str]
    steps: int
    seeds: int
    whole_budget: bool
    trained_in_comparison_stage: list[bool]
    validation_quality: float
    test: TestFigures


class Winners(Strict):
    schema_version: int = SCHEMA_VERSION
    weights: dict[str, float] = {}
    winners: list[Winner]  # best first
    methods: list[ComparedMethod] = []
    method_comparisons: list[MethodComparison] = []
    trials: list[Trial] | None = None  # every trial, leaderboard order; None: written before they were listed

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version > SCHEMA_VERSION:
            raise ValueError(f"version {version} is newer than this code reads ({SCHEMA_VERSION}); upgrade")
        return version

    def write(self, directory: Path) -> Path:
        path = directory / WINNERS_FILE
        files.write_atomically(path, self.model_dump_json(indent=2))
        return path


def read(directory: Path) -> Winners:
    """A sweep's winners.json; every problem is a ConfigError naming the file and field."""
    path = directory / WINNERS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run the sweep or `python -m analysis.report {directory}`")
    try:
        return Winners.model_validate_json(path.read_bytes())
    except ValidationError as error:
        raise ConfigError(f"{path}: not a winners file: {'; '.join(problems(error))}") from None
