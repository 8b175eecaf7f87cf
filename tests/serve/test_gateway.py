"""The gateway's HTTP app in this process, driven through ASGI, with stand-in model replicas: what it
refuses, and how, before any request reaches a model."""

import asyncio
import dataclasses
import json

from serve.adapters import Registry
from serve.app import Gateway
from serve.engine import Completion
from serve.limits import Limits
from serve.metrics import ReplicaLoad, Served


class _Replicas:
    """Stands in for the model replicas' handle: each request waits until `release` is set."""

    def __init__(self):
        self.release: asyncio.Event | None = None
        self.received = 0

    def options(self, **_):
        return self

    @property
    def complete(self):
        return self

    def remote(self, request, base_model, adapter):
        self.received += 1

        async def answer():
            await self.release.wait()
            return Served(Completion("fine", 3, 1, "stop"), 0.0, ReplicaLoad("stand-in", 0, 1, 16))

        return asyncio.ensure_future(answer())


def _gateway(served_base: str, **limits):
    """The gateway (the class Ray Serve wraps) and its HTTP app."""
    gateway = Gateway.func_or_class.__wrapped__(
        _Replicas(), Registry({}, {"base": served_base}), Limits(**limits), None
    )
    return gateway, gateway.__serve_build_asgi_app__()


async def _call(app, path: str, body: dict | list[bytes] | None = None) -> tuple[int, dict]:
    """A GET (no body) or POST of a JSON body, or of the chunks of a body of undeclared length."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
    if isinstance(body, list):
        chunks = body
    else:
        chunks = [json.dumps(body).encode() if body is not None else b""]
        headers.append((b"content-length", str(len(chunks[0])).encode()))
    messages = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": "POST" if body is not None else "GET", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": headers, "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def _openai_error(body: dict) -> bool:
    return isinstance(body.get("error"), dict) and {"message", "type"} <= set(body["error"])


def test_a_prompt_longer_than_its_tokens_can_be_is_refused_before_it_is_tokenized(served_base):
    """A prompt, or a chat's messages together, of more characters than max_prompt_tokens tokens can
    hold is refused without tokenizing it; one just within the bound is tokenized and counted."""
    gateway, app = _gateway(served_base, max_prompt_tokens=100)
    text = gateway.bases[served_base]
    assert text.max_prompt_chars == 100 * 64  # the tiny tokenizer's longest token: 8 characters
    tokenized = []
    counting = lambda prompt: tokenized.append(len(prompt)) or text.tokenizer(prompt)  # noqa: E731
    gateway.bases[served_base] = dataclasses.replace(text, tokenizer=counting)
    long = "x" * (text.max_prompt_chars + 1)
    chat = [{"role": "user", "content": "x" * 4000}] * 2  # 8002 characters with their newlines

    async def calls():
        return [
            await _call(app, "/v1/completions", {"model": "base", "prompt": long}),
            await _call(app, "/v1/chat/completions", {"model": "base", "messages": chat}),
            await _call(app, "/v1/completions", {"model": "base", "prompt": long[:-1]}),
        ]

    (status, body), (chat_status, chat_body), (within, counted) = asyncio.run(calls())
    assert status == chat_status == 413 and _openai_error(body) and _openai_error(chat_body)
    assert (
        "6401 characters" in body["error"]["message"] and "8002 characters" in chat_body["error"]["message"]
    )
    assert within == 413 and "tokens; the limit is 100" in counted["error"]["message"]
    assert tokenized == [6400]  # only the prompt within the bound was tokenized


def test_requests_beyond_the_gateway_s_slots_get_a_503_in_openai_s_shape(served_base):
    """With every slot held by a request waiting for a replica, the next gets a 503 at once, in
    OpenAI's shape, while /healthz still answers; once they are answered, requests get in again."""
    gateway, app = _gateway(served_base, max_gateway_requests=3)
    request = {"model": "base", "prompt": "hi", "max_tokens": 2}

    async def calls():
        gateway.server.release = asyncio.Event()
        holding = [asyncio.ensure_future(_call(app, "/v1/completions", request)) for _ in range(3)]
        while gateway.server.received < 3:
            await asyncio.sleep(0.01)
        refused = [await _call(app, "/v1/completions", request) for _ in range(2)]
        health = await _call(app, "/healthz")
        gateway.server.release.set()
        held = await asyncio.gather(*holding)
        return refused, health, held, await _call(app, "/v1/completions", request)

    refused, health, held, after = asyncio.run(calls())
    assert [status for status, _ in refused] == [503, 503] and all(_openai_error(body) for _, body in refused)
    assert "--max-gateway-requests" in refused[0][1]["error"]["message"]
    assert health[0] == 200 and [status for status, _ in held] == [200] * 3 and after[0] == 200


def test_an_empty_prompt_is_refused_before_it_reaches_a_replica(served_base):
    """The tiny tokenizer puts no BOS before a prompt: an empty one has no tokens, and its prefill
    would fail in the model (the fuzz in test_hostile found it as a 500)."""
    gateway, app = _gateway(served_base)
    status, body = asyncio.run(_call(app, "/v1/completions", {"model": "base", "prompt": ""}))
    assert status == 400 and _openai_error(body) and body["error"]["param"] == "prompt"
    assert gateway.server.received == 0


def test_a_body_of_undeclared_length_over_the_limit_is_a_413_through_fastapi_s_parsing(served_base):
    """FastAPI answers an error while it reads a body with a 400 of its own: the limit's 413 must
    be what the client gets, once as much as the limit has come, and nothing after it."""
    _, app = _gateway(served_base, max_body_bytes=1000)
    chunks = [b'{"model": "base", "prompt": "' + b"x" * 600] + [b"x" * 600] * 100
    status, body = asyncio.run(_call(app, "/v1/completions", chunks))
    assert status == 413 and _openai_error(body) and "larger than 1000 bytes" in body["error"]["message"]


def test_without_an_api_key_the_admin_api_is_off(served_base, tmp_path):
    """Even with a root to add sweeps from: adding and removing adapters need the key."""
    gateway = Gateway.func_or_class.__wrapped__(
        _Replicas(), Registry({}, {"base": served_base}), Limits(), None, (tmp_path,)
    )
    app = gateway.__serve_build_asgi_app__()
    status, body = asyncio.run(_call(app, "/v1/adapters", {"sweep": str(tmp_path)}))
    assert status == 403 and _openai_error(body) and "admin API is off" in body["error"]["message"]
