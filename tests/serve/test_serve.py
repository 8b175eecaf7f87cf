"""The server on loopback: the official openai client, task endpoints, limits, and concurrency."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from serve.launch import start_server, stop_server
from tests.serve.conftest import API_KEY, greedy, model_id, post
from trainables import models
from trainables.methods import METHODS, trained_methods
from trainables.tasks import generation_budget, get_task

pytestmark = pytest.mark.slow
ADAPTERS = ["qg-lora-test", "qg-ia3-test", "qg-prompt-tuning-test"]
PROMPTS = [f"Question {n}: what is the weather like in town number {n}?" for n in range(12)]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _complete(client: openai.OpenAI, model: str, prompt: str, max_tokens: int = 12) -> str:
    return (
        client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
        .choices[0]
        .text
    )


def _trained(method: str, served_base: str, winners_dir, quantize_4bit: bool | None = None):
    """The winner as its trial reloads it for scoring (on a 4-bit base for QLoRA, unless told)."""
    spec = METHODS[method]
    on_4bit = spec.quantize_4bit if quantize_4bit is None else quantize_4bit
    return spec.load_trained(served_base, winners_dir / method, on_4bit)


def test_openai_client_lists_models_and_completes(server):
    client = _client(server)
    ids = {model.id for model in client.models.list()}
    assert ids == {"base", *map(model_id, trained_methods())}
    completion = client.completions.create(model="qg-lora-test", prompt="Hello", max_tokens=5)
    assert (
        completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens <= 5
    )
    chat = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert chat.choices[0].message.role == "assistant"


def test_every_method_serves_and_each_winner_answers_with_its_own_weights(server):
    client = _client(server)
    answers = {
        model: _complete(client, model, PROMPTS[0]) for model in ["base", *map(model_id, trained_methods())]
    }
    assert len(set(answers.values())) == len(answers), answers


def test_generation_stops_at_a_stop_string_and_counts_only_the_tokens_returned(server):
    client = _client(server)

    def complete(**options):
        return client.completions.create(model="qg-lora-test", prompt=PROMPTS[1], temperature=0, **options)

    whole = complete(max_tokens=32)
    assert whole.choices[0].finish_reason == "length"  # no EOS: only the stop string can end it early
    stop = whole.choices[0].text[12:14]
    returned = whole.choices[0].text[: whole.choices[0].text.index(stop)]
    stopped = complete(max_tokens=32, stop=[stop])
    assert stopped.choices[0].text == returned and stopped.choices[0].finish_reason == "stop"
    # Exactly the tokens that produced the returned text are counted: one fewer falls short of it.
    counted = stopped.usage.completion_tokens
    assert complete(max_tokens=counted).choices[0].text.startswith(returned)
    assert len(complete(max_tokens=counted - 1).choices[0].text) < len(returned)


def test_seeded_sampling_repeats_and_differs_fromgreedy(server):
    client = _client(server)

    def sample(seed: int) -> str:
        return (
            client.completions.create(
                model="qg-lora-test", prompt=PROMPTS[1], max_tokens=12, temperature=1.5, seed=seed
            )
            .choices[0]
            .text
        )

    samples = [sample(seed) for seed in (1, 2, 3)]
    assert sample(1) == samples[0]
    assert _complete(client, "qg-lora-test", PROMPTS[1]) not in samples


def test_task_endpoint_answers_as_scored_within_the_max_tokens_cap(server, served_base, winners_dir):
    """The task's prompt, greedy on the default winner's own 4-bit base, cut at --max-tokens (64)."""
    body = {"history": "The user is planning a trip to Lisbon.", "question": "Is it safe?"}
    first_status, first = post(server, "/v1/tasks/qg", body)
    _, again = post(server, "/v1/tasks/qg", body)
    assert first_status == 200 and first["model"] == "qg-qlora-test"  # the first (best) winner by default
    assert first == again | {"latency_s": first["latency_s"]} and first["latency_s"] > 0
    tokenizer = models.load_tokenizer(served_base)
    prompt, model = get_task("qg").format_prompt(body), _trained("qlora", served_base, winners_dir)
    capped = greedy(model, tokenizer, prompt, 64)
    budget = generation_budget("qg", tokenizer)
    assert budget > 64 and greedy(model, tokenizer, prompt, budget) != capped  # the cap is what ends it
    assert first["output"] == capped and first["result"] == get_task("qg").parse(capped)
    assert first["usage"]["completion_tokens"] == 64
    status, other = post(server, "/v1/tasks/qg", body | {"model": "qg-ia3-test"})
    assert status == 200 and other["model"] == "qg-ia3-test" and other["output"] != first["output"]


def test_qlora_winner_answers_as_on_the_4bit_base_it_was_trained_on(server, served_base, winners_dir):
    """Other winners need the full-precision base; the QLoRA one still runs on its own 4-bit base."""
    tokenizer = models.load_tokenizer(served_base)
    on_4bit, on_full = (_trained("qlora", served_base, winners_dir, quantized) for quantized in (True, False))
    # Prompts on which the two bases answer differently, so serving on the wrong one shows.
    answers = {
        prompt: [greedy(model, tokenizer, prompt, 32) for model in (on_4bit, on_full)] for prompt in PROMPTS
    }
    telling = {prompt: quantized for prompt, (quantized, full) in answers.items() if quantized != full}
    assert telling, "no prompt tells the 4-bit base from the full-precision one"
    client = _client(server)
    assert {prompt: _complete(client, "qg-qlora-test", prompt, 32) for prompt in telling} == telling


def test_served_answers_equal_plain_generate_after_type_switches_and_reloads(
    server, served_base, winners_dir
):
    """Each winner in turn, twice: every request switches adapter type or base, and in the second
    round every winner has been evicted (the server holds 4 of them) and is loaded again."""
    tokenizer = models.load_tokenizer(served_base)
    prompt = PROMPTS[3]
    expected = {
        model_id(method): greedy(_trained(method, served_base, winners_dir), tokenizer, prompt, 32)
        for method in trained_methods()
    } | {"base": greedy(models.load_model(served_base), tokenizer, prompt, 32)}
    client = _client(server)
    rounds = [{model: _complete(client, model, prompt, 32) for model in expected} for _ in range(2)]
    for answers in rounds:  # (served, expected) of each model that differs
        assert {
            model: (answers[model], want) for model, want in expected.items() if answers[model] != want
        } == {}


def test_full_winner_is_served_as_its_own_model(server, winners_dir):
    """The whole fine-tuned model answers, as plain from_pretrained greedy decoding would."""
    directory = winners_dir / "full"
    model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    expected = greedy(model, tokenizer, PROMPTS[2], 12)
    client = _client(server)
    assert _complete(client, "qg-full-test", PROMPTS[2]) == expected
    assert _complete(client, "base", PROMPTS[2]) != expected  # its own weights, not the base's
    listed = {entry.id: entry for entry in client.models.list()}
    assert listed["qg-full-test"].model_extra["method"] == "full"
    trip = {"history": "A trip to Oslo.", "question": "Is it cold?"}
    status, answer = post(server, "/v1/tasks/qg", trip | {"model": "qg-full-test"})
    _, on_base = post(server, "/v1/tasks/qg", trip | {"model": "base"})
    assert status == 200 and answer["model"] == "qg-full-test" and answer["output"] != on_base["output"]


@pytest.mark.parametrize(
    ("path", "body", "key", "status"),
    [
        ("/v1/completions", {"model": "base", "prompt": "x " * 400}, API_KEY, 413),
        ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 65}, API_KEY, 400),
        (
            "/v1/completions",
            {"model": "base", "prompt": "hi", "max_tokens": 4, "min_tokens": 5},
            API_KEY,
            400,
        ),
        ("/v1/completions", b'{"model": "base", "prompt": ', API_KEY, 422),
        ("/v1/completions", {"model": "base", "prompt": 7, "max_tokens": "many"}, API_KEY, 422),
        ("/v1/completions", {"model": "../../etc/passwd", "prompt": "hi"}, API_KEY, 404),
        ("/v1/tasks/translation", {"text": "hi"}, API_KEY, 404),
        ("/v1/tasks/qg", {"history": "h", "question": ""}, API_KEY, 422),
        ("/v1/tasks/qg", {"history": "h", "question": "q?", "path": "/etc"}, API_KEY, 422),
        ("/v1/completions", {"model": "base", "prompt": "\ud800"}, API_KEY, 400),  # a lone surrogate
        ("/v1/completions", {"model": "base", "prompt": "hi", "stop": ["\udfff"]}, API_KEY, 400),
        ("/v1/completions", {"model": "base", "prompt": "hi", "seed": 2**64}, API_KEY, 422),
        ("/v1/completions", {"model": "base", "prompt": "hi"}, None, 401),
        ("/v1/completions", {"model": "base", "prompt": "hi"}, "wrong", 401),
    ],
)
def test_bad_requests_get_their_status_and_the_server_stays_up(server, path, body, key, status):
    got, answer = post(server, path, body, key)
    assert (
        got == status
        and answer["error"]["message"]
        and set(answer["error"]) == {"message", "type", "param", "code"}
    )
    good, completion = post(
        server, "/v1/completions", {"model": "qg-lora-test", "prompt": "hi", "max_tokens": 2}
    )
    assert good == 200 and completion["usage"]["completion_tokens"] == 2


def test_the_bearer_scheme_is_matched_whatever_its_case(server):
    body = json.dumps({"model": "qg-lora-test", "prompt": "hi", "max_tokens": 2}).encode()
    for scheme in ("bearer", "BEARER"):
        headers = {"content-type": "application/json", "authorization": f"{scheme} {API_KEY}"}
        request = urllib.request.Request(
            server + "/v1/completions", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200 and json.loads(response.read())["usage"]["completion_tokens"] == 2


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
        "--max-tokens", "900", "--cpus-per-replica", "1", "--max-gateway-requests", "4",
    )  # fmt: skip
    try:
        slow = {"model": "base", "prompt": "hi", "max_tokens": 900}
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: post(url, "/v1/completions", slow, None), range(8)))
        statuses = sorted(status for status, _ in answers)
        assert 503 in statuses and 504 in statuses and set(statuses) <= {200, 503, 504}
        # Refused by the gateway (its slots) or by the replicas' queue, or timed out: OpenAI's shape.
        refusals = [body["error"] for status, body in answers if status != 200]
        assert all(error["message"] and error["type"] for error in refusals)
        for _ in range(60):  # the timed-out generations finish in the background first
            status, _ = post(url, "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2}, None)
            if status == 200:
                break
        assert status == 200
    finally:
        stop_server(process)
