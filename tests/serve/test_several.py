"""Several sweeps in one server, chosen trials, adapters added and removed while it serves, and
what it counts: real servers on loopback, the tiny model, real HTTP."""

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from serve import run
from serve.adapters import Choice, load_registry
from serve.launch import free_port, start_server, stop_server
from tests.serve.conftest import API_KEY, _adapter, greedy, post, scaled_copy
from trainables import models
from trainables.methods import METHODS

pytestmark = pytest.mark.slow
PROMPT = "Question 7: what is the weather like in town number 7?"
LONG_TOKENS = 900  # about a second of decoding on the tiny model: long enough to act while it runs
SERVER_OPTIONS = ("--cpus-per-replica", "1", "--max-tokens", str(LONG_TOKENS), "--max-prompt-tokens", "300")
TASK_BODIES = {
    "qg": [
        {"history": "The user is planning a trip to Lisbon.", "question": "Is it safe?"},
        {"history": "They talked about trains.", "question": "How fast are they?"},
    ],
    "ner": [{"text": "Ada Lovelace worked with Charles Babbage in London."}, {"text": "Paris is in France."}],
}
# The qg sweep's trials: which are winners, which failed or kept nothing (winners_dir's adapters).
TRIAL_IDS = {"lora": "a0001_00000", "ia3": "a0001_00001", "dora": "a0001_00002", "vera": "a0001_00003"}


def _winner(adapter_id: str, task: str, method: str, base: str, path: Path, quality: float) -> dict:
    return {"id": adapter_id, "task": task, "method": method, "base_model": base,
            "quantize_4bit": False, "adapter_path": str(path), "validation": {"quality": quality}}  # fmt: skip


def _trial(method: str, base: str, winners_dir: Path, status: str, pareto: bool, kept: bool) -> dict:
    return {
        "trial_id": TRIAL_IDS[method], "id": f"qg-{method}-test", "task": "qg", "method": method,
        "base_model": base, "quantize_4bit": False, "status": status, "pareto": pareto,
        "adapter_path": str(winners_dir / method) if kept else None, "validation_quality": 0.3,
    }  # fmt: skip


def _write(directory: Path, winners: list[dict], trials: list[dict] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "winners.json").write_text(json.dumps({"winners": winners, "trials": trials}))
    return directory


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The one directory the admin API may read sweeps from (--adapter-root)."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def other_base(served_base, tmp_path_factory) -> str:
    """Another base model: served_base with its attention outputs scaled down again, so that it
    answers otherwise."""
    return scaled_copy(served_base, ("o_proj.weight",), 0.25, tmp_path_factory.mktemp("other-base"))


@pytest.fixture(scope="module")
def sweeps(served_base, other_base, winners_dir, root) -> dict[str, Path]:
    """A qg sweep (its LoRA the winner; IA3 a trial off the front; DoRA failed; VeRA kept nothing),
    an NER sweep, a QA sweep on another base, and a sweep to add while serving."""
    lora = _winner("qg-lora-test", "qg", "lora", served_base, winners_dir / "lora", 0.5)
    qg = _write(root / "qg", [lora], [
        _trial("lora", served_base, winners_dir, "completed", pareto=True, kept=True),
        _trial("ia3", served_base, winners_dir, "completed", pareto=False, kept=True),
        _trial("dora", served_base, winners_dir, "failed", pareto=False, kept=True),
        _trial("vera", served_base, winners_dir, "stopped_early", pareto=True, kept=False),
    ])  # fmt: skip
    _adapter(served_base, "lora", root / "ner" / "lora", task="ner", seed=101)
    ner = _write(root / "ner", [_winner("ner-lora-test", "ner", "lora", served_base, Path("lora"), 0.4)])
    _adapter(other_base, "lora", root / "qa" / "lora", task="qa", seed=303)
    qa = _write(root / "qa", [_winner("qa-lora-other", "qa", "lora", other_base, Path("lora"), 0.7)])
    _adapter(served_base, "lora", root / "added" / "lora", seed=202)
    added = _write(root / "added", [_winner("qg-added-lora", "qg", "lora", served_base, Path("lora"), 0.6)])
    return {"qg": qg, "ner": ner, "qa": qa, "added": added}


@dataclass(frozen=True)
class Server:
    url: str
    metrics_port: int


