"""python -m serve.export SWEEP_DIR [--winner ID] --to {merged,lora} OUT: a winner in the form
another serving stack reads.

merged: the winner's update merged into the base weights (merge_and_unload), saved as a standalone
Hugging Face model directory (safetensors, with the tokenizer) that plain transformers loads. A
QLoRA winner is merged into its 4-bit base dequantized first, which the command says.

lora: a plain LoRA adapter of the kind vLLM's and LoRAX's loaders accept: only lora_A / lora_B
weights, and a config of the fields they read (r, lora_alpha, target_modules, ...). Each method's
module gives its update as exact low-rank factors (LoRA with its scaling, rsLoRA's included;
AdaLoRA's singular values; VeRA's scaled projections; PiSSA is saved as a delta on the original
base already). The scaling is folded into B, so lora_alpha equals r and every loader scales by 1;
modules whose rank differs from r (AdaLoRA's allocation) are named in rank_pattern.

What each winner can be exported as is in winners.json (`exports`), from the same method facts.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from serve.adapters import Adapter, load_registry
from trainables import architecture, files, models
from trainables.errors import ConfigError
from trainables.methods import METHODS, Method

FORMS = ("merged", "lora")
WHY_NOT = {
    "merged": "its result does not merge into the base weights",
    "lora": "its update is not a plain low-rank (LoRA) update",
}
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# What the exported adapter_config.json holds: the fields vLLM's PEFTHelper and LoRAX read, no more.
PORTABLE_FIELDS = frozenset({
    "peft_type", "task_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules", "rank_pattern",
    "alpha_pattern", "lora_dropout", "bias", "fan_in_fan_out", "use_rslora", "use_dora", "modules_to_save",
    "inference_mode",
})  # fmt: skip
PORTABLE_WEIGHT_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def chosen_winner(sweep_dir: Path, winner_id: str | None) -> tuple[Adapter, str]:
    """(the winner, its base model): the best one, or the one named."""
    registry = load_registry([sweep_dir])
    if winner_id is None:
        winner = next(iter(registry.adapters.values()))
        return winner, winner.base_model
    if winner_id not in registry.adapters:
        known = ", ".join(registry.adapters)
        raise ConfigError(f"--winner: no winner '{winner_id}' in {sweep_dir}/winners.json; known: {known}")
    return registry.adapters[winner_id], registry.adapters[winner_id].base_model


def check_exportable(adapter: Adapter, form: str) -> Method:
    method = METHODS[adapter.method]
    if form not in method.export_forms:
        forms = ", ".join(method.export_forms) or "none"
        raise ConfigError(
            f"--to {form}: winner '{adapter.adapter_id}' ({adapter.method}) cannot be exported as {form}: "
            f"{WHY_NOT[form]} (its forms: {forms})"
        )
    return method


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"OUT: {out} exists and is not an empty directory")


def merged_model(method: Method, base_path: str, adapter: Adapter) -> tuple[torch.nn.Module, list[str]]:
    """The winner as one plain transformers model, and what the merge changed that a user must know."""
    if method.standalone:
        return method.load_trained(base_path, adapter.path, False), []
    base = models.load_model(base_path, quantize_4bit=method.quantize_4bit)
    notes = []
    if method.quantize_4bit:
        # The adapter learnt against the 4-bit weights: merged into those, dequantized (not the
        # original full-precision ones), it gives the answers it was scored with.
        base = base.dequantize()
        notes.append(
            "the 4-bit base was dequantized before merging: the merged model holds its rounded weights "
            "in full precision (4 times the size of the 4-bit base)"
        )
    merged = PeftModel.from_pretrained(base, adapter.path).merge_and_unload()
    if method.quantize_4bit:
        merged = architecture.with_conv1d_layers_restored(merged, base_path)
    return merged, notes


def write_merged(method: Method, base_path: str, adapter: Adapter, out: Path) -> list[str]:
    model, notes = merged_model(method, base_path, adapter)
    model.save_pretrained(out)
    models.load_tokenizer(base_path).save_pretrained(out)
    return notes


def portable_lora(
    method: Method, model: PeftModel, base_path: str, base_model: str
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter config, weights) of the plain LoRA that makes the same update as `model`'s adapter."""
    factors = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            lora_a, lora_b = method.lora_factors(module, "default")
            if lora_a.shape[0]:  # a module whose whole rank was pruned (AdaLoRA) changes nothing
                factors[name.removeprefix(PEFT_PREFIX)] = (lora_a, lora_b)
    ranks = {name: lora_a.shape[0] for name, (lora_a, _) in factors.items()}
    rank = max(ranks.values())
    # lora_alpha == r (and the same in the patterns): each loader's scaling is 1, whichever it reads.
    other_ranks = {name: module_rank for name, module_rank in ranks.items() if module_rank != rank}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": rank,
        "target_modules": sorted(factors),
        "rank_pattern": other_ranks,
        "alpha_pattern": other_ranks,
        "lora_dropout": 0.0,
        "bias": "none",
        # True where the architecture's layers are GPT-2's Conv1D, whose weight is transposed: a loader
        # that merges must transpose the update (whether or not a 4-bit base hid them in training).
        "fan_in_fan_out": not architecture.conv1d_layer_names(base_path).isdisjoint(factors),
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    weights = {}
    for name, (lora_a, lora_b) in factors.items():
        weights[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora_a.detach().float().contiguous()
        weights[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora_b.detach().float().contiguous()
    return config, weights


def write_lora(method: Method, base_path: str, base_model: str, adapter: Adapter, out: Path) -> list[str]:
    model = method.load_trained(base_path, adapter.path, method.quantize_4bit)
    config, weights = portable_lora(method, model, base_path, base_model)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    if method.quantize_4bit:
        return ["trained on the 4-bit base: apply it to that base (bitsandbytes NF4) for the scored answers"]
    return []


def export(sweep_dir: Path, winner_id: str | None, form: str, out: Path) -> list[str]:
    """Writes the winner's `form` into out; returns the notes the user must read."""
    adapter, base_model = chosen_winner(sweep_dir, winner_id)
    method = check_exportable(adapter, form)
    check_out_dir(out)
    base_path = models.resolve(base_model)
    # Written whole or not at all: an export cut short leaves no directory that looks complete.
    with files.directory_replaced_atomically(out) as written:
        if form == "merged":
            return write_merged(method, base_path, adapter, written)
        return write_lora(method, base_path, base_model, adapter, written)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m serve.export", description=__doc__.split("\n\n")[0])
    cli.add_argument("sweep_dir", type=Path, help="a sweep directory with winners.json")
    cli.add_argument("--winner", help="the winner's id in winners.json (default: the best)")
    cli.add_argument("--to", required=True, choices=FORMS, help="a merged model, or a portable LoRA adapter")
    cli.add_argument("out", type=Path, help="the directory to write (new, or empty)")
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        notes = export(args.sweep_dir, args.winner, args.to, args.out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for note in notes:
        print(f"note: {note}")
    print(f"{args.to}: {args.out}")


if __name__ == "__main__":
    main()
