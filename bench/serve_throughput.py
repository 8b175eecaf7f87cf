"""Serving throughput: the base model alone against 1, 3 and 8 LoRA adapters in rotation, and
mixed-adapter batches against one adapter per batch.

python bench/serve_throughput.py [--requests 192] [--clients 16] [--max-tokens 16]

Builds 8 LoRA adapters (random weights, rank 8 on every linear layer) on the embedded model,
starts `python -m serve.run` on loopback and sends the same QG test prompts with 16 concurrent
clients per scenario. Every answer is exactly --max-tokens long (`min_tokens` holds EOS back), so
every figure compares equal work. Prints requests/s, generated tokens/s, p50/p99 latency and the
tokens/s ratio to the base model, then the 8 adapters again on a second server started with
`--separate-adapter-batches` (each adapter's requests batched apart), and the cold load time of an
adapter (its first request against a warm one). Each figure states the prompts and tokens it
rests on. The last two lines are `serve_8_adapters_vs_base: <ratio>` and
`mixed_vs_per_adapter: <ratio>`. Run it alone on the machine: its figures are only worth that.
"""

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peft import LoraConfig, get_peft_model

from serve.launch import start_server, stop_server
from trainables import embedded, models
from trainables.tasks import get_task

ADAPTERS = 8


def make_winners(directory: Path, base: str | None = None, task: str = "qg", count: int = ADAPTERS) -> None:
    """A sweep's directory whose winners.json lists `count` LoRA adapters for `task` (random
    weights, rank 8 on every linear layer) on `base` (default: the embedded model)."""
    base = base or str(embedded.ensure_built())
    winners = []
    for index in range(count):
        config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
        get_peft_model(models.load_model(base), config).save_pretrained(directory / f"lora-{index}")
        winners.append({
            "id": f"{task}-lora-{index:04d}", "task": task, "method": "lora", "base_model": base,
            "quantize_4bit": False, "adapter_path": str(directory / f"lora-{index}"),
        })  # fmt: skip
    (directory / "winners.json").write_text(json.dumps({"winners": winners}))


def timed_completion(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """Seconds and completion tokens of one request, whose answer is exactly max_tokens long."""
    fields = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens}
    body = json.dumps(fields).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        tokens = json.loads(response.read())["usage"]["completion_tokens"]
    return time.perf_counter() - started, tokens


def scenario(url: str, models_in_rotation: list[str], requests: int, clients: int, max_tokens: int) -> dict:
    # QG test prompts: the embedded model answers them at length, where made-up prompts end at once.
    examples = get_task("qg").splits()["test"]
    prompts = [get_task("qg").format_prompt(examples[n % len(examples)]) for n in range(requests)]
    work = [(models_in_rotation[n % len(models_in_rotation)], prompts[n]) for n in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(lambda item: timed_completion(url, *item, max_tokens), work))
    elapsed = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in answers)
    tokens = sum(count for _, count in answers)
    if tokens != requests * max_tokens:
        raise RuntimeError(f"{tokens} tokens generated, not {requests} x {max_tokens}: unequal work")
    return {
        "rps": requests / elapsed,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def report(label: str, result: dict, baseline: dict, requests: int) -> None:
    ratio = result["tokens_per_s"] / baseline["tokens_per_s"]
    print(f"{label:>22}: {result['rps']:6.1f} req/s, {result['tokens_per_s']:6.0f} tokens/s, "
          f"p50 {result['p50_s'] * 1000:5.0f} ms, p99 {result['p99_s'] * 1000:5.0f} ms "
          f"({requests} prompts, {result['tokens']} tokens), tokens/s vs base {ratio:.2f}", flush=True)  # fmt: skip


def serve_scenarios(directory: Path, scenarios: dict, args, *options: str, cold_start: bool = False) -> dict:
    """Each scenario's figures, on one server started with `options`."""
    process, url = start_server(directory, "--max-adapters-per-replica", str(ADAPTERS), *options)
    try:
        if cold_start:
            adapter_ids = scenarios["8 adapters"]
            cold = [timed_completion(url, adapter, "Hello", 1)[0] for adapter in adapter_ids]
            warm = [timed_completion(url, adapter, "Hello", 1)[0] for adapter in adapter_ids]
            print(f"cold adapter load: first request {statistics.median(cold) * 1000:.0f} ms median, "
                  f"warm {statistics.median(warm) * 1000:.0f} ms", flush=True)  # fmt: skip
        # Warm-up: every model in play loaded and a batch run before the clock starts.
        every = list(dict.fromkeys(model for rotation in scenarios.values() for model in rotation))
        scenario(url, every, max(args.clients, len(every)), args.clients, args.max_tokens)
        return {
            label: scenario(url, rotation, args.requests, args.clients, args.max_tokens)
            for label, rotation in scenarios.items()
        }
    finally:
        stop_server(process)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--requests", type=int, default=192)
    cli.add_argument("--clients", type=int, default=16)
    cli.add_argument("--max-tokens", type=int, default=16)
    args = cli.parse_args()
    if min(args.requests, args.clients, args.max_tokens) <= 0:
        cli.error("--requests, --clients and --max-tokens must be positive")
    adapter_ids = [f"qg-lora-{index:04d}" for index in range(ADAPTERS)]
    rotations = {"base": ["base"], "1 adapter": adapter_ids[:1], "3 adapters": adapter_ids[:3],
                 "8 adapters": adapter_ids}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        make_winners(directory)
        mixed = serve_scenarios(directory, rotations, args, cold_start=True)
        for label, result in mixed.items():
            report(label, result, mixed["base"], args.requests)
        separate = serve_scenarios(
            directory, {"8 adapters": adapter_ids}, args, "--separate-adapter-batches"
        )["8 adapters"]
        report("8 adapters, per-adapter", separate, mixed["base"], args.requests)
    print(
        f"serve_8_adapters_vs_base: {mixed['8 adapters']['tokens_per_s'] / mixed['base']['tokens_per_s']:.2f}"
    )
    print(f"mixed_vs_per_adapter: {mixed['8 adapters']['tokens_per_s'] / separate['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
