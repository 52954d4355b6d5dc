"""The local runner with worker processes keeps every row.

Beam's FnApiRunner sends each bundle's input to its worker processes through output streams that
a timer thread flushes; a flush between a write and the buffer's reset drops the chunk written
there. `pipeline.runner.LocalRunner` turns that timer off. The test shortens Beam's timer from one
second to one millisecond, so the race that needs hundreds of MB at the default fires on 40 MB:
on Beam's own FnApiRunner this join loses rows in nearly every run, with `LocalRunner` none
(`benchmarks/README.md`, "Local runner: rows lost by the data plane's timer").
"""

from __future__ import annotations

import threading

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from pipeline.runner import LocalRunner, make_pipeline

PAIRS, CHUNK, PAYLOAD = 20_000, 500, 2_000


def _left(start: int):
    for i in range(start, min(start + CHUNK, PAIRS)):
        yield f"{i:08x}", b"x" * PAYLOAD


def _right(start: int):
    for i in range(start, min(start + CHUNK, PAIRS)):
        yield f"{i:08x}", i


def _count(joined):
    _, sides = joined
    Metrics.counter("runner_test", "left").inc(len(list(sides["left"])))
    Metrics.counter("runner_test", "right").inc(len(list(sides["right"])))
    Metrics.counter("runner_test", "keys").inc()


def test_worker_processes_lose_no_rows_when_beam_flushes_on_a_timer(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
    pipeline = make_pipeline("local", [], 2)
    assert isinstance(pipeline.runner, LocalRunner)
    starts = pipeline | beam.Create(list(range(0, PAIRS, CHUNK))) | beam.Reshuffle()
    left = starts | "Left" >> beam.FlatMap(_left)
    right = starts | "Right" >> beam.FlatMap(_right)
    _ = {"left": left, "right": right} | beam.CoGroupByKey() | beam.Map(_count)
    result = pipeline.run()
    result.wait_until_finish()

    counters = result.metrics().query(MetricsFilter().with_namespace("runner_test"))["counters"]
    counts = {c.key.metric.name: c.committed for c in counters}
    assert counts == {"left": PAIRS, "right": PAIRS, "keys": PAIRS}
    # The runner's setting is its own: Beam's module value is back once the run is over.
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 1


#: Shared by the two runs of the next test: Beam pickles a step's function, so a step reaches
#: these by its module's name rather than carrying copies.
_BOTH_RUNNING = threading.Barrier(2, timeout=60)
_SEEN: list[int] = []


def _meet(element):
    _BOTH_RUNNING.wait()  # BrokenBarrierError if the other run cannot start meanwhile
    _SEEN.append(worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    return element


def _run_meeting() -> None:
    pipeline = make_pipeline("local")
    _ = pipeline | beam.Create([0]) | beam.Map(_meet)
    pipeline.run().wait_until_finish()


def test_runs_in_progress_together_all_run_untimed_and_restore_beams_value(monkeypatch):
    """Two in-process runs that overlap (each waits inside a step until the other is there) both
    see the timer off, neither waits for the other to end, and Beam's value is back after both."""
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
    threads = [threading.Thread(target=_run_meeting) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert _SEEN == [0, 0]
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 1
