"""A winners.json with one adapter per method on the tiny model (a whole model for full
fine-tuning), and real servers on loopback."""

import json
import urllib.error
import urllib.request

import pytest
import torch

from serve.adapters import ServingFacts
from serve.engine import read_adapter, read_model
from serve.launch import start_server, stop_server
from trainables import models
from trainables.evaluation import passes
from trainables.methods import METHODS, BuildContext, trained_methods
from trainables.registries import trial_config

API_KEY = "test-key"


def model_id(method: str) -> str:
    """The id winners_dir gives each method's winner."""
    return f"qg-{method.replace('_', '-')}-test"


def _adapter(base: str, method: str, directory, task: str = "qg", seed: int | None = None, **options) -> None:
    """What the method saves, with random trained weights, so each winner answers differently
    (seed: other weights than the method's own default); options: trial options
    (`<method>.<field>`) other than the defaults."""
    spec = METHODS[method]
    config = trial_config({"task": task, "method": method, "model": base, **options})
    model = spec.wrap(
        models.load_model(base, quantize_4bit=spec.quantize_4bit),
        config.hyperparameters,
        BuildContext(100, base, "Turn the question into queries"),
    )
    generator = torch.Generator().manual_seed(len(method) if seed is None else seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if spec.standalone:  # every weight trained: moved, not replaced
                parameter.add_(noise * 0.05)
            else:
                offset = 1.0 if "ia3" in name else 0.0  # IA3 scales: around 1
                # VeRA's scaling vectors multiply fixed random projections: spread wider, so that
                # its update outweighs the base's on the tiny model as a LoRA's does.
                spread = 2.0 if "vera_lambda" in name else 0.5
                parameter.copy_(noise * spread + offset)
    spec.save(model, models.load_tokenizer(base), directory)


def post(url: str, path: str, body, key: str | None = API_KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding exactly as evaluation scores it: what a served answer must equal.

    On one thread, as every trial runs and as the tests' servers run their replica
    (`--cpus-per-replica 1`): with more, float sums run in another order, and a near-tie on these
    random-weight models can flip a token.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return passes.generate(model, tokenizer, [prompt], max_new_tokens, batch_size=1).texts[0]
    finally:
        torch.set_num_threads(threads)


def read_saved(adapter_id: str, directory, method: str):
    """A saved adapter (or whole model) as a replica reads it, on the base its method trains on."""
    spec = METHODS[method]
    if spec.standalone:
        return read_model(adapter_id, directory)
    return read_adapter(adapter_id, directory, ServingFacts.of(spec, directory, spec.quantize_4bit))


@pytest.fixture(scope="session")
def served_base(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its attention and MLP outputs scaled up.

    The random tiny model mostly repeats the prompt's last token, whatever its context or adapter:
    here context matters, so every method's adapter changes the answer and a 4-bit base gives
    other answers than the full-precision one, which tests can then tell apart.
    """
    scaled = ("v_proj.weight", "o_proj.weight", "up_proj.weight", "down_proj.weight")
    return scaled_copy(tiny_model, scaled, 8.0, tmp_path_factory.mktemp("served-base"))


def scaled_copy(model_path: str, weights: tuple[str, ...], factor: float, directory) -> str:
    """The model with the weights whose names end so multiplied by factor, saved with its tokenizer."""
    model = models.load_model(model_path)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(weights):
                parameter.mul_(factor)
    model.save_pretrained(directory)
    models.load_tokenizer(model_path).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def winners_dir(served_base, tmp_path_factory):
    directory = tmp_path_factory.mktemp("experiment")
    winners = []
    for method in trained_methods():
        _adapter(served_base, method, directory / method)
        winners.append({
            "id": model_id(method), "task": "qg", "method": method,
            "base_model": served_base, "quantize_4bit": METHODS[method].quantize_4bit,
            "adapter_path": str(directory / method), "validation": {"quality": 0.5 - len(winners) / 10},
        })  # fmt: skip
    (directory / "winners.json").write_text(json.dumps({"winners": winners}))
    return directory


@pytest.fixture(scope="module")
def server(winners_dir):
    # One core for the replica: the answers are compared with one-thread greedy decoding, and the
    # other test process holds the machine's second core.
    process, url = start_server(
        winners_dir, "--api-key", API_KEY, "--max-tokens", "64", "--max-prompt-tokens", "300",
        "--max-adapters-per-replica", "4", "--cpus-per-replica", "1",
    )  # fmt: skip
    yield url
    stop_server(process)
