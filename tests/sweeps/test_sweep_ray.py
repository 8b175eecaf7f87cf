"""Real sweeps: a subprocess running `python -m sweeps.run` on the tiny model with real Ray,
real Optuna and real ASHA; a resume after the driver is killed; a two-node Ray cluster."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

from analysis import load
from sweeps import study
from sweeps.settings import default_methods
from trainables.methods import BASELINE, trained_methods
from trainables.training import trial

pytestmark = pytest.mark.slow


def _sweep(tiny_model, storage, *extra, background=False, env=None):
    command = [
        sys.executable, "-m", "sweeps.run", "qg", "--smoke", "--model", tiny_model, "--storage", str(storage),
        "--concurrency", "2", *extra,
    ]  # fmt: skip
    if background:
        return subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)


def _records(sweep_dir: Path) -> dict[str, dict]:
    records = (json.loads(p.read_text()) for p in sweep_dir.glob("*/trial_record.json"))
    return {record["trial_id"]: record for record in records}


def test_smoke_sweep_end_to_end(smoke_sweep, tiny_model):
    done, sweep_dir = smoke_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "Ray dashboard: http://127.0.0.1:" in done.stdout and "`ray get-auth-token` prints it" in done.stdout
    )
    trials = pl.read_csv(sweep_dir / "trials.csv")
    required = ["trial_id", "method", "status", "quality", "cost_usd", "train_time_s", "latency_s",
                "tokens_per_s", "trainable_params", "error", "lora.learning_rate", "lora.rank",
                "prompt_tuning.learning_rate", "truncated_rate", "quality_full_validation"]  # fmt: skip
    assert set(required) <= set(trials.columns)
    assert set(default_methods(tiny_model)) == set(trials["method"]) - {"base"} and "base" in trials["method"]
    searched = trials.filter((pl.col("method") != "base") & ~pl.col("finalist_rerun"))
    assert searched.height == len(default_methods(tiny_model))
    # --finalist-seeds 2: the top of the front (up to 3) again, same hyperparameters, the next seed.
    reruns = trials.filter(pl.col("finalist_rerun"))
    assert 1 <= reruns.height <= 3 and (reruns["seed"] == 1).all() and (searched["seed"] == 0).all()
    assert set(reruns["config_without_seed"]) <= set(searched["config_without_seed"])
    assert trials["status"].is_in(["completed", "stopped_early"]).all()
    assert trials["quality"].is_not_null().all() and (trials["cost_usd"] > 0).all()
    assert trials["truncated_rate"].is_between(0.0, 1.0).all()
    assert pl.read_parquet(sweep_dir / "trials.parquet").height == trials.height
    assert "quality" in done.stdout and "trials.csv" in done.stdout  # the closing summary


def test_reused_workers_keep_each_trials_record_in_its_own_directory(smoke_sweep):
    _, sweep_dir = smoke_sweep
    searched = [json.loads(path.read_text()) for path in sweep_dir.glob(f"*/{trial.RECORD_FILE}")]
    # Two worker processes at a time ran every searched trial, one after another.
    assert len({record["worker_pid"] for record in searched}) < len(searched)
    for path in sweep_dir.glob(f"**/{trial.RECORD_FILE}"):
        record = json.loads(path.read_text())
        assert path.parent.name.startswith(record["trial_id"][:8]), path
        assert record["config"]["method"] in path.parent.name, path


def test_the_baselines_run_in_the_search_unseen_by_optuna_and_never_stopped(smoke_sweep):
    _, sweep_dir = smoke_sweep
    searched = _records(sweep_dir)  # the search's own experiment: no stage of their own
    bases = [record for record in searched.values() if record["config"]["method"] == BASELINE]
    assert bases and all(record["status"] == "completed" for record in bases)
    assert not (sweep_dir / load.BASELINES_DIR).exists()
    # Optuna's study holds the trained trials alone: a baseline is no point of its space.
    optuna_trials = study.load(sweep_dir).trials
    assert len(optuna_trials) == len(searched) - len(bases)
    assert {t.params["method"] for t in optuna_trials} <= set(trained_methods())


def _session_processes(session: int) -> list[str]:
    """The live processes (`pid name`) of a session: a process started with start_new_session
    leads one, whose id is its pid, and every process it starts stays in it unless it calls setsid."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text()
        except OSError:  # ended while we looked
            continue
        # pid (name) state ppid pgrp session ...: the name may hold spaces and parentheses.
        name = fields[fields.index("(") + 1 : fields.rindex(")")]
        state, _, _, sid = fields[fields.rindex(")") + 1 :].split()[:4]
        if int(sid) == session and state not in ("Z", "X"):  # a zombie writes nothing
            alive.append(f"{stat.parent.name} {name}")
    return alive


