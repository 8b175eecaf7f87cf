"""The engine in this process: what generation does inside a replica, which HTTP cannot show."""

import time

from serve.engine import AdapterEngine, Request, Sampling
from tests.serve.conftest import _adapter, model_id, read_saved
from trainables import models
from trainables.decoding.lookup import PromptLookup
from trainables.evaluation import passes
from trainables.methods import METHODS

PROMPT = "Question 1: what is the weather like in town number 1?"


def test_a_row_stops_generating_at_its_stop_string(served_base, winners_dir):
    engine = AdapterEngine(served_base, (False,), lookup=None)  # one forward per token: counted below
    engine.add(read_saved(model_id("lora"), winners_dir / "lora", "lora"))
    forwards = []  # one forward pass of the base per generated token
    engine.bases[False].model.register_forward_hook(lambda *_: forwards.append(1))

    def generated_tokens(request: Request):
        forwards.clear()
        (completion,) = engine.generate([request])
        return completion, len(forwards)

    whole, whole_steps = generated_tokens(Request(PROMPT, model_id("lora"), max_tokens=32))
    assert whole.finish_reason == "length" and whole_steps == 32
    stop = whole.text[12:14]
    stopped, stopped_steps = generated_tokens(Request(PROMPT, model_id("lora"), 32, stop=(stop,)))
    assert stopped.text == whole.text[: whole.text.index(stop)]
    # Past the tokens returned, only those holding the stop string itself were generated.
    assert stopped_steps <= stopped.completion_tokens + len(stop) < 32


def test_one_batch_of_every_adapter_answers_as_each_reloaded_alone(served_base, winners_dir):
    """Adapters whose method shares mixed batches answer in one generate call, the others (DoRA)
    each in a call of their own: every answer is the one its reloaded adapter gives alone."""
    on_base = [
        name
        for name, method in METHODS.items()
        if method.trains and not method.standalone and not method.quantize_4bit
    ]
    engine = AdapterEngine(served_base, (False,))
    for name in on_base:
        engine.add(read_saved(model_id(name), winners_dir / name, name))
    served = [c.text for c in engine.generate([Request(PROMPT, model_id(name), 16) for name in on_base])]
    tokenizer = models.load_tokenizer(served_base)
    alone = [
        passes.generate(METHODS[name].load_trained(served_base, winners_dir / name, False), tokenizer, [PROMPT], 16,
                      batch_size=1).texts[0]
        for name in on_base
    ]  # fmt: skip
    assert served == alone
    assert len(set(alone)) == len(alone)  # each adapter changes the answer its own way


def test_a_qlora_adapter_evicted_and_loaded_again_answers_as_scored(served_base, winners_dir):
    """Injecting LoRA layers into 4-bit layers rewrites their quantization statistics: a 4-bit base
    whose last adapter was evicted must not carry that into the next load."""
    tokenizer = models.load_tokenizer(served_base)
    scored = METHODS["qlora"].load_trained(served_base, winners_dir / "qlora", True)
    engine = AdapterEngine(served_base, (True,))

    def load():
        adapter = read_saved(model_id("qlora"), winners_dir / "qlora", "qlora")
        engine.add(adapter)
        return adapter

    first = load()
    engine.generate([Request(PROMPT, model_id("qlora"), 4)])  # injects it into the 4-bit base
    engine.remove(first)  # evicted: the base held no other adapter
    load()
    prompts = [f"Question {n}: what is the weather like in town number {n}?" for n in range(8)]
    served = [engine.generate([Request(prompt, model_id("qlora"), 32)])[0].text for prompt in prompts]
    assert served == [
        passes.generate(scored, tokenizer, [prompt], 32, batch_size=1).texts[0] for prompt in prompts
    ]


