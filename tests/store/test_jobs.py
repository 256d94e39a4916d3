"""The job queue in the store (SQLite and PostgreSQL): one worker per job, heartbeats, jobs of dead workers."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from predictor.store import (
    Device,
    Job,
    claim_job,
    fail_job,
    finish_job,
    get_job,
    heartbeat_job,
    register_device,
    requeue_stale_jobs,
    session_scope,
    submit_job,
)
from predictor.store.models import utc_now


@pytest.fixture
def device(factory: sessionmaker[Session]) -> Device:
    with session_scope(factory) as session:
        return register_device(session, name="jobs-cpu", backend="onnxruntime",
                               execution_provider="CPUExecutionProvider", runtime_version="1.0", threads=1, host="")


def test_a_job_goes_from_queued_to_finished_for_the_worker_that_took_it(factory: sessionmaker[Session],
                                                                        device: Device) -> None:
    with session_scope(factory) as session:
        queued = submit_job(session, "train", device)
    assert (queued.status, queued.device, queued.attempts, queued.worker) == ("queued", "jobs-cpu", 0, None)
    with session_scope(factory) as session:
        taken = claim_job(session, "worker-a")
        assert claim_job(session, "worker-b") is None, "one job, one worker"
    assert taken is not None and (taken.job_id, taken.status, taken.worker, taken.attempts) == (
        queued.job_id, "running", "worker-a", 1)
    with session_scope(factory) as session:
        assert not finish_job(session, queued.job_id, "worker-b", {"x": 1}), "not worker-b's job"
        assert heartbeat_job(session, queued.job_id, "worker-a")
        assert finish_job(session, queued.job_id, "worker-a", {"Gemm": {"mape": 0.1}})
    with session_scope(factory) as session:
        done = get_job(session, queued.job_id)
        assert get_job(session, "nope") is None
    assert done is not None and done.status == "finished" and done.result == {"Gemm": {"mape": 0.1}}
    assert done.finished_at is not None and done.error is None


def test_concurrent_workers_take_each_job_once(factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        queued = {submit_job(session, "train", device).job_id for _ in range(12)}
    taken: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            while True:
                with session_scope(factory) as session:
                    job = claim_job(session, name)
                if job is None:
                    return
                taken.setdefault(job.job_id, []).append(name)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert set(taken) == queued and all(len(names) == 1 for names in taken.values())


def test_jobs_of_a_dead_worker_run_again_then_fail(factory: sessionmaker[Session], device: Device) -> None:
    """A running job without a heartbeat for the stale time is queued again, until it was tried max times."""
    with session_scope(factory) as session:
        job_id = submit_job(session, "train", device).job_id

    def silence() -> None:  # the worker died: its last heartbeat ages
        with session_scope(factory) as session:
            session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utc_now() - timedelta(hours=1)))

    for attempt in (1, 2):
        with session_scope(factory) as session:
            taken = claim_job(session, f"worker-{attempt}")
        assert taken is not None and taken.attempts == attempt
        with session_scope(factory) as session:
            assert requeue_stale_jobs(session, stale_after_s=60, max_attempts=2) == 0, "its heartbeat is fresh"
        silence()
        with session_scope(factory) as session:
            assert requeue_stale_jobs(session, stale_after_s=60, max_attempts=2) == 1
            job = get_job(session, job_id)
            assert job is not None
        if attempt == 1:
            assert (job.status, job.worker) == ("queued", None)
            with session_scope(factory) as session:
                assert not finish_job(session, job_id, "worker-1", {}), "the dead worker's result is not taken"
    assert job.status == "failed" and "2 times" in (job.error or "")


def test_a_failure_is_one_line(factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        job_id = submit_job(session, "train", device).job_id
    with session_scope(factory) as session:
        claim_job(session, "w")
        assert fail_job(session, job_id, "w", "no measurements\n  on device\tjobs-cpu")
    with session_scope(factory) as session:
        job = get_job(session, job_id)
    assert job is not None and (job.status, job.error) == ("failed", "no measurements on device jobs-cpu")
