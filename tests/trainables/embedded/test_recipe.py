import dataclasses
import json
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from trainables import embedded, models
from trainables.embedded import names


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


RENAMING_DOCUMENTS = [
    "The user is planning a holiday in Lisbon.\nDo I need a visa?\nWhat are the visa rules for Lisbon?",
    *[f"The user asked about item {i}." for i in range(60)],
]


@pytest.mark.parametrize("style", names.NameInventor.STYLES)
def test_renamed_copies_replace_rare_recurring_words_consistently(style):
    inventor = names.NameInventor(RENAMING_DOCUMENTS, style=style)
    renamed = inventor.rename(RENAMING_DOCUMENTS[0], random.Random(0)).splitlines()
    fresh_name = renamed[0].removeprefix("The user is planning a holiday in ").removesuffix(".")
    assert fresh_name != "Lisbon" and fresh_name[0].isupper()
    assert renamed[2] == f"What are the {renamed[2].split()[3]} rules for {fresh_name}?"
    assert "visa" not in renamed[1] and renamed[1].startswith("Do I need a ")
    common_words_only = RENAMING_DOCUMENTS[1]
    assert inventor.rename(common_words_only, random.Random(0)) == common_words_only


def test_spliced_names_join_the_head_of_one_rare_word_to_the_tail_of_another():
    inventor = names.NameInventor(RENAMING_DOCUMENTS, style="spliced")
    assert "lisbon" in inventor.rare_words and "user" not in inventor.rare_words
    rng = random.Random(0)
    for _ in range(50):
        name = (
            inventor.rename(RENAMING_DOCUMENTS[0], rng).splitlines()[0].split()[-1].removesuffix(".").lower()
        )
        assert any(
            name[:cut] == head[:cut]
            and name[cut:]
            and any(tail.endswith(name[cut:]) for tail in inventor.rare_words)
            for head in inventor.rare_words
            for cut in range(2, len(head))
        ), name
    with pytest.raises(ValueError, match="invented_names: 'letters' is not one of syllables, spliced"):
        names.NameInventor(RENAMING_DOCUMENTS, style="letters")


def test_the_default_tokenizer_gives_every_digit_its_own_token_wherever_a_number_stands():
    """A date in the OCR text (after a space) and in the JSON (after a quote) must be the same
    tokens, or copying it is a different task from copying it verbatim."""
    tokenizer = embedded.build_tokenizer(embedded.DEFAULT_SPEC)

    def pieces(text):
        return [tokenizer.decode([token]) for token in tokenizer(text, add_special_tokens=False)["input_ids"]]

    assert pieces("3. 13.05.1953")[-10:] == pieces('"13.05.1953"')[1:-1] == list("13.05.1953")
    text = "5. 712565207 Lisbon, about 9,000 people"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    plain = embedded.build_tokenizer(dataclasses.replace(embedded.DEFAULT_SPEC, individual_digits=False))
    assert len(plain("712565207")["input_ids"]) < 9


def test_pretraining_documents_are_deterministic_for_a_seed():
    spec = embedded.tiny_spec(renamed_copies=1)
    first = names.pretraining_documents(spec)
    assert first == names.pretraining_documents(spec)
    assert first != names.pretraining_documents(embedded.tiny_spec(renamed_copies=1, seed=1))
    assert len(first) == 2 * len(names.row_documents())


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


def test_shipped_weights_are_the_default_build_of_todays_data():
    assert embedded.shipped_version() == embedded.version_key(embedded.DEFAULT_SPEC)
    assert embedded.ensure_built() == embedded.SHIPPED_DIR
    shipped = json.loads((embedded.SHIPPED_DIR / embedded.SPEC_FILE).read_text())
    assert shipped == dataclasses.asdict(embedded.DEFAULT_SPEC)
    files = {path.name: path.stat().st_size for path in embedded.SHIPPED_DIR.iterdir()}
    assert "model.safetensors" in files and not [name for name in files if name.endswith((".bin", ".pt"))]
    assert sum(files.values()) < 50 * 2**20


def test_the_shipping_script_rebuilds_a_small_configuration_bit_for_bit(tmp_path):
    """The shipped weights come from `python -m trainables.embedded` (on a GPU); on CPU a small
    configuration of the same recipe, copying circuit included, is reproducible bit for bit."""
    small = {"steps": 2, "batch_size": 2, "renamed_copies": 1}
    options = [f"--{name.replace('_', '-')}={value}" for name, value in small.items()]
    subprocess.run(
        [sys.executable, "-m", "trainables.embedded", str(tmp_path / "script"), *options], check=True
    )
    in_process = embedded.build(dataclasses.replace(embedded.DEFAULT_SPEC, **small), tmp_path / "here")
    a, b = _weights(tmp_path / "script"), _weights(in_process)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert (tmp_path / "script" / "tokenizer.json").read_text() == (in_process / "tokenizer.json").read_text()
