"""Training tokens/s of our loop against a plain Hugging Face Trainer + PEFT script.

python bench/train_throughput.py [--model embedded] [--method lora] [--steps 40] [--rounds 2]

Both sides train the same base model with the same PEFT config, data, batch size, learning rate
and schedule for the same number of steps, alternating in one process. Tokens are the real
(non-pad) tokens of the examples each side trained on. Prints each run and the ratio ours/Trainer.
"""

import argparse
import time

import by_hand  # bench/by_hand.py: the Trainer + PEFT side

from trainables import encoding, models
from trainables.methods import METHODS
from trainables.training import loop, trial


def ours(plan, model_path, features, pad_id) -> float:
    model = by_hand.fresh_model(plan, model_path)
    optimizer, scheduler = loop.make_optimizer(model, plan.config, plan.total_steps)
    state = loop.TrainState()
    started = time.perf_counter()
    loop.train(
        model, features, plan.config, METHODS[plan.config.method], plan.total_steps,
        optimizer, scheduler, state, pad_id, on_eval=lambda state: None,
    )  # fmt: skip
    return state.tokens / (time.perf_counter() - started)


def hf_trainer(plan, model_path, features, tokenizer, output_dir) -> float:
    return by_hand.train_with_trainer(plan, model_path, features, tokenizer, output_dir).tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--method", default="lora", choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    values = {"task": "qg", "method": args.method, "model": args.model, "max_steps": args.steps}
    plan = trial.prepare(values | {"batch_size": args.batch_size, "eval_every": 10**9})
    model_path = models.resolve(args.model)
    tokenizer = models.load_tokenizer(model_path)
    features = encoding.encode_examples(plan.task, tokenizer, plan.splits["train"], plan.config.max_length)
    results = {"ours": [], "trainer": []}
    for round_number in range(args.rounds):
        results["ours"].append(ours(plan, model_path, features, tokenizer.pad_token_id))
        results["trainer"].append(
            hf_trainer(plan, model_path, features, tokenizer, f"/tmp/bench-trainer-{round_number}")
        )
        print(
            f"round {round_number + 1}: ours {results['ours'][-1]:.0f} tok/s, Trainer {results['trainer'][-1]:.0f} tok/s"
        )
    best_ours, best_trainer = max(results["ours"]), max(results["trainer"])
    print(
        f"{args.method} on {args.model}, {args.steps} steps x batch {args.batch_size}, best of {args.rounds} "
        f"rounds: ours {best_ours:.0f} tok/s, Trainer+PEFT {best_trainer:.0f} tok/s"
    )
    print(f"train_throughput_ratio: {best_ours / best_trainer:.2f}")


if __name__ == "__main__":
    main()
