"""How a server runs: its limits, which are also its command-line options (serve.run).

Apart from serve.app so that the command line is built, and Ray's environment set (serve.run),
before Ray is imported.
"""

import dataclasses
from dataclasses import dataclass

from trainables.decoding import lookup
from trainables.decoding.lookup import PromptLookup

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}

# No token of the tokenizers served is longer than this many characters (the gateway takes the
# tokenizer's own longest where it is longer): a prompt of more than max_prompt_tokens times as
# many characters has more than max_prompt_tokens tokens, and is refused before it is tokenized.
CHARS_PER_TOKEN = 64

# The gateway's slots beyond max_gateway_requests: in them it refuses a request with a 503 in
# OpenAI's shape, or answers /healthz, while it is full. Only when these are taken too does a
# request wait in Ray's proxy (max_gateway_queue), and beyond that queue Ray answers a plain-text 503.
GATEWAY_SPARE_SLOTS = 32


def _limit(default, help: str):
    """A Limits field whose help is its option's on the server's command line (serve.run)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Limits:
    """How a server runs. The fields with help are the server's command-line options (serve.run
    generates them from here); the others it derives."""

    max_prompt_tokens: int = _limit(
        1024,
        f"prompts longer than this many tokens get a 413 (and those of more than {CHARS_PER_TOKEN} "
        "characters a token, before they are tokenized)",
    )
    max_tokens: int = _limit(256, "cap on a request's max_tokens")
    # A prompt of max_prompt_tokens takes a few kB; a chat of many messages more.
    max_body_bytes: int = _limit(1_048_576, "request bodies larger than this get a 413, before parsing")
    request_timeout_s: float = _limit(60.0, "a request unanswered this long gets a 504 and leaves its batch")
    max_queued_requests: int = _limit(64, "requests waiting for a model replica beyond this get a 503")
    max_gateway_requests: int = _limit(
        256,
        "requests the HTTP gateway holds at once (reading, tokenizing, waiting for a replica); more get a 503",
    )
    max_gateway_queue: int = _limit(
        64,
        "requests Ray's HTTP proxy holds for a gateway that has no slot left; more get Ray's plain-text 503",
    )
    http_timeout_s: float = _limit(
        120.0,
        "Ray's HTTP proxy cuts off a request, its upload included, unanswered this long (a 408); "
        "above --request-timeout-s",
    )
    max_batch_size: int = _limit(16, "rows decoded together")
    batch_wait_s: float = _limit(0.01, "how long an idle replica waits for companions of a first request")
    max_adapters_per_replica: int = _limit(8, "adapters a replica keeps loaded; the least recently used go")
    replicas: int = _limit(1, "model replicas")
    # Ray gives a replica's torch as many threads as the CPUs it holds (OMP_NUM_THREADS): with the
    # default of 1, a CPU-only replica decoded on one core of the machine.
    cpus_per_replica: int = _limit(
        1,
        "cores (torch threads) each model replica holds (default: 1 with GPUs, else this machine's cores "
        "divided among the replicas)",
    )
    prompt_lookup_tokens: int = _limit(PromptLookup.tokens, "prompt lookup's longest draft (k)")
    prompt_lookup_ngram: int = _limit(PromptLookup.ngram, "prompt lookup's longest suffix looked up (n)")
    mix_adapters: bool = True  # False: each adapter's requests batch apart (to measure what mixing gains)
    prompt_lookup: bool = True  # False: plain decoding (--no-prompt-lookup); the answers are the same
    gpus_per_replica: float = 0.0
    # Bound to loopback: only requests naming a loopback host are answered, so that a web page the
    # user opens cannot reach the server through a name that resolves to 127.0.0.1 (DNS rebinding).
    loopback_hosts_only: bool = True

    def lookup(self) -> PromptLookup | None:
        return lookup.chosen(self.prompt_lookup, self.prompt_lookup_tokens, self.prompt_lookup_ngram)

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The fields the command line sets."""
        return [f for f in dataclasses.fields(cls) if "help" in f.metadata]
