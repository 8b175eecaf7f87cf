"""A winners.json with one adapter per method on the tiny model, and real servers on loopback."""

import json

import pytest
import torch
from peft import get_peft_model

from serve.launch import start_server, stop_server
from trainables import models
from trainables.config import TrialConfig
from trainables.methods import METHODS, BuildContext

API_KEY = "test-key"


def _adapter(base: str, method: str, directory) -> None:
    """A saved adapter whose weights are random, so each adapter answers differently."""
    config = TrialConfig.parse({"task": "qg", "method": method, "model": base})
    model = get_peft_model(
        models.load_model(base, quantize_4bit=METHODS[method].quantize_4bit),
        METHODS[method].peft_config(config, BuildContext(100, base, "Turn the question into queries")),
    )
    generator = torch.Generator().manual_seed(len(method))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                offset = 1.0 if "ia3" in name else 0.0  # IA3 scales: around 1
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + offset)
    model.save_pretrained(directory)


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
