"""The server's limits from its command line: how many cores a model replica holds."""

import pytest

from serve.app import Limits, gateway, model_server
from serve.run import limits_from, parser
from trainables.config import ConfigError


def _limits(*options: str, gpus: int = 0, cores: int = 8) -> Limits:
    return limits_from(parser().parse_args(["winners", *options]), gpus, cores)


def test_a_cpu_replica_holds_its_share_of_the_cores_and_the_gateway_none():
    # Ray sets a replica's torch threads to the CPUs it holds: one CPU meant one core for decoding.
    assert _limits().cpus_per_replica == 8
    assert _limits("--replicas", "3").cpus_per_replica == 2
    assert _limits("--replicas", "16").cpus_per_replica == 1
    assert _limits(gpus=1).cpus_per_replica == 1  # the GPU decodes; a core feeds it
    assert _limits("--cpus-per-replica", "3", gpus=1).cpus_per_replica == 3
    limits = _limits("--replicas", "2")
    assert model_server(limits).ray_actor_options == {"num_gpus": 0.0, "num_cpus": 4}
    # The gateway reserves none, so a replica holding every core still leaves room for it.
    assert gateway(limits, None).ray_actor_options["num_cpus"] == 0


def test_a_replica_without_cores_is_refused():
    with pytest.raises(ConfigError, match="--cpus-per-replica: must be positive"):
        _limits("--cpus-per-replica", "0")
