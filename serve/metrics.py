"""What a server counts: per model in the gateway, per replica in the model replicas.

Through Ray's metrics (ray.serve.metrics, which tag each with its deployment and replica), so the
Ray dashboard and its Prometheus endpoint show them; the gateway keeps the same figures as a
summary for GET /v1/stats.
"""

from collections import defaultdict
from dataclasses import dataclass, field

from ray.serve.metrics import Counter, Gauge, Histogram

from serve.engine import Completion

PREFIX = "peft_sweeps_"
LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
# The model tag of a request refused before it named a known model (401, 422, an unknown id):
# unknown names are never tags, so a client cannot make the metrics grow without bound.
NO_MODEL = "-"


@dataclass(frozen=True)
class ReplicaLoad:
    """A model replica's load as it answered: requests waiting to join a running batch, rows in the
    running batches, and the rows its batches could hold."""

    replica: str
    queued: int
    running: int
    capacity: int

    @property
    def occupancy(self) -> float:
        return self.running / self.capacity


@dataclass(frozen=True)
class Served:
    """A model replica's answer: the completion, how long decoding took after its first token,
    and the replica's load then."""

    completion: Completion
    after_first_token_s: float
    load: ReplicaLoad


@dataclass
class _ModelFigures:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by HTTP status
    in_flight: int = 0  # taken by the gateway, not answered yet
    answered: int = 0
    latency_s: float = 0.0  # summed over the answered requests, as is the next
    time_to_first_token_s: float = 0.0
    max_latency_s: float = 0.0

    def summary(self) -> dict:
        mean = (lambda total: total / self.answered) if self.answered else (lambda _: None)
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "errors": dict(sorted(self.errors.items())),
            "in_flight": self.in_flight,
            "mean_latency_s": mean(self.latency_s),
            "max_latency_s": self.max_latency_s,
            "mean_time_to_first_token_s": mean(self.time_to_first_token_s),
        }


class GatewayMetrics:
    """Requests, tokens, errors and latency per model (`base` and each adapter's id)."""

    def __init__(self):
        tags = ("model",)
        self.requests = Counter(f"{PREFIX}requests", "Requests by the model they named", tag_keys=tags)
        self.prompt_tokens = Counter(f"{PREFIX}prompt_tokens", "Prompt tokens of answered requests", tags)
        self.completion_tokens = Counter(f"{PREFIX}completion_tokens", "Tokens generated", tags)
        self.errors = Counter(f"{PREFIX}errors", "Requests answered with an error", (*tags, "status"))
        self.latency = Histogram(
            f"{PREFIX}latency_s", "Seconds from a request's arrival to its answer", LATENCY_BOUNDARIES_S, tags
        )
        self.first_token = Histogram(
            f"{PREFIX}time_to_first_token_s",
            "Seconds from a request's arrival to its first token",
            LATENCY_BOUNDARIES_S,
            tags,
        )
        self.figures: dict[str, _ModelFigures] = defaultdict(_ModelFigures)
        self.replicas: dict[str, ReplicaLoad] = {}  # each model replica's load as it last answered

    def started(self, model: str) -> None:
        self.figures[model].in_flight += 1

    def ended(self, model: str) -> None:
        self.figures[model].in_flight -= 1

    def answered(self, model: str, served: Served, latency_s: float) -> None:
        completion, tags = served.completion, {"model": model}
        first_token_s = max(0.0, latency_s - served.after_first_token_s)
        self.requests.inc(tags=tags)
        self.prompt_tokens.inc(completion.prompt_tokens, tags)
        if completion.completion_tokens:  # Ray's counters refuse an increment of 0
            self.completion_tokens.inc(completion.completion_tokens, tags)
        self.latency.observe(latency_s, tags)
        self.first_token.observe(first_token_s, tags)
        figures = self.figures[model]
        figures.requests += 1
        figures.answered += 1
        figures.prompt_tokens += completion.prompt_tokens
        figures.completion_tokens += completion.completion_tokens
        figures.latency_s += latency_s
        figures.time_to_first_token_s += first_token_s
        figures.max_latency_s = max(figures.max_latency_s, latency_s)
        self.replicas[served.load.replica] = served.load

    def failed(self, model: str, status: int) -> None:
        self.requests.inc(tags={"model": model})
        self.errors.inc(tags={"model": model, "status": str(status)})
        figures = self.figures[model]
        figures.requests += 1
        figures.errors[str(status)] = figures.errors.get(str(status), 0) + 1

    def stats(self) -> dict:
        """The summary GET /v1/stats answers."""
        return {
            "models": {model: figures.summary() for model, figures in sorted(self.figures.items())},
            "replicas": {
                replica: {"queue_depth": load.queued, "batch_occupancy": load.occupancy}
                for replica, load in sorted(self.replicas.items())
            },
        }


class ReplicaMetrics:
    """A model replica's queue depth and batch occupancy (Ray tags them with the replica)."""

    def __init__(self):
        self.queue_depth = Gauge(f"{PREFIX}queue_depth", "Requests waiting to join a running batch")
        self.batch_occupancy = Gauge(
            f"{PREFIX}batch_occupancy",
            "Rows in the running batches, as a share of what they hold (--max-batch-size per base model)",
        )

    def record(self, load: ReplicaLoad) -> None:
        self.queue_depth.set(load.queued)
        self.batch_occupancy.set(load.occupancy)
