"""What the project reads of a model's architecture before anything trains: the refusals, and what
it derives instead of refusing."""

import json
from pathlib import Path

import pytest
import ray
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)

from sweeps import run
from tests import architectures
from trainables import architecture, models
from trainables.methods import METHODS, ia3, refusals, trained_methods

# A mixture of experts whose experts' weights are fused tensors (no feed-forward linear layer).
OLMOE = {"num_experts": 4, "num_experts_per_tok": 2}


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """model type -> a random-weight model of it, with overrides for the mixture of experts."""
    return lambda model_type, **overrides: architectures.build(
        model_type, tiny_model, tmp_path_factory.mktemp(model_type), **overrides
    )


def _layer_names(names: list[str]) -> set[str]:
    """PEFT's module suffixes (mlp.down_proj, down_proj) as the layers' own names."""
    return {name.split(".")[-1] for name in names}


@pytest.mark.parametrize("model_type", ["llama", "mistral", "gpt2"])
def test_ia3_derives_the_layers_of_peft_s_table_where_peft_has_one(built, model_type):
    derived = ia3.derived_modules(architecture.skeleton(built(model_type)))
    table = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type]
    feed_forward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type]
    assert _layer_names(derived["target_modules"]) == _layer_names(table)
    assert _layer_names(derived["feedforward_modules"]) == _layer_names(feed_forward)


@pytest.mark.parametrize(
    ("model_type", "targets"),
    [("phi3", ["mlp.down_proj", "qkv_proj"]), ("olmo2", ["k_proj", "mlp.down_proj", "v_proj"]),
     ("granite", ["k_proj", "mlp.down_proj", "v_proj"])],
)  # fmt: skip
def test_ia3_finds_key_value_and_feed_forward_layers_where_peft_has_no_table(built, model_type, targets):
    model = architecture.skeleton(built(model_type))
    assert not ia3.known_to_peft(model)
    assert ia3.derived_modules(model) == {"target_modules": targets, "feedforward_modules": ["mlp.down_proj"]}
    assert refusals(built(model_type), ["ia3"]) == []


def test_a_model_whose_layers_keep_recurrent_state_is_refused_for_every_method(built):
    (refused,) = refusals(built("mamba"), ["lora", "prompt_tuning"])
    assert refused.startswith("methods lora, prompt_tuning cannot run on model type 'mamba': ")
    assert "recurrent state" in refused


def test_ia3_is_refused_on_a_mixture_of_experts_whose_experts_are_fused_tensors(built):
    assert refusals(built("olmoe", **OLMOE), ["lora", "ia3"]) == [
        "method 'ia3' cannot run on model type 'olmoe': no feed-forward linear layer back to the hidden "
        "size (a mixture of experts keeps its experts' weights in fused tensors)"
    ]


def test_a_checkpoint_already_quantized_is_refused(built):
    path = built("llama")
    config = json.loads((Path(path) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (Path(path) / "config.json").write_text(json.dumps(config))
    (refused,) = refusals(path, ["qlora", "lora"])
    assert "'llama'" in refused and "already quantized (gptq)" in refused


def test_every_default_method_runs_on_every_architecture_of_the_matrix(built):
    defaults = [name for name in trained_methods() if METHODS[name].in_default_sweep]
    for model_type in architectures.ARCHITECTURES:
        assert refusals(built(model_type), defaults) == [], model_type


@pytest.mark.parametrize(
    ("model_type", "attention"), [("gemma2", "eager"), ("llama", "sdpa"), ("gpt2", "sdpa")]
)
def test_each_architecture_loads_with_an_attention_it_has(built, model_type, attention):
    """Gemma 2's soft-capped logits have no SDPA path in transformers: its own eager attention."""
    path = built(model_type)
    assert models.attention_implementation(path) == attention
    assert models.load_model(path).config._attn_implementation == attention


@pytest.mark.parametrize(
    ("model_type", "overrides", "methods", "message"),
    [
        (
            "mamba",
            {},
            "lora,ia3",
            "methods lora, ia3 cannot run on model type 'mamba': its layers keep recurrent",
        ),
        ("olmoe", OLMOE, "lora,ia3", "method 'ia3' cannot run on model type 'olmoe': no feed-forward linear"),
    ],
)
def test_a_sweep_refuses_what_the_model_cannot_run_in_one_line_with_exit_code_2_before_ray(
    built, tmp_path, capsys, model_type, overrides, methods, message
):
    model = built(model_type, **overrides)
    capsys.readouterr()  # what building it printed
    argv = ["qg", "--model", model, "--methods", methods, "--storage", str(tmp_path)]
    assert run.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not ray.is_initialized()
    assert not any(tmp_path.iterdir())  # nothing written
