"""The server's limits from its command line: how many cores a model replica holds."""

import hashlib

import pytest
from ray import cloudpickle

from serve.adapters import Registry
from serve.app import Limits, bearer_token, build, gateway, key_digest, model_server
from serve.run import API_KEY_VARIABLE, api_key_from, limits_from, parser
from trainables.config import ConfigError
from trainables.decoding.lookup import PromptLookup


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
    assert gateway(limits).ray_actor_options["num_cpus"] == 0


def test_prompt_lookup_is_on_unless_turned_off_and_its_settings_reach_the_engines():
    assert _limits().lookup() == PromptLookup()
    assert _limits("--prompt-lookup-tokens", "5", "--prompt-lookup-ngram", "2").lookup() == PromptLookup(5, 2)
    assert _limits("--no-prompt-lookup").lookup() is None
    with pytest.raises(ConfigError, match="--prompt-lookup-tokens: must be positive"):
        _limits("--prompt-lookup-tokens", "0")


def test_a_replica_without_cores_is_refused():
    with pytest.raises(ConfigError, match="--cpus-per-replica: must be positive"):
        _limits("--cpus-per-replica", "0")


def _key(*options: str, environment: dict | None = None):
    return api_key_from(parser().parse_args(["winners", *options]), environment or {})


def test_the_api_key_comes_from_a_flag_a_file_or_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    assert _key("--api-key-file", str(key_file)) == "from-a-file"
    assert _key("--api-key", "from-a-flag", environment={API_KEY_VARIABLE: "ignored"}) == "from-a-flag"
    assert _key(environment={API_KEY_VARIABLE: "from-the-environment"}) == "from-the-environment"
    assert _key() is None  # on loopback, no key is no authentication


@pytest.mark.parametrize(
    ("options", "environment", "problem"),
    [
        ((), {API_KEY_VARIABLE: ""}, r"\$PEFT_SWEEPS_API_KEY: the API key is empty"),
        (("--api-key", " "), {}, "--api-key: the API key is empty"),
        (("--api-key-file", "EMPTY"), {}, "--api-key-file .*: the API key is empty"),
        (("--api-key-file", "MISSING"), {}, "--api-key-file: cannot read"),
        (("--host", "0.0.0.0"), {}, "--host 0.0.0.0: serving beyond this machine needs an API key"),
    ],
)
def test_an_empty_key_or_an_open_server_without_one_is_refused(tmp_path, options, environment, problem):
    (tmp_path / "EMPTY").write_text("\n")
    options = tuple(
        str(tmp_path / option) if option in ("EMPTY", "MISSING") else option for option in options
    )
    with pytest.raises(ConfigError, match=problem):
        _key(*options, environment=environment)


def test_an_open_server_without_a_key_needs_saying_so():
    assert _key("--host", "0.0.0.0", "--insecure-no-api-key") is None
    assert _key("--host", "0.0.0.0", "--api-key", "k") == "k"


def test_the_bearer_scheme_is_matched_whatever_its_case_and_only_a_digest_is_kept():
    assert bearer_token("Bearer k1") == bearer_token("bearer k1") == bearer_token("BEARER  k1 ") == "k1"
    assert bearer_token("Basic k1") == "" and bearer_token("k1") == ""
    digest = key_digest("secret-key")
    assert digest == hashlib.sha256(b"secret-key").digest() and b"secret-key" not in digest
    # What Ray pickles of the application (with its own cloudpickle) holds the digest, never the key.
    pickled = cloudpickle.dumps(build(Registry({}, {"base": "base-model"}), _limits(), digest))
    assert digest in pickled and b"secret-key" not in pickled


def _answer(limit: int, chunks: list[bytes], declared: int | None) -> tuple[int, dict]:
    """A POST to an app behind BodyLimit, driven through ASGI: its status, its JSON body, and how
    many of the body's chunks the app had read by then."""
    import asyncio
    import json

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from serve import api
    from serve.app import ApiError, BodyLimit

    app = FastAPI()
    app.add_middleware(BodyLimit, limit=limit)

    @app.exception_handler(ApiError)
    async def _api_error(_, error: ApiError):
        return JSONResponse(api.error_body(error.message, error.kind), status_code=error.status)

    @app.post("/echo")
    async def _echo(request: Request):
        return {"bytes": len(await request.body())}

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    read, sent = [], []

    async def receive():
        read.append(1)
        return messages[len(read) - 1]

    async def send(message):
        sent.append(message)

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": headers, "query_string": b""}
    asyncio.run(app(scope | {"asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
                             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1), "root_path": ""},
                    receive, send))  # fmt: skip
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    return status, body | {"chunks_read": len(read)}


