"""python -m serve.run DIR [DIR ...] [options]: serve sweeps' winning adapters behind an OpenAI-compatible API.

Each DIR is an experiment directory with winners.json (written at the end of every sweep, or by
`python -m analysis.report DIR`); sweeps on one base model share its weights. The server keeps
running until Ctrl-C.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from serve.adapters import Choice, load_registry
from serve.capacity import available_bytes, check_fits, weights_bytes
from serve.limits import LOOPBACK_NAMES, Limits
from trainables.config import ConfigError

API_KEY_VARIABLE = "PEFT_SWEEPS_API_KEY"
# Ray's switch for a Ray of this machine alone (its default on macOS and Windows): the node's address
# is then loopback, and so is every port Ray opens (GCS, raylet, agents, workers). Read when Ray is
# imported. On Linux Ray otherwise takes the address that routes outside, and binds all interfaces.
LOCAL_RAY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m serve.run", description=__doc__.split("\n\n")[0])
    cli.add_argument(
        "experiment_dirs", type=Path, nargs="+", metavar="DIR", help="sweep directories with winners.json"
    )
    cli.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it beyond this machine")
    cli.add_argument("--port", type=int, default=8000)
    chosen = cli.add_mutually_exclusive_group()
    chosen.add_argument("--top", type=int, help="serve only each sweep's K best winners")
    chosen.add_argument(
        "--trials",
        type=_trial_names,
        help="serve these trials (trial ids or serving ids, comma-separated) instead of the winners",
    )
    chosen.add_argument(
        "--pareto", action="store_true", help="serve every trial on each sweep's Pareto front"
    )
    cli.add_argument(
        "--adapter-root",
        type=Path,
        action="append",
        default=[],
        help="a directory whose sweeps POST /v1/adapters may add (repeatable; needs an API key)",
    )
    keys = cli.add_mutually_exclusive_group()
    keys.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE})")
    keys.add_argument(
        "--api-key-file", type=Path, help="read the key from this file: it then shows in no process list"
    )
    cli.add_argument(
        "--insecure-no-api-key",
        action="store_true",
        help="serve beyond loopback (--host) without an API key, knowing anyone who reaches it may use it",
    )
    cli.add_argument(
        "--metrics-port",
        type=int,
        help="where Ray's Prometheus endpoint serves the metrics, /metrics (default: a port Ray picks; "
        "a Ray this server starts only)",
    )
    for limit in Limits.options():
        # Derived from the machine when not given (limits_from); the others default as Limits does.
        default = None if limit.name == "cpus_per_replica" else limit.default
        cli.add_argument(
            f"--{limit.name.replace('_', '-')}", type=limit.type, default=default, help=limit.metadata["help"]
        )
    cli.add_argument(
        "--separate-adapter-batches",
        action="store_true",
        help="batch each adapter's requests apart instead of mixing LoRA adapters (to measure what mixing gains)",
    )
    cli.add_argument(
        "--no-prompt-lookup",
        action="store_true",
        help="decode greedy requests token by token, without drafting from the prompt (the same answers)",
    )
    return cli


def _trial_names(names: str) -> tuple[str, ...]:
    if not (chosen := tuple(name.strip() for name in names.split(",") if name.strip())):
        raise argparse.ArgumentTypeError("names no trial")
    return chosen


def limits_from(args: argparse.Namespace, gpus: int, cores: int) -> Limits:
    given = {limit.name: getattr(args, limit.name) for limit in Limits.options()}
    if given["cpus_per_replica"] is None:
        given["cpus_per_replica"] = 1 if gpus else max(1, cores // max(1, args.replicas))
    at_least_one = {name: value for name, value in given.items() if name != "batch_wait_s"}
    if bad := [f"--{name.replace('_', '-')}" for name, value in at_least_one.items() if value <= 0]:
        raise ConfigError(f"{', '.join(bad)}: must be positive")
    if args.batch_wait_s < 0:
        raise ConfigError("--batch-wait-s: must not be negative")
    if given["http_timeout_s"] <= given["request_timeout_s"]:
        raise ConfigError(
            "--http-timeout-s: must be above --request-timeout-s, so that a request that times out gets "
            "the gateway's 504 in OpenAI's shape rather than Ray's plain-text 408"
        )
    return Limits(
        **given,
        mix_adapters=not args.separate_adapter_batches,
        prompt_lookup=not args.no_prompt_lookup,
        gpus_per_replica=1.0 if gpus else 0.0,
        loopback_hosts_only=is_loopback(args.host),
    )


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def api_key_from(args: argparse.Namespace, environment: dict[str, str]) -> str | None:
    """The key requests must bear: --api-key, --api-key-file or $PEFT_SWEEPS_API_KEY; None for
    none, which only a server on loopback, or one told --insecure-no-api-key, may run without."""
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text().strip()
        except OSError as error:
            raise ConfigError(f"--api-key-file: cannot read {args.api_key_file} ({error.strerror})") from None
        source = f"--api-key-file {args.api_key_file}"
    elif args.api_key is not None:
        key, source = args.api_key, "--api-key"
    elif API_KEY_VARIABLE in environment:
        key, source = environment[API_KEY_VARIABLE], f"${API_KEY_VARIABLE}"
    else:
        key, source = None, None
    if key is not None and not key.strip():
        raise ConfigError(f"{source}: the API key is empty; give one, or none to serve on loopback only")
    if key is None and not is_loopback(args.host) and not args.insecure_no_api_key:
        raise ConfigError(
            f"--host {args.host}: serving beyond this machine needs an API key (--api-key-file, --api-key "
            f"or ${API_KEY_VARIABLE}), or --insecure-no-api-key to serve anyone who reaches it"
        )
    return key


def adapter_roots(args: argparse.Namespace, api_key: str | None) -> tuple[Path, ...]:
    """The --adapter-root directories, symlinks resolved, as the gateway compares paths with them."""
    if args.adapter_root and api_key is None:
        raise ConfigError("--adapter-root: the admin API that adds adapters needs an API key; give one")
    if missing := [root for root in args.adapter_root if not root.is_dir()]:
        raise ConfigError(f"--adapter-root {missing[0]}: no such directory")
    return tuple(Path(os.path.realpath(root)) for root in args.adapter_root)


def http_options(args: argparse.Namespace, limits: Limits) -> dict:
    """Ray Serve's HTTPOptions for the proxy: where it listens, and how long a request may take."""
    return {"host": args.host, "port": args.port, "request_timeout_s": limits.http_timeout_s}


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # DIRs may follow options
    try:
        choice = Choice(top=args.top, trials=args.trials or (), pareto=args.pareto)
        registry = load_registry(args.experiment_dirs, choice)
        import torch

        gpus = torch.cuda.device_count()
        limits = limits_from(args, gpus, len(os.sched_getaffinity(0)))
        api_key = api_key_from(args, dict(os.environ))
        roots = adapter_roots(args, api_key)
        # On GPUs each replica fills a GPU of its own; on the CPU they share this machine's memory.
        check_fits(weights_bytes(registry), 1 if gpus else limits.replicas, available_bytes(gpus))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # A Ray of its own, on loopback, unless told to join a cluster: not whichever `ray start` left
    # running on this machine.
    joining = bool(os.environ.get("RAY_ADDRESS"))
    if not joining:
        os.environ.setdefault(LOCAL_RAY_VARIABLE, "0")
    import ray
    from ray import serve

    from serve.app import build, key_digest

    own = {} if joining or args.metrics_port is None else {"_metrics_export_port": args.metrics_port}
    ray.init(
        None if joining else "local",
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        **own,
    )
    serve.start(http_options=http_options(args, limits))
    try:
        digest = key_digest(api_key) if api_key else None
        serve.run(build(registry, limits, digest, roots), name="peft-sweeps", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        bases = ", ".join(f"{base_id} ({path})" for base_id, path in registry.bases.items())
        print(f"serving {len(registry.adapters)} adapters on {bases} at {url}/v1", flush=True)
        print(f"models: {', '.join([*registry.bases, *registry.adapters])}; Ctrl-C stops", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
