"""Prompt-lookup decoding against plain greedy decoding: evaluation of each task, and serving.

python bench/prompt_lookup.py SWEEP_DIR [SWEEP_DIR ...] [--examples N] [--requests 64] [--clients 16]

SWEEP_DIR: a sweep's directory (a smoke or default sweep of ner, qg or qa), whose first winner
is scored here. For each, the test split (its first --examples rows, default all) is evaluated
twice, the same batches both ways, with prompt lookup (the default settings) and without; the
answers must be equal (else it stops), and the figure is the ratio of the evaluation's seconds
(its loss pass, decoding and scoring), also shown for decoding alone. Then the NER winner is
served twice (`python -m serve.run`, once with --no-prompt-lookup) and --clients clients send it
the same --requests NER test prompts; the completions must be equal, and the figure is the ratio
of generated tokens per second. Each side runs --repeats times, alternating, and the medians are
compared. Run it alone on the machine. Its last line is

    prompt_lookup_speedup: ner=<x> qg=<x> qa=<x> serve_tokens_per_s=<x>
"""

import argparse
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve.launch import start_server, stop_server
from trainables import models, winners
from trainables.errors import ConfigError
from trainables.training import trial
from trainables.winners import Winner

TASKS = ("ner", "qg", "qa")


def first_winner(sweep_dir: Path) -> tuple[Winner, Path]:
    """The sweep's best winner, and its checkpoint."""
    winner = winners.read(sweep_dir).winners[0]
    return winner, sweep_dir / winner.checkpoint_path


def timed_evaluation(
    winner: Winner, checkpoint: Path, examples: int | None, prompt_lookup: bool
) -> tuple[float, trial.Evaluation]:
    values = winner.config | {"prompt_lookup": prompt_lookup, "full_eval_examples": examples}
    loaded = trial.load_checkpoint(values, checkpoint, "test")
    started = time.perf_counter()
    evaluation = loaded.evaluate()
    return time.perf_counter() - started, evaluation


def evaluation_speedup(winner: Winner, checkpoint: Path, examples: int | None, repeats: int) -> float:
    """Plain seconds over prompt lookup's, medians of `repeats` runs each, the sides alternating."""
    seconds = {True: [], False: []}
    decoding = {True: [], False: []}
    answers = {}
    for _ in range(repeats):
        for prompt_lookup in (False, True):
            elapsed, evaluation = timed_evaluation(winner, checkpoint, examples, prompt_lookup)
            seconds[prompt_lookup].append(elapsed)
            decoding[prompt_lookup].append(evaluation.generations.seconds)
            if (
                answers.setdefault(prompt_lookup, evaluation.generations.texts)
                != evaluation.generations.texts
            ):
                sys.exit(f"{winner.task}: answers differ between two runs of the same side")
            if prompt_lookup:
                accepted = evaluation.metrics["accepted_draft_length"]
    if answers[True] != answers[False]:
        differ = sum(a != b for a, b in zip(answers[True], answers[False], strict=True))
        sys.exit(f"{winner.task}: {differ} of {len(answers[True])} answers differ with prompt lookup")
    plain, looked_up = statistics.median(seconds[False]), statistics.median(seconds[True])
    plain_decoding, looked_up_decoding = statistics.median(decoding[False]), statistics.median(decoding[True])
    tokens = sum(evaluation.generations.row_tokens)
    print(f"{winner.task} ({winner.id}, {len(answers[True])} test rows, {tokens} answer tokens): evaluation "
          f"{plain:.1f} s plain, {looked_up:.1f} s with lookup ({plain / looked_up:.2f}x); decoding alone "
          f"{plain_decoding:.1f} s -> {looked_up_decoding:.1f} s ({plain_decoding / looked_up_decoding:.2f}x); "
          f"accepted draft length {accepted:.2f}", flush=True)  # fmt: skip
    return plain / looked_up


def completion(url: str, model: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return answer["choices"][0]["text"], answer["usage"]["completion_tokens"]


def served(url: str, model: str, prompts: list[str], clients: int, max_tokens: int) -> tuple[float, list]:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(
            pool.map(lambda prompt: completion(url, model, prompt, max_tokens), prompts[:clients])
        )  # warm-up
        started = time.perf_counter()
        answers = list(pool.map(lambda prompt: completion(url, model, prompt, max_tokens), prompts))
    return time.perf_counter() - started, answers


def serving_speedup(sweep_dir: Path, winner: Winner, requests: int, clients: int, repeats: int) -> float:
    """Generated tokens per second with prompt lookup over without, medians of `repeats` servers each."""
    plan = trial.prepare(winner.config | {"eval_split": "test"})
    test = plan.splits["test"]
    prompts = [plan.task.format_prompt(test[n % len(test)]) for n in range(requests)]
    tokenizer = models.load_tokenizer(models.resolve(plan.config.model))
    max_tokens = plan.task.generation_budget(tokenizer, plan.uncapped_train)
    rates = {True: [], False: []}
    answers = {}
    for _ in range(repeats):
        for prompt_lookup in (False, True):
            options = [] if prompt_lookup else ["--no-prompt-lookup"]
            process, url = start_server(sweep_dir, *options)
            try:
                seconds, answered = served(url, winner.id, prompts, clients, max_tokens)
            finally:
                stop_server(process)
            rates[prompt_lookup].append(sum(tokens for _, tokens in answered) / seconds)
            answers.setdefault(prompt_lookup, answered)
    if answers[True] != answers[False]:
        differ = sum(a != b for a, b in zip(answers[True], answers[False], strict=True))
        sys.exit(f"serving: {differ} of {requests} completions differ with prompt lookup")
    plain, looked_up = statistics.median(rates[False]), statistics.median(rates[True])
    tokens = sum(count for _, count in answers[True])
    print(
        f"serving {winner.id} ({requests} NER test prompts, {clients} clients, {tokens} tokens): "
        f"{plain:.0f} tokens/s plain, {looked_up:.0f} with lookup ({looked_up / plain:.2f}x)",
        flush=True,
    )
    return looked_up / plain


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("sweeps", nargs="+", type=Path)
    cli.add_argument("--examples", type=int, help="the test split's first N rows (default: all)")
    cli.add_argument("--requests", type=int, default=64)
    cli.add_argument("--clients", type=int, default=16)
    cli.add_argument("--repeats", type=int, default=1)
    args = cli.parse_args()
    sweeps = {}
    for sweep_dir in args.sweeps:
        try:
            winner, checkpoint = first_winner(sweep_dir)
        except ConfigError as error:
            cli.error(str(error))
        sweeps[winner.task] = (sweep_dir, winner, checkpoint)
    if missing := [task for task in TASKS if task not in sweeps]:
        cli.error(f"no sweep given for {', '.join(missing)}")
    speedups = {task: evaluation_speedup(*sweeps[task][1:], args.examples, args.repeats) for task in TASKS}
    serving = serving_speedup(*sweeps["ner"][:2], args.requests, args.clients, args.repeats)
    figures = " ".join(f"{task}={speedup:.2f}" for task, speedup in speedups.items())
    print(f"prompt_lookup_speedup: {figures} serve_tokens_per_s={serving:.2f}")


if __name__ == "__main__":
    main()
