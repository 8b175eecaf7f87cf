import torch
from safetensors.torch import load_file

from trainables import embedded, models
from trainables.tasks import get_task


def _weights(directory):
    return load_file(directory / "model.safetensors")


def test_build_is_deterministic_for_a_seed(tmp_path):
    spec = embedded.tiny_spec(steps=4)
    first = embedded.build(spec, tmp_path / "a")
    second = embedded.build(spec, tmp_path / "b")
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    untrained = _weights(embedded.build(embedded.tiny_spec(steps=0), tmp_path / "c"))
    assert not all(torch.equal(a[name], untrained[name]) for name in a), "pretraining changed nothing"


def test_pretraining_text_never_includes_a_test_split():
    sentences = set(embedded.pretraining_sentences())
    test = get_task("qg").splits()["test"]
    assert sentences.isdisjoint(test["question"])


def test_cached_build_is_reused_and_keyed_by_spec(isolated_cache):
    spec = embedded.tiny_spec(steps=1)
    built = embedded.ensure_built(spec)
    assert built.parent == isolated_cache / "models"
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert embedded.ensure_built(spec) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert embedded.version_key(embedded.tiny_spec(steps=2)) != embedded.version_key(spec)
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".building-")]


def test_tiny_model_loads_through_from_pretrained_and_generates(tiny_model):
    tokenizer = models.load_tokenizer(tiny_model)
    model = models.load_model(tiny_model)
    assert model.config.model_type == "llama"
    assert model.config._attn_implementation == "sdpa"
    inputs = tokenizer(["Is Lisbon safe?"], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_missing_local_model_path_is_reported(tmp_path):
    assert "has no config.json" in models.unloadable_reason(str(tmp_path / "missing"))
    assert models.unloadable_reason("embedded") is None
