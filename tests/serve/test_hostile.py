"""A default server (`python -m serve.run DIR`, no options) under hostile clients: the ports its
Ray opens, a fuzz of its HTTP API from its own OpenAPI schema, and a barrage of hostile requests
beside a normal one."""

import http.client
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import psutil
import pytest

from serve.launch import start_server, stop_server

# One test process for the module, so that its server starts once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile-server")]

PROMPT = "Question 1: what is the weather like in town number 1?"
MODELS = ["base", "qg-lora-test", "qg-prompt-tuning-test", "qg-full-test"]
NORMAL = {"model": "qg-lora-test", "prompt": PROMPT, "max_tokens": 48, "temperature": 0}

# Listening sockets of the server's processes that Ray binds beyond loopback whatever it is told,
# by the start of their process's name, with the reason (docs/security.md). Every other port is on
# loopback: serve.run puts the Ray it starts on a loopback node.
BEYOND_LOOPBACK_BY_NECESSITY = {
    # Ray Serve starts each replica's inter-deployment gRPC server on [::]:0, all interfaces,
    # whatever the node's address (ray/serve/_private/replica.py, Ray 2.60); Ray's token
    # authentication (on by default) guards it. One a replica: the gateway's and the model's.
    "ray::ServeReplica:": "Ray Serve's inter-deployment gRPC server, hard-coded on [::]:0",
}


@pytest.fixture(scope="module")
def default_server(winners_dir):
    process, url = start_server(winners_dir)
    yield process, url
    stop_server(process)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, on a dual-stack socket
    return (mapped or ip).is_loopback


def _listening(process) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of the server's process tree."""
    root = psutil.Process(process.pid)
    sockets = []
    for member in [root, *root.children(recursive=True)]:
        try:
            connections, name = member.net_connections(kind="tcp"), member.name()
        except psutil.NoSuchProcess:
            continue
        sockets += [(c.laddr.ip, c.laddr.port, name) for c in connections if c.status == psutil.CONN_LISTEN]
    return sockets


def test_every_port_of_a_default_server_and_its_ray_is_on_loopback(default_server):
    process, url = default_server
    assert _post(url, NORMAL)[0] == 200  # every replica is up, its servers started
    sockets = _listening(process)
    names = {name for _, _, name in sockets}
    # Ray's own servers are there: the GCS, the raylet, and the proxy on the server's port.
    assert {"gcs_server", "raylet"} <= names, sockets
    assert ("127.0.0.1", urlsplit(url).port) in {(ip, port) for ip, port, _ in sockets}
    beyond = [s for s in sockets if not _is_loopback(s[0])]
    unexplained = [s for s in beyond if not s[2].startswith(tuple(BEYOND_LOOPBACK_BY_NECESSITY))]
    print(f"{len(sockets)} listening sockets, {len(beyond)} beyond loopback: {beyond}")
    assert unexplained == []
    # No more than Ray's one such server a replica (the gateway and one model replica).
    assert len(beyond) <= 2


def _is_openai_error(body) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
    )


