"""The engine in this process: what generation does inside a replica, which HTTP cannot show."""

from serve.engine import AdapterEngine, Request, read_adapter
from tests.serve.conftest import model_id

PROMPT = "Question 1: what is the weather like in town number 1?"


def test_a_row_stops_generating_at_its_stop_string(served_base, winners_dir):
    engine = AdapterEngine(served_base, (False,))
    engine.add(read_adapter(model_id("lora"), winners_dir / "lora", quantize_4bit=False))
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
