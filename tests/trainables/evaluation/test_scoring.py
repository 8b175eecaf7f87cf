"""The sweep's scoring workers: Ray tasks side by side, and jobs already in flight shared between
the search and the verdict (trainables.evaluation.scoring.ScoringPool)."""

import functools
import os
import sys
import time

import pytest
import ray

from sweeps.progress import CLEAR_LINE
from trainables.evaluation import scoring


def _items(directory, jobs: list) -> list[scoring.KeptJob]:
    """Each job as the result of its own file under directory."""
    directory.mkdir(exist_ok=True)
    return [scoring.KeptJob(directory / f"{index}.json", "c", job) for index, job in enumerate(jobs)]


def test_workers_score_as_ray_tasks_side_by_side_keep_the_results_and_the_jobs_order(
    capsys, monkeypatch, tmp_path, local_ray
):
    workers = scoring.ScoringPool({"cpu": 1, "gpu": 0}, concurrency=2)
    items = _items(tmp_path / "ordered", [functools.partial(dict, index=index) for index in range(5)])
    ordered = workers.run(items, "jobs")
    logged = capsys.readouterr().out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # on a terminal: one line redrawn
    processes = workers.run(_items(tmp_path / "processes", [lambda: {"pid": os.getpid()}] * 4), "jobs")
    shown = capsys.readouterr().out
    assert ordered == [{"checkpoint": "c", "index": index} for index in range(5)]
    assert [item.saved() for item in items] == ordered  # each kept in its file
    assert logged == "scoring 5 jobs\n" + "".join(f"  scored {done}/5 jobs\n" for done in range(1, 6))
    assert (
        shown
        == "scoring 4 jobs\n" + "".join(f"{CLEAR_LINE}  scored {done}/4 jobs" for done in range(1, 5)) + "\n"
    )
    assert os.getpid() not in [result["pid"] for result in processes]  # in Ray's workers, not here
    assert workers.in_flight == {}


def _sleeping(seconds: float):
    """A job (pickled by value, as a closure) that sleeps and says when it started and ended."""

    def job() -> dict:
        started = time.time()
        time.sleep(seconds)
        return {"started": started, "ended": time.time()}

    return job


def _running_until(gate, seconds: float = 120.0):
    """A job that runs until the file `gate` exists (an event the test sets, seen across processes),
    then says when it started and ended; past `seconds` without it, it fails."""

    def job() -> dict:
        started, deadline = time.time(), time.monotonic() + seconds
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} was not created within {seconds} s")
            time.sleep(0.05)
        return {"started": started, "ended": time.time()}

    return job


def test_a_job_already_in_flight_is_waited_for_not_started_again_and_holds_a_slot(
    tmp_path, local_ray, counting_workers
):
    workers = counting_workers
    other_may_end = tmp_path / "other-may-end"
    early, other = _items(tmp_path / "early", [_sleeping(3.0), _running_until(other_may_end)])
    workers.start(early)  # as the search starts it (sweeps.early_measurements)
    workers.start(other)  # not asked for next, and running until told: it holds one of the two slots
    workers.start(early)  # already in flight: not started twice
    assert len(workers.submitted) == 2

    later = _items(tmp_path / "later", [_sleeping(0.0)] * 2)
    results = workers.run([early, *later], "jobs")
    assert results[0] == early.saved()
    # Two slots, both held by the jobs in flight: those started here waited for one to end, then
    # ran one at a time beside the other.
    assert min(result["started"] for result in results[1:]) >= early.saved()["ended"]
    assert results[2]["started"] >= results[1]["ended"]
    assert other.key in workers.in_flight  # still running, not waited for
    other_may_end.touch()
    assert workers.run([other], "jobs") == [other.saved()]  # waited for when asked for
    assert len(workers.submitted) == 4  # each job once
    assert workers.in_flight == {}


def test_a_job_in_flight_that_failed_is_started_again_by_the_verdict(tmp_path, local_ray, counting_workers):
    marker = tmp_path / "failed-once"

    def fails_the_first_time() -> dict:
        if not marker.exists():
            marker.touch()
            raise RuntimeError("out of memory, say")
        return {"scored": True}

    workers = counting_workers
    (item,) = _items(tmp_path / "jobs", [fails_the_first_time])
    workers.start(item)
    assert workers.run([item], "jobs") == [{"checkpoint": "c", "scored": True}]
    assert len(workers.submitted) == 2


def test_a_job_this_call_started_that_fails_fails_the_call(tmp_path, local_ray):
    (item,) = _items(tmp_path / "jobs", [functools.partial(int, "not a number")])
    with pytest.raises(ray.exceptions.RayTaskError):
        scoring.ScoringPool({"cpu": 1, "gpu": 0}, concurrency=2).run([item], "jobs")


def test_a_job_in_flight_that_fails_unasked_for_leaves_the_call_to_its_own_jobs(
    tmp_path, local_ray, counting_workers, capsys
):
    (failing,) = _items(tmp_path / "search", [functools.partial(int, "not a number")])
    workers = counting_workers
    workers.start(failing)  # the search's, and not what the verdict asks for next
    asked = _items(tmp_path / "asked", [_sleeping(1.0)])
    assert workers.run(asked, "jobs") == [asked[0].saved()]
    assert failing.saved() is None and failing.key not in workers.in_flight  # left to a later call
    assert "scoring search failed" in capsys.readouterr().err
