"""serve.export: every winner in each form its method offers, answering as the adapter on its base."""

import json
import re

import pytest
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from serve import export
from tests.serve.conftest import model_id
from trainables import models
from trainables.evaluation import passes
from trainables.methods import METHODS, trained_methods

PROMPTS = [f"Question {n}: what is the weather like in town number {n}?" for n in range(2)]
TRAINED = sorted(trained_methods())


def _greedy(model, base: str) -> list[str]:
    return passes.generate(model, models.load_tokenizer(base), PROMPTS, 12, len(PROMPTS)).texts


@pytest.fixture(scope="module")
def as_scored(served_base, winners_dir):
    """Each method's answers as its trial scored them: the saved adapter (or model) reloaded."""
    answers = {}

    def answer(method: str) -> list[str]:
        if method not in answers:
            spec = METHODS[method]
            model = spec.load_trained(served_base, winners_dir / method, spec.quantize_4bit)
            answers[method] = _greedy(model, served_base)
        return answers[method]

    return answer


@pytest.mark.parametrize("method", [m for m in TRAINED if "merged" in METHODS[m].export_forms])
def test_a_merged_winner_answers_as_its_adapter_on_the_base(
    served_base, winners_dir, as_scored, tmp_path, method
):
    notes = export.export(winners_dir, model_id(method), "merged", tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "merged").iterdir()
    }
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", use_safetensors=True)
    assert "quantization_config" not in merged.config.to_dict()  # plain transformers, no bitsandbytes
    assert _greedy(merged, served_base) == as_scored(method)
    assert as_scored(method) != _greedy(models.load_model(served_base), served_base)  # not the base's answers
    assert bool(notes) == METHODS[method].quantize_4bit  # QLoRA says it dequantized


@pytest.mark.parametrize("method", [m for m in TRAINED if "lora" in METHODS[m].export_forms])
def test_an_exported_lora_is_plain_and_answers_as_the_original(
    served_base, winners_dir, as_scored, tmp_path, method
):
    export.export(winners_dir, model_id(method), "lora", tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config.keys() <= export.PORTABLE_FIELDS and config["peft_type"] == "LORA"
    assert config["lora_alpha"] == config["r"] and not config["use_rslora"] and not config["use_dora"]
    weights = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert weights and all(name.endswith(export.PORTABLE_WEIGHT_SUFFIXES) for name in weights)
    ranks = {
        re.sub(r"\.lora_[AB]\.weight$", "", n).removeprefix("base_model.model."): w
        for n, w in weights.items()
        if ".lora_A." in n
    }
    assert {name: w.shape[0] for name, w in ranks.items()} == {
        name: config["rank_pattern"].get(name, config["r"]) for name in config["target_modules"]
    }
    base = models.load_model(served_base, quantize_4bit=METHODS[method].quantize_4bit)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "lora")
    assert type(reloaded.base_model).__name__ == "LoraModel"
    assert _greedy(reloaded, served_base) == as_scored(method)


def test_what_cannot_be_exported_is_refused_in_one_line_with_exit_code_2(winners_dir, tmp_path, capsys):
    refusals = {
        ("prompt_tuning", "merged"): "does not merge",
        ("dora", "lora"): "not a plain low-rank",
        ("ia3", "lora"): "not a plain low-rank",
        ("nope", "merged"): "--winner: no winner 'nope'",
    }
    for (method, form), reason in refusals.items():
        out = tmp_path / f"{method}-{form}"
        with pytest.raises(SystemExit) as exited:
            export.main(
                [
                    str(winners_dir),
                    "--winner",
                    model_id(method).replace("qg-nope-test", "nope"),
                    "--to",
                    form,
                    str(out),
                ]
            )
        error = capsys.readouterr().err
        assert exited.value.code == 2 and reason in error and len(error.strip().splitlines()) == 1
        assert not out.exists()
