"""A winners.json with one adapter per method on the tiny model (a whole model for full
fine-tuning), and real servers on loopback."""

import json

import pytest
import torch

from serve.launch import start_server, stop_server
from trainables import models
from trainables.config import TrialConfig
from trainables.methods import METHODS, BuildContext

API_KEY = "test-key"


def _adapter(base: str, method: str, directory) -> None:
    """What the method saves, with random trained weights, so each winner answers differently."""
    spec = METHODS[method]
    config = TrialConfig.parse({"task": "qg", "method": method, "model": base})
    model = spec.wrap(
        models.load_model(base, quantize_4bit=spec.quantize_4bit),
        config,
        BuildContext(100, base, "Turn the question into queries"),
    )
    generator = torch.Generator().manual_seed(len(method))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if spec.standalone:  # every weight trained: moved, not replaced
                parameter.add_(noise * 0.05)
            else:
                offset = 1.0 if "ia3" in name else 0.0  # IA3 scales: around 1
                parameter.copy_(noise * 0.5 + offset)
    spec.save(model, models.load_tokenizer(base), directory)


@pytest.fixture(scope="session")
def winners_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("experiment")
    winners = []
    for method in METHODS:
        _adapter(tiny_model, method, directory / method)
        winners.append({
            "id": f"qg-{method.replace('_', '-')}-test", "task": "qg", "method": method,
            "base_model": tiny_model, "quantize_4bit": METHODS[method].quantize_4bit,
            "adapter_path": str(directory / method), "validation": {"quality": 0.5 - len(winners) / 10},
        })  # fmt: skip
    (directory / "winners.json").write_text(json.dumps({"winners": winners}))
    return directory


@pytest.fixture(scope="module")
def server(winners_dir):
    process, url = start_server(
        winners_dir, "--api-key", API_KEY, "--max-tokens", "64", "--max-prompt-tokens", "300",
        "--max-adapters-per-replica", "4",
    )  # fmt: skip
    yield url
    stop_server(process)
