"""The CUDA paths at a real model's size: a Llama-2-7B-shaped model with random weights, trained
by the trial code a sweep runs (QLoRA: 4-bit NF4 base on the GPU; LoRA: bf16 base), for speed
and memory.

python bench/cuda_7b.py [--methods qlora,lora] [--steps 8] [--task qa] [--dir /tmp/llama-7b-random]

No hub is reached: the model is built from Llama-2-7B's shape on the GPU, saved with the embedded
model's tokenizer, and loaded through `--model <dir>` like any local model. Random weights never
emit EOS, so every generation runs to the task's budget: a fair throughput figure. Needs CUDA.
Last line: `cuda_7b: <method>_train_tokens_per_s=... <method>_peak_memory_gb=... ...`.
"""

import argparse
import gc
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainables import measure, models
from trainables.training import trial

# meta-llama/Llama-2-7b-hf's shape.
LLAMA_2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    vocab_size=32000,
)


def build_random_7b(directory: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    tokenizer = models.load_tokenizer(models.EMBEDDED)
    config = LlamaConfig(
        **LLAMA_2_7B,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialised in bf16 on the GPU: seconds, not minutes
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()
    return directory


def run_trial(method: str, model_dir: Path, task: str, steps: int) -> dict:
    measure.reset_peak_memory()
    started = time.perf_counter()
    final = trial.execute(
        {
            "task": task,
            "method": method,
            "model": str(model_dir),
            "max_steps": steps,
            "eval_every": steps,
            "eval_examples": 8,
        },
        lambda metrics, checkpoint: None,
    )
    final["trial_wall_s"] = time.perf_counter() - started
    gc.collect()
    torch.cuda.empty_cache()
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="qlora,lora")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--task", default="qa")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/llama-7b-random"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_7b: needs CUDA")
    started = time.perf_counter()
    model_dir = build_random_7b(args.dir)
    print(f"7B-shaped model at {model_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    fields = []
    for method in args.methods.split(","):
        final = run_trial(method, model_dir, args.task, args.steps)
        shown = {
            key: final.get(key)
            for key in (
                "train_tokens_per_s",
                "peak_memory_mb",
                "gen_tokens_per_s",
                "latency_s",
                "attention",
                "trainable_params",
                "train_time_s",
                "trial_wall_s",
                "quality",
            )
        }
        print(f"{method}: {json.dumps(shown)}", flush=True)
        fields += [
            f"{method}_train_tokens_per_s={final['train_tokens_per_s']:.0f}",
            f"{method}_peak_memory_gb={final['peak_memory_mb'] / 1024:.1f}",
            f"{method}_gen_tokens_per_s={final['gen_tokens_per_s']:.1f}",
        ]
    print(f"on {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.steps} steps of {args.task}")
    print("cuda_7b: " + " ".join(fields))


if __name__ == "__main__":
    main()
