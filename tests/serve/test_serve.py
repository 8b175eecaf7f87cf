"""The server on loopback: the official openai client, task endpoints, limits, and concurrency."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from serve.launch import start_server, stop_server
from tests.serve.conftest import API_KEY

pytestmark = pytest.mark.slow
ADAPTERS = ["qg-lora-test", "qg-ia3-test", "qg-prompt-tuning-test"]
PROMPTS = [f"Question {n}: what is the weather like in town number {n}?" for n in range(12)]


def _post(url: str, path: str, body, key: str | None = API_KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _complete(client: openai.OpenAI, model: str, prompt: str) -> str:
    return client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0).choices[0].text


def test_openai_client_lists_models_and_completes(server):
    client = _client(server)
    ids = {model.id for model in client.models.list()}
    assert ids == {
        "base",
        "qg-lora-test",
        "qg-qlora-test",
        "qg-adalora-test",
        "qg-ia3-test",
        "qg-prompt-tuning-test",
        "qg-full-test",
    }
    completion = client.completions.create(model="qg-lora-test", prompt="Hello", max_tokens=5)
    assert (
        completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens <= 5
    )
    chat = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert chat.choices[0].message.role == "assistant"


def test_every_method_serves_and_adapters_differ_from_the_base(server):
    client = _client(server)
    answers = {
        model: _complete(client, model, PROMPTS[0])
        for model in ["base", *ADAPTERS, "qg-qlora-test", "qg-adalora-test", "qg-full-test"]
    }
    assert len(set(answers.values())) > 1


def test_stop_sequences_and_sampling(server):
    client = _client(server)
    greedy = _complete(client, "base", PROMPTS[1])
    if len(greedy) > 2:
        stopped = client.completions.create(
            model="base", prompt=PROMPTS[1], max_tokens=12, stop=[greedy[2:4]]
        )
        assert stopped.choices[0].text == greedy[: greedy.index(greedy[2:4])]
    sampled = client.completions.create(
        model="qg-lora-test", prompt=PROMPTS[1], max_tokens=8, temperature=1.0, seed=1
    )
    assert sampled.choices[0].text is not None


def test_task_endpoint_returns_queries_deterministically(server):
    body = {"history": "The user is planning a trip to Lisbon.", "question": "Is it safe?"}
    first_status, first = _post(server, "/v1/tasks/qg", body)
    _, again = _post(server, "/v1/tasks/qg", body)
    assert first_status == 200 and first["model"] == "qg-qlora-test"  # the first (best) winner by default
    assert isinstance(first["result"], list) and first["result"] == again["result"] and first["latency_s"] > 0
    assert first["usage"]["completion_tokens"] <= 64  # the server's --max-tokens caps qg's longer budget
    status, other = _post(server, "/v1/tasks/qg", body | {"model": "qg-ia3-test"})
    assert status == 200 and other["model"] == "qg-ia3-test"


def test_full_winner_is_served_as_its_own_model(server, winners_dir):
    """The whole fine-tuned model answers, as plain from_pretrained greedy decoding would."""
    directory = winners_dir / "full"
    model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    inputs = tokenizer(PROMPTS[2], return_tensors="pt")
    output = model.generate(
        **inputs, max_new_tokens=12, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )[0, inputs["input_ids"].shape[1] :].tolist()  # fmt: skip
    if tokenizer.eos_token_id in output:
        output = output[: output.index(tokenizer.eos_token_id)]
    expected = tokenizer.decode(output, skip_special_tokens=True)
    client = _client(server)
    assert _complete(client, "qg-full-test", PROMPTS[2]) == expected
    assert _complete(client, "base", PROMPTS[2]) != expected  # its own weights, not the base's
    listed = {entry.id: entry for entry in client.models.list()}
    assert listed["qg-full-test"].model_extra["method"] == "full"
    status, answer = _post(
        server,
        "/v1/tasks/qg",
        {"history": "A trip to Oslo.", "question": "Is it cold?", "model": "qg-full-test"},
    )
    assert status == 200 and answer["model"] == "qg-full-test" and answer["output"] is not None


@pytest.mark.parametrize(
    ("path", "body", "key", "status"),
    [
        ("/v1/completions", {"model": "base", "prompt": "x " * 400}, API_KEY, 413),
        ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 65}, API_KEY, 400),
        ("/v1/completions", b'{"model": "base", "prompt": ', API_KEY, 422),
        ("/v1/completions", {"model": "base", "prompt": 7, "max_tokens": "many"}, API_KEY, 422),
        ("/v1/completions", {"model": "../../etc/passwd", "prompt": "hi"}, API_KEY, 404),
        ("/v1/tasks/translation", {"text": "hi"}, API_KEY, 404),
        ("/v1/tasks/qg", {"history": "h", "question": ""}, API_KEY, 422),
        ("/v1/tasks/qg", {"history": "h", "question": "q?", "path": "/etc"}, API_KEY, 422),
        ("/v1/completions", {"model": "base", "prompt": "hi"}, None, 401),
        ("/v1/completions", {"model": "base", "prompt": "hi"}, "wrong", 401),
    ],
)
def test_bad_requests_get_their_status_and_the_server_stays_up(server, path, body, key, status):
    got, answer = _post(server, path, body, key)
    assert got == status and answer["error"]["message"]
    good, completion = _post(
        server, "/v1/completions", {"model": "qg-lora-test", "prompt": "hi", "max_tokens": 2}
    )
    assert good == 200 and completion["choices"][0]["text"] is not None


def test_concurrent_clients_get_the_one_at_a_time_answers(server):
    client = _client(server)
    work = [(ADAPTERS[n % 3], PROMPTS[n % len(PROMPTS)]) for n in range(240)]
    alone = {pair: _complete(client, *pair) for pair in set(work)}
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda pair: _complete(client, *pair), work))
    assert together == [alone[pair] for pair in work]


def test_full_queue_and_timeouts_are_clean_errors(winners_dir):
    process, url = start_server(
        # 900 tokens take the tiny model about a second on a quiet machine: a timeout well under
        # that makes the second admitted request time out however fast the machine is.
        winners_dir, "--max-batch-size", "1", "--max-queued-requests", "1", "--request-timeout-s", "0.5",
        "--max-tokens", "900",
    )  # fmt: skip
    try:
        slow = {"model": "base", "prompt": "hi", "max_tokens": 900}
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = sorted(
                status
                for status, _ in pool.map(lambda _: _post(url, "/v1/completions", slow, None), range(8))
            )
        assert 503 in statuses and 504 in statuses and set(statuses) <= {200, 503, 504}
        for _ in range(60):  # the timed-out generations finish in the background first
            status, _ = _post(
                url, "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2}, None
            )
            if status == 200:
                break
        assert status == 200
    finally:
        stop_server(process)