def _wait_until_ended(session: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (alive := _session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"still running {seconds} s after the kill: {alive}"


def _finished_as_tune_saved_it(sweep_dir: Path) -> dict[str, dict]:
    """The completed trials whose completion the driver has saved in Tune's experiment state: what a
    resume can know. (One that completed after the driver's last save is restored from the last
    checkpoint Tune saved, and trains again from there.)"""
    if not any(sweep_dir.glob(load.EXPERIMENT_STATE)):
        return {}
    states = load.tune_states(sweep_dir, live=True)
    terminated = set(states.filter(pl.col("tune_status") == "TERMINATED")["trial_dir"])
    return {
        record["trial_id"]: record
        for path in sweep_dir.glob("*/trial_record.json")
        if (record := json.loads(path.read_text()))["status"] == "completed"
        and str(path.parent) in terminated
    }


def test_killed_driver_resumes_without_losing_or_rerunning_trials(tiny_model, tmp_path):
    samples = 4
    budget = ["--name", "resumable", "--samples", str(samples), "--concurrency", "1", "--max-steps", "6"]
    driver = _sweep(tiny_model, tmp_path, *budget, background=True)
    sweep_dir = tmp_path / "qg" / "resumable"
    deadline = time.time() + 400
    while time.time() < deadline:
        finished = _finished_as_tune_saved_it(sweep_dir)
        if len(finished) >= 2:
            break
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    driver.wait()
    assert len(finished) >= 2, "no trial finished before the deadline"
    # Ray starts each worker in a process group of its own, which the kill above spares: a trial
    # still running writes to the sweep until it sees its node gone. The resume reads the sweep
    # once the last process of the driver's session has ended.
    _wait_until_ended(session=driver.pid, seconds=120)

    resumed = _sweep(tiny_model, tmp_path, *budget[:-4], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _records(sweep_dir)
    for trial_id, before in finished.items():
        assert after[trial_id]["status"] == "completed"
        assert after[trial_id]["metrics"]["train_time_s"] == before["metrics"]["train_time_s"], "retrained"
    trained = pl.read_csv(sweep_dir / "trials.csv").filter(pl.col("method") != "base")
    # Tune snapshots the experiment at most every 10 s: a trial that started after the last
    # snapshot is unknown to the resumed sweep, which runs another in its place. Its record stays,
    # marked lost, and it is not counted among the sweep's samples.
    assert trained.filter(pl.col("status") != "lost").height == samples
    assert trained.filter(pl.col("status") == "lost").height == trained.height - samples <= 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_node(temp_dir: Path, *arguments: str, env: dict) -> subprocess.Popen:
    """One Ray node with its own temp dir, as on its own host, in its own process group: stopping it
    stops nothing else on this machine (`ray stop` would stop every Ray here)."""
    command = [
        "ray",
        "start",
        "--block",
        f"--temp-dir={temp_dir}",
        "--num-cpus",
        "1",
        "--disable-usage-stats",
    ]
    log = temp_dir / "start.log"
    with log.open("w") as output:
        node = subprocess.Popen(
            [*command, *arguments], stdout=output, stderr=output, start_new_session=True, env=env
        )
    deadline = time.time() + 120
    while "Ray runtime started." not in log.read_text() and node.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert "Ray runtime started." in log.read_text(), log.read_text()[-3000:]
    return node


def _stop(node: subprocess.Popen) -> None:
    os.killpg(node.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        node.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # what did not stop by then
        os.killpg(node.pid, signal.SIGKILL)
    node.wait()


def test_every_trial_of_a_two_node_cluster_has_its_record_in_storage(tiny_model, tmp_path):
    port = _free_port()
    # Separate temp dirs, as on separate hosts: what a trial leaves in its node's staging never
    # reaches storage unless Ray or the trial puts it there. Short paths: Ray's sockets live there.
    temp_dirs = [Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")) for _ in range(2)]
    # Ray turns token authentication on only where ~/.ray/auth_token exists: pin one mode for all.
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    nodes = []
    try:
        nodes.append(
            _ray_node(temp_dirs[0], "--head", f"--port={port}", "--include-dashboard=false", env=env)
        )
        nodes.append(_ray_node(temp_dirs[1], f"--address=127.0.0.1:{port}", env=env))
        # Two methods: a trial for each node; what each trial trains does not matter here.
        two_trials = ["--methods", "lora,ia3"]
        done = _sweep(
            tiny_model, tmp_path, "--name", "cluster", *two_trials, "--address", f"127.0.0.1:{port}", env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # Ray gives each trial a working directory on the node that runs it.
        working_dirs = "session_latest/artifacts/*/*/working_dirs/*"
        ran = {path.name for temp in temp_dirs for path in temp.glob(working_dirs)}
    finally:
        for node in reversed(nodes):
            _stop(node)
        for temp in temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)
    stored = list((tmp_path / "qg" / "cluster").glob(f"**/{trial.RECORD_FILE}"))
    assert len({json.loads(path.read_text())["node_id"] for path in stored}) == 2
    assert ran == {path.parent.name for path in stored}  # every trial that ran, on either node