def test_requests_sent_mid_decode_join_the_running_batch_and_answer_as_alone(served_base, winners_dir):
    """Iteration-level batching: requests of other adapters, of the base, of other lengths, with a
    stop string or seeded sampling, sent while a long request decodes, join its batch between two
    steps and are answered before it ends; each answer is the one its request gets alone."""
    mixing = [
        name for name, method in METHODS.items() if method.shares_mixed_batch and not method.quantize_4bit
    ]
    engine = AdapterEngine(served_base, (False,))
    for name in mixing:
        engine.add(read_saved(model_id(name), winners_dir / name, name))
    first, last = model_id(mixing[0]), model_id(mixing[-1])
    long = Request("Question 2: is it raining in town number 2?", first, max_tokens=64)
    joining = [
        Request(PROMPT, last, max_tokens=8),
        Request("Question 3: how windy is town number 3?", None, max_tokens=16),
        Request("Question 4: what is the weather like in town number 4?", first, max_tokens=24, stop=("e",)),
        Request(PROMPT, last, max_tokens=12, sampling=Sampling(temperature=1.0, seed=3)),
    ]
    alone = [engine.generate([request])[0] for request in [long, *joining]]
    assert alone[0].finish_reason == "length" and alone[3].finish_reason == "stop"
    started = engine.steps
    long_ticket = engine.submit(long)
    _wait_for_steps(engine, started + 4)  # the long request is mid-decode
    together = [ticket.result() for ticket in [engine.submit(request) for request in joining]]
    assert not long_ticket.done()  # the others did not wait for it
    assert [long_ticket.result(), *together] == alone
    engine.close()
    # Alone in the engine is alone in plain generate (greedy on the reloaded adapter or the base).
    tokenizer = models.load_tokenizer(served_base)
    plain = {
        model_id(name): METHODS[name].load_trained(served_base, winners_dir / name, False) for name in mixing
    }
    plain[None] = models.load_model(served_base)
    for request, completion in zip([long, *joining[:2]], alone, strict=False):
        expected = passes.generate(plain[request.adapter], tokenizer, [request.prompt], request.max_tokens, 1)
        assert completion.text == expected.texts[0]


def test_prompt_lookup_answers_as_plain_decoding_in_one_running_batch(served_base, winners_dir):
    """Greedy rows of several adapters and of the base, drafted for, beside a sampled row and rows
    with a stop string, min_tokens or a short max_tokens, in one batch: each completion (text,
    token counts, finish reason) is the one the engine gives without prompt lookup."""
    mixing = [
        name for name, method in METHODS.items() if method.shares_mixed_batch and not method.quantize_4bit
    ]
    repeating = "Question 2: is it raining in town number 2? Question 2: is it raining in town"
    requests = [
        Request(PROMPT, model_id(mixing[0]), max_tokens=48),
        Request(repeating, model_id(mixing[-1]), max_tokens=40),
        Request(repeating, None, max_tokens=32, min_tokens=32),
        Request(PROMPT, model_id(mixing[1]), max_tokens=40, stop=("own",)),
        Request(PROMPT, model_id(mixing[0]), max_tokens=24, sampling=Sampling(temperature=1.0, seed=3)),
        Request(repeating, model_id(mixing[1]), max_tokens=3),
    ]

    def completions(lookup: PromptLookup | None):
        engine = AdapterEngine(served_base, (False,), lookup=lookup)
        for name in mixing:
            engine.add(read_saved(model_id(name), winners_dir / name, name))
        answered = engine.generate(requests)
        engine.close()
        return answered, engine._batch.draft_tokens_accepted

    plain, _ = completions(None)
    drafted, accepted = completions(PromptLookup())
    assert accepted > 0
    assert drafted == plain


def test_vera_adapters_of_other_projection_seeds_take_turns_on_one_base(served_base, winners_dir, tmp_path):
    """VeRA adapters on one base share its projections, so PEFT refuses one of another seed beside
    them: the engine injects each kind in turn, and each answers as its reloaded adapter alone."""
    _adapter(served_base, "vera", tmp_path / "seed-1", **{"vera.projection_seed": 1})
    folders = {"vera-seed-0": winners_dir / "vera", "vera-seed-1": tmp_path / "seed-1"}
    engine = AdapterEngine(served_base, (False,))
    for name, folder in folders.items():
        engine.add(read_saved(name, folder, "vera"))
    served = [c.text for c in engine.generate([Request(PROMPT, name, 16) for name in folders] * 2)]
    tokenizer = models.load_tokenizer(served_base)
    alone = [
        passes.generate(
            METHODS["vera"].load_trained(served_base, folder, False), tokenizer, [PROMPT], 16, 1
        ).texts[0]
        for folder in folders.values()
    ]
    assert served == alone * 2
    assert alone[0] != alone[1]  # another seed, other projections: another answer


