"""The sync runner's timing rules, driven by a fake clock."""

from __future__ import annotations

import math
import time

import pytest

from kr_core.runner import SyncRunner


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.fail = False

    def __call__(self, full: bool) -> None:
        self.calls.append(full)
        if self.fail:
            raise RuntimeError("boom")


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def sync() -> Recorder:
    return Recorder()


def make(sync: Recorder, clock: FakeClock, **kwargs: float) -> SyncRunner:
    settings = {"min_interval": 1.0, "resync_interval": 60.0, "retry_initial": 2.0, "retry_max": 16.0}
    settings.update(kwargs)
    return SyncRunner(sync, clock=clock, **settings)


def test_never_syncs_before_ready(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.request()
    clock.advance(1000)
    assert runner.due_in() == math.inf
    assert runner.run_once() is None
    assert sync.calls == []
    runner.set_ready()
    assert runner.run_once() is True
    assert sync.calls == [True], "the first sync is full"


def test_min_interval_and_coalescing(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.set_ready()
    runner.run_once()
    for _ in range(50):  # a burst right after a sync
        runner.request()
    assert runner.due_in() == pytest.approx(1.0)
    assert runner.run_once() is None
    clock.advance(0.5)
    assert runner.run_once() is None
    clock.advance(0.5)
    assert runner.run_once() is True
    assert sync.calls == [True, False], "the burst became one partial sync"
    assert runner.run_once() is None, "nothing pending after the coalesced sync"


def test_request_after_quiet_period_runs_at_once(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.set_ready()
    runner.run_once()
    clock.advance(10)
    runner.request()
    assert runner.due_in() == 0
    assert runner.run_once() is True


def test_periodic_full_resync(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.set_ready()
    runner.run_once()
    assert runner.due_in() == pytest.approx(60.0)
    clock.advance(59.9)
    assert runner.run_once() is None
    clock.advance(0.1)
    assert runner.run_once() is True
    assert sync.calls == [True, True]


def test_failure_backoff_then_full(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.set_ready()
    runner.run_once()
    sync.fail = True
    runner.request()
    clock.advance(5)
    assert runner.run_once() is False
    assert runner.failures == 1
    assert runner.requested_at is not None, "an unserved request stays visible to health checks"
    assert runner.due_in() == pytest.approx(2.0)
    runner.request()  # requests during backoff do not bypass it
    assert runner.run_once() is None
    clock.advance(2.0)
    assert runner.run_once() is False
    assert runner.due_in() == pytest.approx(4.0), "backoff doubles"
    for expected in (8.0, 16.0, 16.0):
        clock.advance(runner.due_in())
        runner.run_once()
        assert runner.due_in() == pytest.approx(expected), "backoff is capped at retry_max"
    sync.fail = False
    clock.advance(runner.due_in())
    assert runner.run_once() is True
    assert sync.calls[-1] is True, "the sync after a failure is full"
    assert runner.failures == 0
    assert runner.requested_at is None
    runner.request()
    clock.advance(1)
    runner.run_once()
    assert sync.calls[-1] is False, "later syncs are partial again"


def test_full_request_is_kept(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.set_ready()
    runner.run_once()
    runner.request(full=True)
    runner.request()
    clock.advance(1)
    runner.run_once()
    assert sync.calls == [True, True]


def test_full_resync_happens_under_steady_churn(sync: Recorder, clock: FakeClock) -> None:
    runner = make(sync, clock)
    runner.set_ready()
    runner.run_once()
    for _ in range(200):  # a change every 2 s for 400 s: partial syncs all along
        clock.advance(2)
        runner.request()
        runner.run_once()
    full_syncs = sum(sync.calls)
    assert 7 <= full_syncs <= 8, f"a full sync every 60 s of 400 s, plus the first; got {full_syncs}"


def test_run_forever_syncs_on_request_and_stops_while_waiting() -> None:
    import threading

    recorder = Recorder()
    runner = SyncRunner(recorder, min_interval=0.0, resync_interval=3600)
    thread = threading.Thread(target=runner.run_forever)
    thread.start()
    try:
        runner.request()
        time.sleep(0.2)
        assert recorder.calls == [], "not ready: the request waits"
        runner.set_ready()
        deadline = time.monotonic() + 2
        while not recorder.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.calls == [True]
        runner.request()
        deadline = time.monotonic() + 2
        while len(recorder.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.calls == [True, False]
    finally:
        runner.stop()
        thread.join(timeout=1)
    assert not thread.is_alive(), "stop() must wake a waiting loop"
    assert runner.due_in() == math.inf
