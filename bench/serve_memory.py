"""Serving memory: one server holding three tasks' winners on one base against three servers, one
per sweep, side by side.

python bench/serve_memory.py [--random-base] [--winners 3]

Writes a QG, an NER and a QA sweep's winners.json (--winners LoRA adapters each, random weights,
rank 8 on every linear layer) on one base: the embedded model, or with --random-base a random-weight
Llama of about 160M parameters (the embedded model's tokenizer), whose weights outweigh a process's
own memory as a real base's do. Starts `python -m serve.run QG NER QA`, sends every adapter a
request so that each is loaded, and measures the resident memory (RSS, and PSS, which counts a
shared page once) of its model replica and of the whole server (Ray's processes included); then
the same for three servers started one per sweep, all three running at once. The last line is
`three_servers_vs_one_replica_rss: <ratio>`. Run it alone on the machine.
"""

import argparse
import json
import tempfile
import urllib.request
from pathlib import Path

import psutil
from serve_throughput import make_winners
from transformers import LlamaConfig, LlamaForCausalLM

from serve.launch import start_server, stop_server
from trainables import embedded, models

TASKS = ("qg", "ner", "qa")
MIB = 2**20
# Ray names a replica's process after its deployment.
REPLICA_TITLE = "ServeReplica:peft-sweeps:AdapterServer"


def random_base(directory: Path) -> str:
    """A random-weight Llama of about 160M parameters with the embedded model's tokenizer."""
    tokenizer = models.load_tokenizer(str(embedded.ensure_built()))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def load_every_adapter(url: str) -> None:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as response:
        ids = [entry["id"] for entry in json.loads(response.read())["data"]]
    for model in ids:
        body = json.dumps({"model": model, "prompt": "Hello there", "max_tokens": 2}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()


def memory(process) -> dict[str, float]:
    """MiB resident in the server's model replicas (RSS and PSS) and in its whole process tree."""
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    replicas = [p for p in tree if REPLICA_TITLE in " ".join(p.cmdline())]
    if not replicas:
        raise RuntimeError("no model replica process found in the server's process tree")
    full = [p.memory_full_info() for p in replicas]
    return {
        "replicas": len(replicas),
        "replica_rss": sum(info.rss for info in full) / MIB,
        "replica_pss": sum(info.pss for info in full) / MIB,
        "server_rss": sum(p.memory_info().rss for p in tree) / MIB,
    }


def measured(sweeps: list[list[Path]]) -> dict[str, float]:
    """The summed memory of one server per list of sweeps, all running at once, every adapter loaded."""
    options = ("--cpus-per-replica", "1", "--max-adapters-per-replica", "64")
    started = []
    try:
        for directories in sweeps:
            process, url = start_server(*directories, *options)
            started.append(process)
            load_every_adapter(url)
        each = [memory(process) for process in started]
    finally:
        for process in started:
            stop_server(process)
    return {key: sum(figures[key] for figures in each) for key in each[0]}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument(
        "--random-base", action="store_true", help="a random-weight Llama of about 160M parameters"
    )
    cli.add_argument("--winners", type=int, default=3, help="LoRA winners per sweep")
    args = cli.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        base = random_base(root / "base") if args.random_base else str(embedded.ensure_built())
        print(f"base: {base} ({models.parameter_count(base) / 1e6:.1f}M parameters)", flush=True)
        sweeps = []
        for task in TASKS:
            (root / task).mkdir()
            make_winners(root / task, base, task, args.winners)
            sweeps.append(root / task)
        one = measured([sweeps])
        three = measured([[sweep] for sweep in sweeps])
    for label, figures in (("one server, three sweeps", one), ("three servers, one sweep each", three)):
        print(f"{label:>30}: {figures['replicas']:.0f} replica(s) RSS {figures['replica_rss']:7.0f} MiB "
              f"(PSS {figures['replica_pss']:7.0f} MiB); whole server(s) RSS {figures['server_rss']:7.0f} MiB",
              flush=True)  # fmt: skip
    print(f"three_servers_vs_one_replica_rss: {three['replica_rss'] / one['replica_rss']:.2f}")


if __name__ == "__main__":
    main()