def test_a_body_over_the_limit_is_a_413_before_it_is_read_whole():
    assert _answer(100, [b"x" * 60, b"x" * 30], declared=90)[:1] == (200,)
    status, body = _answer(100, [b"x" * 60] * 1000, declared=60_000)  # declared: refused unread
    assert status == 413 and "larger than 100 bytes" in body["error"]["message"] and body["chunks_read"] == 0
    status, body = _answer(100, [b"x" * 60] * 1000, declared=None)  # chunked: refused as it passes
    assert status == 413 and body["error"]["type"] == "invalid_request_error" and body["chunks_read"] == 2


def test_a_server_on_loopback_answers_only_requests_naming_a_loopback_host():
    """Against DNS rebinding: a page that makes attacker.example resolve to 127.0.0.1 still sends
    Host: attacker.example, and gets a 421."""
    import asyncio

    from serve.app import LoopbackHosts, is_loopback_host

    assert all(
        map(is_loopback_host, ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "127.0.1.1"])
    )
    assert not any(map(is_loopback_host, ["attacker.example:8000", "10.0.0.2", "[2001:db8::1]:80", ""]))
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["headers"])

    async def status(host: bytes) -> int | None:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [(b"host", host)]}
        await LoopbackHosts(inner)(scope, None, send)
        return next((m["status"] for m in sent if m["type"] == "http.response.start"), None)

    assert asyncio.run(status(b"attacker.example:8000")) == 421 and reached == []
    assert asyncio.run(status(b"127.0.0.1:8000")) is None and len(reached) == 1  # passed on to the app
    assert _limits().loopback_hosts_only and not _limits_on("0.0.0.0").loopback_hosts_only


def _limits_on(host: str) -> Limits:
    return limits_from(parser().parse_args(["winners", "--host", host, "--api-key", "k"]), 0, 8)


def test_the_server_s_command_line_is_generated_from_its_limits():
    options = {action.dest: action for action in parser()._actions if action.option_strings}
    for limit in Limits.options():
        assert options[limit.name].help == limit.metadata["help"]
        assert options[limit.name].default == (None if limit.name == "cpus_per_replica" else limit.default)
    assert _limits("--max-body-bytes", "10", "--batch-wait-s", "0").max_body_bytes == 10


def test_the_gateway_s_queue_is_bounded_and_ray_s_proxy_times_requests_out():
    """Ray holds at most max_gateway_queue requests for a full gateway, and its proxy cuts off a
    request (its upload included) after --http-timeout-s, which lies beyond the gateway's own
    timeout so that a request waiting for a replica gets the gateway's 504 first."""
    from ray.serve.config import HTTPOptions

    from serve.limits import GATEWAY_SPARE_SLOTS
    from serve.run import http_options

    limits = _limits("--max-gateway-requests", "100", "--max-gateway-queue", "10")
    deployment = gateway(limits)
    assert deployment.max_queued_requests == 10
    assert deployment.max_ongoing_requests == 100 + GATEWAY_SPARE_SLOTS  # room to refuse in JSON
    defaults = _limits()
    assert (defaults.max_gateway_requests, defaults.max_gateway_queue, defaults.http_timeout_s) == (
        256,
        64,
        120,
    )
    assert gateway(defaults).max_queued_requests == 64
    args = parser().parse_args(["winners", "--port", "8123", "--http-timeout-s", "90"])
    options = HTTPOptions(**http_options(args, limits_from(args, 0, 8)))
    assert (options.host, options.port, options.request_timeout_s) == ("127.0.0.1", 8123, 90)
    with pytest.raises(ConfigError, match="--http-timeout-s: must be above --request-timeout-s"):
        _limits("--request-timeout-s", "120")