@pytest.fixture(scope="module")
def several(sweeps, root):
    """The qg, NER and QA sweeps in one server, with the admin API on (a key, an allowed root)."""
    metrics_port = free_port()
    process, url = start_server(
        sweeps["qg"], sweeps["ner"], sweeps["qa"], "--api-key", API_KEY, "--adapter-root", str(root),
        "--metrics-port", str(metrics_port), *SERVER_OPTIONS,
    )  # fmt: skip
    yield Server(url, metrics_port)
    stop_server(process)


def _get(url: str, path: str) -> dict:
    request = urllib.request.Request(url + path, headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _delete(url: str, path: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + path, headers={"authorization": f"Bearer {API_KEY}"}, method="DELETE"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _model_ids(url: str) -> list[str]:
    return [entry["id"] for entry in _get(url, "/v1/models")["data"]]


def _until(condition, what: str, deadline_s: float = 60.0, every_s: float = 0.01):
    """Polls `condition` every `every_s` until it returns something true; fails naming `what` past
    the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every_s)
    raise AssertionError(f"not within {deadline_s:g} s: {what}")


def _completion(model: str, max_tokens: int, prompt: str = PROMPT) -> dict:
    # min_tokens: a fixed length, however soon the model would end it
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens}


def _tasks(url: str, key: str | None, tasks=tuple(TASK_BODIES)) -> dict[str, list[dict]]:
    """Each task's answers (but their latency) to TASK_BODIES."""
    answers = {}
    for task in tasks:
        replies = [post(url, f"/v1/tasks/{task}", body, key) for body in TASK_BODIES[task]]
        assert all(status == 200 for status, _ in replies), replies
        answers[task] = [{k: v for k, v in reply.items() if k != "latency_s"} for _, reply in replies]
    return answers


def test_two_sweeps_on_one_base_answer_their_tasks_exactly_as_each_served_alone(several, sweeps):
    together = _tasks(several.url, API_KEY)
    parents = {entry["id"]: entry.get("parent") for entry in _get(several.url, "/v1/models")["data"]}
    assert parents["qg-lora-test"] == parents["ner-lora-test"] == "base"  # one base
    assert {answer["model"] for answer in together["qg"]} == {"qg-lora-test"}  # the task's best winner
    assert {answer["model"] for answer in together["ner"]} == {"ner-lora-test"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        started = list(pool.map(lambda task: start_server(sweeps[task], *SERVER_OPTIONS), ["qg", "ner"]))
    try:
        alone = {
            task: _tasks(url, None, [task])[task]
            for task, (_, url) in zip(["qg", "ner"], started, strict=True)
        }
    finally:
        for process, _ in started:
            stop_server(process)
    assert together == alone


def test_a_sweep_on_another_base_is_served_beside_on_a_base_of_its_own(
    several, sweeps, served_base, other_base
):
    listed = {entry["id"]: entry for entry in _get(several.url, "/v1/models")["data"]}
    assert [model for model in listed if model.startswith("base")] == ["base", "base-2"]
    assert listed["base-2"]["base_model"] == other_base and listed["qa-lora-other"]["parent"] == "base-2"
    tokenizer = models.load_tokenizer(other_base)
    adapter = sweeps["qa"] / "lora"
    expected = {
        "qa-lora-other": greedy(
            METHODS["lora"].load_trained(other_base, adapter, False), tokenizer, PROMPT, 16
        ),
        "base-2": greedy(models.load_model(other_base), tokenizer, PROMPT, 16),
        "base": greedy(models.load_model(served_base), tokenizer, PROMPT, 16),
    }
    on_the_first = greedy(METHODS["lora"].load_trained(served_base, adapter, False), tokenizer, PROMPT, 16)
    assert len({*expected.values(), on_the_first}) == 4  # each base and adapter answers otherwise
    served = {
        model: post(several.url, "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": 16})[1]
        for model in expected
    }
    assert {model: body["choices"][0]["text"] for model, body in served.items()} == expected
    status, answer = post(several.url, "/v1/tasks/qa", {"question": "What is the capital of France?"})
    assert status == 200 and answer["model"] == "qa-lora-other"


def test_trials_serves_a_non_winner_whose_answers_equal_plain_peft(sweeps, served_base, winners_dir):
    process, url = start_server(sweeps["qg"], "--trials", TRIAL_IDS["ia3"], "--cpus-per-replica", "1")
    try:
        assert _model_ids(url) == ["base", "qg-ia3-test"]  # the trial, not the sweep's winner
        served = [post(url, "/v1/completions", {"model": "qg-ia3-test", "prompt": p, "max_tokens": 24}, None)
                  for p in (PROMPT, "Is it safe to travel?")]  # fmt: skip
    finally:
        stop_server(process)
    model = METHODS["ia3"].load_trained(served_base, winners_dir / "ia3", False)
    tokenizer = models.load_tokenizer(served_base)
    expected = [greedy(model, tokenizer, p, 24) for p in (PROMPT, "Is it safe to travel?")]
    assert [(status, body["choices"][0]["text"]) for status, body in served] == [(200, e) for e in expected]
    assert greedy(models.load_model(served_base), tokenizer, PROMPT, 24) != expected[0]  # not the base's


@pytest.mark.parametrize(
    ("trial", "refusal"),
    [
        (TRIAL_IDS["dora"], f"trial {TRIAL_IDS['dora']} (qg-dora-test) failed; nothing to serve"),
        ("qg-vera-test", f"trial {TRIAL_IDS['vera']} (qg-vera-test) kept no checkpoint to serve"),
        ("a0001_00009", "trial 'a0001_00009' is not in"),
    ],
)
def test_a_failed_trial_or_one_without_a_checkpoint_is_refused_before_anything_loads(
    sweeps, trial, refusal, capsys
):
    assert run.main([str(sweeps["qg"]), "--trials", f"{TRIAL_IDS['lora']},{trial}"]) == 2
    error = capsys.readouterr().err
    assert refusal in error and error.startswith("error: ") and error.count("\n") == 1
    assert not ray.is_initialized()  # refused before Ray, and so before any model, started


def test_pareto_serves_the_front_and_an_id_in_two_sweeps_is_refused_naming_both(sweeps, tmp_path, capsys):
    assert list(load_registry([sweeps["qg"]], Choice(pareto=True)).adapters) == ["qg-lora-test"]
    copy = tmp_path / "qg-again"
    shutil.copytree(sweeps["qg"], copy)
    assert run.main([str(sweeps["qg"]), str(copy)]) == 2
    error = capsys.readouterr().err
    assert f"both {sweeps['qg'] / 'winners.json'} and {copy / 'winners.json'}" in error
    assert error.count("\n") == 1 and not ray.is_initialized()


def test_an_adapter_root_without_an_api_key_is_refused_at_start(sweeps, root, capsys, monkeypatch):
    monkeypatch.delenv(run.API_KEY_VARIABLE, raising=False)
    assert run.main([str(sweeps["qg"]), "--adapter-root", str(root)]) == 2
    error = capsys.readouterr().err
    assert "--adapter-root: the admin API that adds adapters needs an API key" in error
    assert run.main([str(sweeps["qg"]), "--adapter-root", str(root / "missing"), "--api-key", "k"]) == 2
    assert f"--adapter-root {root / 'missing'}: no such directory" in capsys.readouterr().err


def _in_flight(url: str, model: str) -> int:
    return _get(url, "/v1/stats")["models"].get(model, {}).get("in_flight", 0)


def test_an_adapter_added_answers_at_once_and_removed_is_a_404_while_running_requests_are_unharmed(
    several, sweeps, served_base
):
    url = several.url
    long_ner, long_added = (
        _completion("ner-lora-test", LONG_TOKENS),
        _completion("qg-added-lora", LONG_TOKENS),
    )
    short = {"model": "qg-added-lora", "prompt": PROMPT, "max_tokens": 24}
    plain = METHODS["lora"].load_trained(served_base, sweeps["added"] / "lora", False)
    expected = greedy(plain, models.load_tokenizer(served_base), PROMPT, 24)
    alone_ner = post(url, "/v1/completions", long_ner)
    with ThreadPoolExecutor(max_workers=4) as pool:
        running = [pool.submit(post, url, "/v1/completions", long_ner) for _ in range(4)]
        _until(lambda: _in_flight(url, "ner-lora-test") == 4, "the NER requests running")
        added = post(url, "/v1/adapters", {"sweep": "added"})  # relative: under the root
        listed = _model_ids(url)
        answer = post(url, "/v1/completions", short)
        still_running = _in_flight(url, "ner-lora-test")  # every step above happened while they ran
        finished = [future.result() for future in running]
    assert added == (200, {"added": ["qg-added-lora"]}) and "qg-added-lora" in listed
    assert answer[0] == 200 and answer[1]["choices"][0]["text"] == expected
    assert still_running == 4 and _same_text(finished, alone_ner)

    alone_added = post(url, "/v1/completions", long_added)
    with ThreadPoolExecutor(max_workers=4) as pool:
        running = [pool.submit(post, url, "/v1/completions", long_added) for _ in range(4)]
        _until(lambda: _in_flight(url, "qg-added-lora") == 4, "the added adapter's requests running")
        removed = _delete(url, "/v1/adapters/qg-added-lora")
        gone = post(url, "/v1/completions", short)
        others = post(url, "/v1/completions", {"model": "ner-lora-test", "prompt": PROMPT, "max_tokens": 4})
        listed = _model_ids(url)
        still_running = _in_flight(url, "qg-added-lora")
        finished = [future.result() for future in running]
    assert removed == (200, {"removed": "qg-added-lora"}) and still_running == 4
    assert gone[0] == 404 and "unknown model 'qg-added-lora'" in gone[1]["error"]["message"]
    assert others[0] == 200 and "qg-added-lora" not in listed and "ner-lora-test" in listed
    assert _same_text(finished, alone_added)
    assert (
        _delete(url, "/v1/adapters/qg-added-lora")[0] == 404 and _delete(url, "/v1/adapters/base")[0] == 400
    )


def _same_text(answers: list[tuple[int, dict]], alone: tuple[int, dict]) -> bool:
    """Whether every answer is a 200 with the text and token counts of the one answered alone."""
    fields = lambda body: (body["choices"][0]["text"], body["usage"])  # noqa: E731
    return all(status == 200 and fields(body) == fields(alone[1]) for status, body in answers)


def test_every_path_outside_the_allowed_roots_is_refused(several, root, served_base, winners_dir, tmp_path):
    """Outside paths, relative ones that climb out, symlinks that escape (the sweep, its
    winners.json, an adapter), adapter paths and task files that point out: 403; a folder without a valid
    winners.json, or with pickled weights only: 400. Nothing is added."""
    outside = _write(tmp_path / "outside", [_winner("qg-out", "qg", "lora", "m", winners_dir / "lora", 0.1)])
    (root / "linked-sweep").symlink_to(outside, target_is_directory=True)
    (root / "linked-file").mkdir()
    (root / "linked-file" / "winners.json").symlink_to(outside / "winners.json")
    lora = _winner("qg-escape", "qg", "lora", served_base, Path("lora"), 0.1)
    _write(root / "pointing-out", [lora | {"adapter_path": str(winners_dir / "lora")}])
    _write(root / "climbing-out", [lora | {"adapter_path": f"../../{winners_dir.name}/lora"}])
    _write(root / "linked-adapter", [lora])
    (root / "linked-adapter" / "lora").symlink_to(winners_dir / "lora", target_is_directory=True)
    _write(root / "linked-weights", [lora])
    (root / "linked-weights" / "lora").mkdir()
    shutil.copy(winners_dir / "lora" / "adapter_config.json", root / "linked-weights" / "lora")
    (root / "linked-weights" / "lora" / "adapter_model.safetensors").symlink_to(
        winners_dir / "lora" / "adapter_model.safetensors"
    )
    _write(root / "pickled", [lora])
    (root / "pickled" / "lora").mkdir()
    shutil.copy(winners_dir / "lora" / "adapter_config.json", root / "pickled" / "lora")
    (root / "pickled" / "lora" / "adapter_model.bin").write_bytes(b"not loaded")
    task_file = tmp_path / "outside-task.yaml"
    task_file.write_text("name: outside\n")
    _write(root / "outside-task", [lora | {"task": str(task_file)}])
    (root / "invalid").mkdir()
    (root / "invalid" / "winners.json").write_text('{"winners": [{"id": 3}]}')
    (root / "empty").mkdir()
    before = _model_ids(several.url)
    refused = {
        sweep: post(several.url, "/v1/adapters", {"sweep": sweep})
        for sweep in [
            str(outside), "/etc", f"../{winners_dir.name}", "../../..", "linked-sweep", "linked-file",
            "pointing-out", "climbing-out", "linked-adapter", "linked-weights", "outside-task", "pickled", "invalid",
            "empty", "no-such-sweep", "a\u0000b",
        ]
    }  # fmt: skip
    statuses = {sweep: status for sweep, (status, _) in refused.items()}
    forbidden = ["pickled", "invalid", "empty", "no-such-sweep", "a\u0000b"]
    assert statuses == {sweep: 400 if sweep in forbidden else 403 for sweep in refused}
    assert all(set(body["error"]) == {"message", "type", "param", "code"} for _, body in refused.values())
    assert "outside the allowed --adapter-root" in refused["linked-adapter"][1]["error"]["message"]
    assert "safetensors only" in refused["pickled"][1]["error"]["message"]
    assert _model_ids(several.url) == before
    # Without the key no admin call is answered.
    assert post(several.url, "/v1/adapters", {"sweep": "added"}, key=None)[0] == 401


def _prometheus(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _metric(text: str, name: str, **tags: str) -> float | None:
    """The sum of a metric's samples with these tags in Prometheus' text format (None: no sample)."""
    values = [
        float(value)
        for labels, value in re.findall(rf"^ray_{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE)
        if all(f'{key}="{wanted}"' in labels for key, wanted in tags.items())
    ]
    return sum(values) if values else None


def test_the_metrics_count_what_the_test_sent(several):
    url = several.url
    before = _get(url, "/v1/stats")["models"]
    sent = [post(url, "/v1/completions", {"model": "ner-lora-test", "prompt": PROMPT[: 10 + n], "max_tokens": 3 + n})
            for n in range(3)]  # fmt: skip
    sent.append(post(url, "/v1/tasks/ner", TASK_BODIES["ner"][0]))
    over = post(
        url, "/v1/completions", {"model": "ner-lora-test", "prompt": "hi", "max_tokens": LONG_TOKENS + 1}
    )
    unknown = post(url, "/v1/completions", {"model": "no-such-model", "prompt": "hi"})
    assert [status for status, _ in sent] == [200] * 4 and over[0] == 400 and unknown[0] == 404
    stats = _get(url, "/v1/stats")
    after = stats["models"]
    ner, was = after["ner-lora-test"], before.get("ner-lora-test", {})

    def grew(field: str) -> int:
        return ner[field] - was.get(field, 0)

    assert grew("requests") == 5
    assert grew("prompt_tokens") == sum(body["usage"]["prompt_tokens"] for _, body in sent)
    assert grew("completion_tokens") == sum(body["usage"]["completion_tokens"] for _, body in sent)
    assert ner["errors"].get("400", 0) - was.get("errors", {}).get("400", 0) == 1
    assert after["-"]["errors"]["404"] - before.get("-", {}).get("errors", {}).get("404", 0) == 1
    assert 0 < ner["mean_time_to_first_token_s"] <= ner["mean_latency_s"] <= ner["max_latency_s"]
    (replica,) = stats["replicas"].values()  # the one model replica, as it last answered
    assert replica["queue_depth"] >= 0 and 0 <= replica["batch_occupancy"] <= 1
    # Ray's Prometheus endpoint counts the same, once Ray has exported it.
    figures = {
        "peft_sweeps_requests_total": ner["requests"],
        "peft_sweeps_prompt_tokens_total": ner["prompt_tokens"],
        "peft_sweeps_completion_tokens_total": ner["completion_tokens"],
        "peft_sweeps_latency_s_count": ner["requests"] - sum(ner["errors"].values()),
        "peft_sweeps_time_to_first_token_s_count": ner["requests"] - sum(ner["errors"].values()),
    }

    def exported() -> str | None:
        text = _prometheus(several.metrics_port)
        counted = {name: _metric(text, name, model="ner-lora-test") for name in figures}
        return text if counted == figures else None

    text = _until(exported, f"Ray's metrics show {figures}")
    assert (
        _metric(text, "peft_sweeps_errors_total", model="ner-lora-test", status="400") == ner["errors"]["400"]
    )
    assert _metric(text, "peft_sweeps_queue_depth", deployment="AdapterServer") is not None
    assert _metric(text, "peft_sweeps_batch_occupancy", deployment="AdapterServer") is not None
