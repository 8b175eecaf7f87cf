"""Sweeps on different base models in one server: each base once, and a replica that cannot hold
them all is refused at start, with the memory it would need."""

import json

import pytest
import torch

from serve.adapters import load_registry
from serve.capacity import GIB, check_fits, weights_bytes
from trainables import models
from trainables.config import ConfigError


def _sweep(directory, winner: dict) -> None:
    directory.mkdir()
    (directory / "winners.json").write_text(json.dumps({"winners": [winner]}))


def test_two_bases_are_held_once_each_and_a_replica_too_small_for_them_is_refused(
    winners_dir, served_base, tiny_model, tmp_path
):
    (qlora,) = [
        w for w in json.loads((winners_dir / "winners.json").read_text())["winners"] if w["method"] == "qlora"
    ]
    on_tiny = qlora | {"id": "qg-qlora-tiny", "base_model": tiny_model}
    _sweep(tmp_path / "on-tiny", on_tiny | {"adapter_path": str(winners_dir / "qlora")})
    registry = load_registry([winners_dir, tmp_path / "on-tiny"])
    assert registry.bases == {"base": served_base, "base-2": tiny_model}
    needed = weights_bytes(registry)
    parameters = models.parameter_count(tiny_model)
    full = torch.finfo(models.compute_dtype()).bits // 8
    assert needed == {"base": parameters * (full + 0.5), "base-2": parameters * 0.5}  # served: both copies
    check_fits(needed, 2, 2 * sum(needed.values()))  # fits exactly
    with pytest.raises(
        ConfigError, match=r"the base models need at least .* GiB \(base .* GiB, base-2 .* GiB x 2 replicas\)"
    ):
        check_fits(needed, 2, 2 * sum(needed.values()) - 1)
    with pytest.raises(ConfigError, match=f"{sum(needed.values()) / GIB:.2f} GiB"):
        check_fits(needed, 1, 0)
