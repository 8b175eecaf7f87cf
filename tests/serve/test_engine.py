"""The engine in this process: what generation does inside a replica, which HTTP cannot show."""

from serve.engine import AdapterEngine, Request, read_adapter
from tests.serve.conftest import model_id
from trainables import loop, models
from trainables.methods import METHODS

PROMPT = "Question 1: what is the weather like in town number 1?"


def test_a_row_stops_generating_at_its_stop_string(served_base, winners_dir):
    engine = AdapterEngine(served_base, (False,))
    engine.add(
        read_adapter(model_id("lora"), winners_dir / "lora", False, METHODS["lora"].shares_mixed_batch)
    )
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
    on_base = [name for name, method in METHODS.items() if not method.standalone and not method.quantize_4bit]
    engine = AdapterEngine(served_base, (False,))
    for name in on_base:
        engine.add(read_adapter(model_id(name), winners_dir / name, False, METHODS[name].shares_mixed_batch))
    served = [c.text for c in engine.generate([Request(PROMPT, model_id(name), 16) for name in on_base])]
    tokenizer = models.load_tokenizer(served_base)
    alone = [
        loop.generate(METHODS[name].load_trained(served_base, winners_dir / name, False), tokenizer, [PROMPT], 16,
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
        adapter = read_adapter(
            model_id("qlora"), winners_dir / "qlora", True, METHODS["qlora"].shares_mixed_batch
        )
        engine.add(adapter)
        return adapter

    first = load()
    engine.generate([Request(PROMPT, model_id("qlora"), 4)])  # injects it into the 4-bit base
    engine.remove(first)  # evicted: the base held no other adapter
    load()
    prompts = [f"Question {n}: what is the weather like in town number {n}?" for n in range(8)]
    served = [engine.generate([Request(prompt, model_id("qlora"), 32)])[0].text for prompt in prompts]
    assert served == [
        loop.generate(scored, tokenizer, [prompt], 32, batch_size=1).texts[0] for prompt in prompts
    ]
