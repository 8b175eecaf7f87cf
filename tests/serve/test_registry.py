"""The winners registry: each method's saved files are checked, and full fine-tuning is standalone."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from serve.adapters import load_registry
from trainables.config import ConfigError


def _winners(directory, winners: list[dict]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "winners.json").write_text(json.dumps({"winners": winners}))


def _listed(winners_dir) -> dict[str, dict]:
    return {w["method"]: w for w in json.loads((winners_dir / "winners.json").read_text())["winners"]}


def _quantized_bases(directory) -> tuple[bool, ...]:
    registry = load_registry([directory])
    return registry.quantized_bases(registry.bases["base"])


def test_a_full_winner_is_a_standalone_model_and_leaves_the_base_as_qlora_needs(winners_dir, tmp_path):
    registry = load_registry([winners_dir])
    standalone = {adapter.method for adapter in registry.adapters.values() if adapter.serving.standalone}
    assert standalone == {"full"}
    listed = _listed(winners_dir)
    _winners(tmp_path / "sweep", [listed["qlora"], listed["full"]])
    assert _quantized_bases(tmp_path / "sweep") == (True,)  # the full model brings its own
    _winners(tmp_path / "alone", [listed["full"]])
    assert _quantized_bases(tmp_path / "alone") == (False,)


def test_qlora_and_other_winners_get_a_base_each_as_they_were_trained(winners_dir):
    assert _quantized_bases(winners_dir) == (False, True)


def test_a_full_winner_without_safetensors_weights_is_refused(winners_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(winners_dir / "full", pickled)
    weights = pickled / "model.safetensors"
    torch.save(load_file(weights), pickled / "pytorch_model.bin")
    weights.unlink()
    _winners(tmp_path / "sweep", [_listed(winners_dir)["full"] | {"adapter_path": str(pickled)}])
    with pytest.raises(ConfigError, match=r"winners\[0\]: adapter_path .* lacks model\.safetensors"):
        load_registry([tmp_path / "sweep"])


def test_a_prompt_tuning_adapter_declares_the_positions_it_puts_before_every_prompt(winners_dir):
    """They count in the model's context beside the prompt and the answer (the gateway's check)."""
    adapters = {adapter.method: adapter for adapter in load_registry([winners_dir]).adapters.values()}
    saved = json.loads((adapters["prompt_tuning"].path / "adapter_config.json").read_text())
    assert adapters["prompt_tuning"].serving.prompt_positions == saved["num_virtual_tokens"] > 0
    assert all(
        adapter.serving.prompt_positions == 0
        for method, adapter in adapters.items()
        if method != "prompt_tuning"
    )
