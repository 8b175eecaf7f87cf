"""python -m trainables.evaluation TASK [--model M] [--shots K] [--split test]: score the untouched model.

The reference point every fine-tuned adapter must beat, on all examples of a split.
"""

import argparse
import json
import sys

from trainables.errors import ConfigError
from trainables.methods import BASELINE
from trainables.tasks.data import DataError
from trainables.training import trial


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m trainables.evaluation", description=__doc__.splitlines()[0])
    cli.add_argument("task")
    cli.add_argument("--model", default="embedded")
    cli.add_argument("--shots", type=int, default=0)
    cli.add_argument("--split", choices=["validation", "test"], default="test")
    args = cli.parse_args(argv)
    values = {"task": args.task, "model": args.model, "method": BASELINE, "shots": args.shots}
    try:
        scores = trial.score_base_model(values, split=args.split).metrics
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({key: value for key, value in scores.items() if key != "sample_output"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
