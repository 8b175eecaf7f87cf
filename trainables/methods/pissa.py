"""PiSSA: LoRA initialised from the base weights' principal singular vectors (A0, B0), the base
keeping only the residual W - B0 @ A0; PEFT's fast variant (16 subspace iterations).

Trained on that residual base, but saved as the change since initialisation, B @ A - B0 @ A0: a
plain LoRA of twice the rank on the original base (PEFT's conversion on save). So scoring, serving
(in mixed batches, as LoRA) and export all load it onto the base as it was, never the residual.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from trainables.methods import lora
from trainables.methods.base import BuildContext

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

INIT = "pissa_niter_16"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _wrap(
    base: PreTrainedModel, hyperparameters: lora.LoraHyperparameters, context: BuildContext
) -> PeftModel:
    from peft import get_peft_model, get_peft_model_state_dict

    model = get_peft_model(base, lora.lora_config(hyperparameters, context, init_lora_weights=INIT))
    # What training starts from: every save subtracts it. Kept in memory; a resumed run
    # recomputes the same decomposition (the trial seeds torch before wrapping).
    model.pissa_initial_weights = {
        name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()
    }
    return model


def _save_as_lora(model: PeftModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        initial = Path(scratch) / "pissa_initial"  # PEFT loads it as an adapter of this name, then drops it
        initial.mkdir()
        save_file(model.pissa_initial_weights, initial / ADAPTER_WEIGHTS)
        model.save_pretrained(directory, path_initial_model_for_weight_conversion=str(initial))


METHOD = dataclasses.replace(
    lora.METHOD, name="pissa", wrap=_wrap, save=_save_as_lora, in_default_sweep=False
)