def test_a_request_whose_row_cannot_be_made_fails_alone(served_base, winners_dir):
    """A seed torch cannot take, or a prompt the tokenizer cannot encode, fails its own request;
    the request decoded beside it answers as it does alone."""
    engine = AdapterEngine(served_base, (False,))
    engine.add(read_saved(model_id("lora"), winners_dir / "lora", "lora"))
    normal = Request(PROMPT, model_id("lora"), 16)
    (alone,) = engine.generate([normal])
    hostile = [
        Request(PROMPT, model_id("lora"), 16, sampling=Sampling(temperature=1.0, seed=2**70)),
        Request("\ud800", model_id("lora"), 16),
    ]
    for bad in hostile:
        tickets = [engine.submit(bad), engine.submit(normal)]
        assert tickets[1].result(timeout=60) == alone
        assert tickets[0].exception(timeout=60) is not None
    engine.close()


def test_a_row_that_fails_mid_decode_fails_alone(served_base, winners_dir):
    """A row whose own step fails (sampling its token, matching its stop strings, its prefill)
    fails its request alone: the rows decoded beside it, greedy or seeded, answer as they do alone."""
    engine = AdapterEngine(served_base, (False,))
    engine.add(read_saved(model_id("lora"), winners_dir / "lora", "lora"))
    beside = [
        Request(PROMPT, model_id("lora"), 24),
        Request("Question 3: how windy is town number 3?", None, 24, sampling=Sampling(1.0, seed=5)),
    ]
    alone = engine.generate(beside)
    unlucky = "Question 5: " + "and then? " * 20  # its prefill fails (below): a prefill group of its own
    unlucky_tokens = len(engine.tokenizer(unlucky)["input_ids"])

    def prefill_fails(_, args, kwargs):
        if kwargs["input_ids"].shape[1] == unlucky_tokens:
            raise RuntimeError("out of memory (as a long prompt's prefill can be)")

    engine.bases[False].model.register_forward_pre_hook(prefill_fails, with_kwargs=True)
    failing = [
        # Logits divided by so small a temperature overflow: torch cannot sample from what is left.
        Request(PROMPT, model_id("lora"), 24, sampling=Sampling(temperature=1e-300, seed=1)),
        Request(PROMPT, None, 24, stop=(b"not text",)),  # its stop strings cannot be matched
        Request(unlucky, model_id("lora"), 24),
    ]
    for bad in failing:
        tickets = [engine.submit(request) for request in (beside[0], bad, beside[1])]
        assert [tickets[0].result(timeout=60), tickets[2].result(timeout=60)] == alone
        assert tickets[1].exception(timeout=60) is not None
    # A request that fails while others decode leaves them decoding as they would alone.
    long_ticket = engine.submit(Request(PROMPT, model_id("lora"), 48))
    started = engine.steps
    _wait_for_steps(engine, started + 4)
    for bad in failing:
        assert engine.submit(bad).exception(timeout=60) is not None
    assert long_ticket.result(timeout=60) == engine.generate([Request(PROMPT, model_id("lora"), 48)])[0]
    engine.close()


def _wait_for_steps(engine, steps: int, deadline_s: float = 120.0) -> None:
    """Until the decoding thread has taken `steps` steps; fails, rather than hangs, if it stopped."""
    deadline = time.monotonic() + deadline_s
    while engine.steps < steps:
        assert time.monotonic() < deadline, f"the engine took {engine.steps} steps, not {steps}"
        time.sleep(0.001)