def test_fuzzing_the_api_from_its_openapi_schema_finds_no_5xx_and_only_openai_errors(default_server):
    """Every operation of the server's own /openapi.json, with valid and invalid data: no 5xx, and
    every 4xx in OpenAI's error shape. Bounded: 30 examples an operation, a minute in all."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase

    _, url = default_server
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as response:
        schema = schemathesis.openapi.from_dict(json.loads(response.read()))
    deadline = time.monotonic() + 60
    sent, problems = [], []

    def fuzz(operation, mode) -> None:
        @hypothesis.given(operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=15, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def one(case):
            if time.monotonic() > deadline:
                return
            if isinstance(case.body, dict) and len(sent) % 2:
                # Every other request names a served model, so that it gets past the model check
                # to tokenizing and decoding, where random names would stop it.
                case.body["model"] = MODELS[len(sent) // 2 % len(MODELS)]
            response = case.call(base_url=url, timeout=60)
            sent.append(response.status_code)
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code >= 500 or (response.status_code >= 400 and not _is_openai_error(body)):
                problems.append((operation.label, response.status_code, response.text[:300], case.body))

        try:
            one()
        except hypothesis.errors.Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to make invalid (GET /healthz)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {"POST /v1/completions", "POST /v1/tasks/{task}"}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    server_errors = sum(status >= 500 for status in sent)
    print(f"fuzz: {len(sent)} requests over {len(operations)} operations, {server_errors} 5xx")
    assert len(sent) >= 5 * len(operations) and problems == []


def _post(url: str, body, timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions", data=data, headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _huge_upload(url: str, size: int, declared: bool) -> tuple[int, dict]:
    """A body of `size` bytes, its length declared (Content-Length) or not (chunked). A reader
    takes the answer as soon as it comes: the server answers before the upload ends."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("content-type", "application/json")
    connection.putheader(
        "content-length" if declared else "transfer-encoding", str(size) if declared else "chunked"
    )
    connection.endheaders()
    answer = {}

    def read():
        try:
            response = connection.getresponse()
            answer["status"], answer["body"] = response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as error:
            answer["error"] = error

    reader = threading.Thread(target=read)
    reader.start()
    chunk = b'{"model": "base", "prompt": "' + b"x" * (1 << 20)
    try:
        for _ in range(size // len(chunk)):
            if "status" in answer or "error" in answer:
                break
            connection.send(chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        pass  # refused mid-upload: the server closed the connection
    reader.join(60)
    connection.close()
    assert "status" in answer, f"no answer to a {size}-byte upload: {answer.get('error')!r}"
    return answer["status"], answer["body"]


def test_hostile_requests_beside_a_normal_one_get_4xx_and_leave_it_and_healthz_untouched(default_server):
    """Each hostile request gets its 4xx in OpenAI's shape; the normal request sent beside them
    answers as it does alone, and /healthz, polled throughout, answers within 2 s."""
    _, url = default_server
    alone = _post(url, NORMAL)
    assert alone[0] == 200
    message = {"role": "user", "content": "hi"}
    completions, chat = "/v1/completions", "/v1/chat/completions"
    hostile = {  # name: (path, body, the status it gets)
        "seed out of range": (completions, {**NORMAL, "temperature": 1.0, "seed": 2**64}, 422),
        "negative seed": (completions, {**NORMAL, "temperature": 1.0, "seed": -1}, 422),
        "lone surrogate in the prompt": (completions, {**NORMAL, "prompt": "hi \ud800"}, 400),
        "lone surrogate in a stop string": (completions, {**NORMAL, "stop": ["\udfff"]}, 400),
        "huge stop list": (completions, {**NORMAL, "stop": ["a"] * 20_000}, 422),
        "huge stop string": (completions, {**NORMAL, "stop": ["a" * 100_000]}, 422),
        "huge message list": (chat, {"model": "base", "messages": [message] * 20_000}, 422),
        "messages beyond the count": (chat, {"model": "base", "messages": [message] * 300}, 422),
        "prompt beyond what its tokens can hold": (completions, {**NORMAL, "prompt": "x" * 70_000}, 413),
        "path as model": (completions, {**NORMAL, "model": "../../../../etc/passwd"}, 404),
        "absolute path as model": (completions, {**NORMAL, "model": "/etc/passwd"}, 404),
        "file as a task's model": (
            "/v1/tasks/qg",
            {"model": "./winners.json", "history": "h", "question": "q"},
            404,
        ),
        "path as a task": ("/v1/tasks/..%2F..%2Fetc", {"history": "h", "question": "q"}, 404),
    }
    uploads = {"30 MB body, declared": True, "30 MB body, chunked": False}  # both 413
    health, stop = [], threading.Event()

    def poll_health():
        while not stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    health.append((response.status, time.monotonic() - started))
            except OSError as error:
                health.append((repr(error), time.monotonic() - started))
            time.sleep(0.1)

    def send(name: str) -> tuple[str, int, dict]:
        if name in uploads:
            return (name, *_huge_upload(url, 30 << 20, uploads[name]))
        path, body, _ = hostile[name]
        request = urllib.request.Request(
            url + path,
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return name, response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return name, error.code, json.loads(error.read())

    poller = threading.Thread(target=poll_health)
    poller.start()
    rounds = 3
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            normal = [pool.submit(_post, url, NORMAL) for _ in range(rounds)]
            answers = list(pool.map(send, [*hostile, *uploads] * rounds))
            normal_answers = [future.result() for future in normal]
    finally:
        stop.set()
        poller.join()
    server_errors = sum(status >= 500 for _, status, _ in answers)
    slowest = max((seconds for _, seconds in health), default=0.0)
    print(
        f"hostile: {len(answers)} requests sent, {server_errors} 5xx "
        f"(statuses {dict(Counter(status for _, status, _ in answers))}); "
        f"/healthz polled {len(health)} times, slowest {slowest:.2f} s"
    )
    expected = {name: status for name, (_, _, status) in hostile.items()} | dict.fromkeys(uploads, 413)
    wrong = [
        (name, status, body)
        for name, status, body in answers
        if status != expected[name] or not _is_openai_error(body)
    ]
    assert wrong == []
    assert [(status, body["choices"][0]["text"]) for status, body in normal_answers] == [
        (200, alone[1]["choices"][0]["text"])
    ] * rounds
    assert health and all(status == 200 and seconds < 2 for status, seconds in health), health
