"""The platform against the by-hand study, on the same machine, model, data and steps per trial.

python bench/versus_by_hand.py [TASK] [sweep options...]   (default: qg, the default sweep)

- By hand: each of the five mission methods once, with Hugging Face `Trainer` + PEFT at the
  reference studies' settings (lr 2e-4, r 8, alpha 16, dropout 0.05, linear schedule with 10%
  warm-up), for the steps a sweep trial gets, one after another, each scored on the whole test
  split. Its best is picked on test, as a spreadsheet of test scores picks it: that flatters the
  by-hand side, never the platform.
- The platform: `python -m sweeps.run TASK [sweep options]` as a user runs it; its best is the
  verdict's best on validation quality, scored on the same test split. Both sides are picked on
  quality alone (by hand on test, the platform on validation). The verdict's top-ranked winner, the
  best trade-off of quality against dollars, latency and size, is compared too, on the line before.

Prints each side's wall time, dollars (wall time at the machine's price, the same price for both)
and best test quality with its 95% bootstrap interval, then the paired difference. The last line:
`versus_by_hand: quality_gain=<platform - by hand> time_ratio=<platform wall / by-hand wall>`.
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import by_hand  # bench/by_hand.py: the Trainer + PEFT side
import sweep_overhead  # bench/sweep_overhead.py: runs the sweep and accounts for its time
import torch

from analysis import verdict
from sweeps import run
from trainables import encoding, measure, models
from trainables.evaluation import scoring
from trainables.training import trial
from trainables.winners import WINNERS_FILE

MISSION_METHODS = ("qlora", "lora", "adalora", "ia3", "prompt_tuning")


@dataclass(frozen=True)
class Side:
    name: str
    wall_s: float
    best: str
    per_example: list[float]


def machine_price() -> float:
    """Dollars per hour of this whole machine: both sides hold all of it for their wall time."""
    share = measure.Share(gpus=float(torch.cuda.device_count()), cpus=float(os.cpu_count() or 1))
    return measure.hourly_price(share)


def by_hand_study(settings, scratch: Path) -> Side:
    started = time.perf_counter()
    scores = {}
    for method in MISSION_METHODS:
        plan = trial.prepare(settings.trial_constants() | {"method": method, "eval_split": "test"})
        model_path = models.resolve(plan.config.model)
        tokenizer = models.load_tokenizer(model_path)
        features = encoding.encode_examples(
            plan.task, tokenizer, plan.splits["train"], plan.config.max_length
        )
        trained = by_hand.train_with_trainer(plan, model_path, features, tokenizer, scratch / method)
        evaluation = trial.evaluate(trained.model, tokenizer, plan, "", whole_split=True)
        scores[method] = evaluation.per_example
        print(
            f"  by hand: {method} {plan.total_steps} steps in {trained.seconds:.0f} s, "
            f"test quality {evaluation.metrics['quality']:.3f}",
            flush=True,
        )
    wall = time.perf_counter() - started
    best = max(scores, key=lambda method: sum(scores[method]) / len(scores[method]))
    return Side("by hand (Trainer + PEFT, one method after another)", wall, best, scores[best])


def platform_sweep(arguments: list[str], concurrency: int, storage: Path) -> tuple[Side, Side]:
    """The sweep's best on validation quality, and its top-ranked winner (the same trial or not)."""
    wall, sweep_dir = sweep_overhead.timed_sweep(arguments, storage)
    sweep_overhead.print_overhead(sweep_dir, wall, concurrency)
    winners = json.loads((sweep_dir / WINNERS_FILE).read_text())["winners"]
    best = next(winner for winner in winners if winner["best_on_validation"])
    return tuple(
        # The verdict scored its winners on the whole test split and kept their per-example scores.
        Side(
            "platform (python -m sweeps.run)",
            wall,
            f"{winner['id']} ({winner['method']})",
            json.loads((Path(winner["checkpoint_path"]).parent / scoring.TEST_SCORES_FILE).read_text())[
                "per_example"
            ],
        )
        for winner in (best, winners[0])
    )


def main() -> None:
    arguments = sweep_overhead.sweep_arguments(sys.argv[1:])
    settings = run.settings_of(run.parser().parse_args(arguments))
    scratch = Path(tempfile.mkdtemp(prefix="versus-by-hand-"))
    price = machine_price()
    print(f"{settings.task} on {settings.model}, {settings.max_steps} steps per trial; scratch in {scratch}")
    by_hand_side = by_hand_study(settings, scratch / "by-hand")
    platform_side, top_ranked = platform_sweep(arguments, settings.concurrency, scratch)
    sides = [by_hand_side, platform_side]
    lengths = {len(side.per_example) for side in sides}
    if len(lengths) != 1:
        sys.exit(f"the two sides were scored on different numbers of test examples: {sorted(lengths)}")
    indices = verdict.resample_indices(lengths.pop())
    for side in sides:
        quality = verdict.mean_interval(side.per_example, indices)
        print(
            f"{side.name}: wall {side.wall_s:.0f} s, ${measure.cost_usd(side.wall_s, price):.4f}; "
            f"best {side.best}, test quality {verdict.interval_words(quality)}"
        )
    top_ranked_gain = verdict.difference_interval(top_ranked.per_example, by_hand_side.per_example, indices)
    print(
        f"the verdict's top-ranked winner (the best trade-off), {top_ranked.best}, minus by hand: "
        f"{verdict.interval_words(top_ranked_gain)}"
    )
    gain = verdict.difference_interval(platform_side.per_example, by_hand_side.per_example, indices)
    print(
        f"quality gain, platform minus by hand, paired on {len(indices[0])} test examples: {verdict.interval_words(gain)}"
    )
    print(
        f"versus_by_hand: quality_gain={gain.value:.3f} quality_gain_ci95=[{gain.low:.3f},{gain.high:.3f}] "
        f"time_ratio={platform_side.wall_s / by_hand_side.wall_s:.2f}"
    )


if __name__ == "__main__":
    main()
