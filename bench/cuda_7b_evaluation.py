"""Evaluation at a real model's size: one pass over prompt and target (the loss, then generation
from its cache) against the two passes it replaced (a teacher-forced pass for the loss, then
generation from the prompts), on a Llama-2-7B-shaped model with random weights (bench/cuda_7b.py
builds it), LoRA on the bf16 base and QLoRA on the 4-bit one.

python bench/cuda_7b_evaluation.py [ROWS] [BATCH]   (default: 32 QG validation rows, batches of 16)

Both sides score the same rows with the same batch size and output length: random weights never
emit EOS, so every answer runs to the task's budget. Each side runs twice, after a warm-up; peak
GPU memory is taken per run. Random weights make near-ties of every greedy choice, so their answers
say nothing of agreement (tests/trainables/evaluation/test_passes.py checks it on the embedded model).
Needs CUDA. Last line: `cuda_7b_evaluation: <method>_one_pass_speedup=... <method>_extra_peak_gb=...`.
"""

import argparse
import gc
import time
from pathlib import Path

import torch
from cuda_7b import build_random_7b  # bench/cuda_7b.py

from trainables import encoding, models
from trainables.evaluation import passes
from trainables.training import trial


def timed(run) -> tuple[float, float]:
    """(seconds, peak GB) of one run, the GPU's queued work included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**30


def compare(method: str, directory: str, rows: int, batch: int) -> list[str]:
    """Times both sides for one method; prints them; returns its fields of the last line."""
    plan = trial.prepare({"task": "qg", "method": method, "model": directory})
    model, tokenizer = trial.load_trainable_model(plan, directory), models.load_tokenizer(directory)
    model.eval()
    examples = list(plan.splits["validation"].select(range(rows)))
    features = encoding.encode_examples(plan.task, tokenizer, examples, None)
    prompts = [plan.task.format_prompt(example) for example in examples]
    budget = plan.task.generation_budget(tokenizer, plan.uncapped_train)
    lengths = [len(encoding.prompt_ids(feature)) for feature in features]

    def one_pass(count: int = rows):
        batches = passes.row_batches(lengths[:count], batch)
        return passes.losses_and_generations(model, tokenizer, features[:count], budget, batches)

    def two_passes(count: int = rows):
        losses = passes.target_losses(model, features[:count], batch, tokenizer.pad_token_id)
        return losses, passes.generate(model, tokenizer, prompts[:count], budget, batch)

    one_pass(4), two_passes(4)  # warm-up
    runs = {name: [timed(run) for _ in range(2)] for name, run in (("two", two_passes), ("one", one_pass))}
    (one_losses, _), (two_losses, _) = one_pass(), two_passes()
    relative = max(abs(a - b) / abs(b) for a, b in zip(one_losses.sums, two_losses.sums, strict=True))
    print(
        f"{method}: {rows} rows, batches of {batch}, {budget} new tokens each, {sum(lengths)} prompt "
        f"tokens; two passes {' and '.join(f'{s:.2f} s' for s, _ in runs['two'])}, peak "
        f"{runs['two'][0][1]:.1f} GB; one pass {' and '.join(f'{s:.2f} s' for s, _ in runs['one'])}, "
        f"peak {runs['one'][0][1]:.1f} GB; losses at most {relative:.1e} apart",
        flush=True,
    )
    speedup = sum(s for s, _ in runs["two"]) / sum(s for s, _ in runs["one"])
    return [
        f"{method}_one_pass_speedup={speedup:.2f}",
        f"{method}_extra_peak_gb={runs['one'][0][1] - runs['two'][0][1]:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=32, help="QG validation rows")
    parser.add_argument("batch", nargs="?", type=int, default=16, help="rows per batch")
    args = parser.parse_args()
    rows, batch = args.rows, args.batch
    if not torch.cuda.is_available():
        raise SystemExit("cuda_7b_evaluation: needs CUDA")
    directory = str(build_random_7b(Path("/tmp/llama-7b-random")))
    fields = []
    for method in ("lora", "qlora"):
        fields += compare(method, directory, rows, batch)
        gc.collect()
        torch.cuda.empty_cache()
    print(f"on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("cuda_7b_evaluation: " + " ".join(fields))


if __name__ == "__main__":
    main()
