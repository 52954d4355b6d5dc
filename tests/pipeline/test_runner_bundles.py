"""The local runner hands a worker its bundle's input in bounded pieces.

Beam's local runner encodes a worker's whole share of a stage's input into one byte string and
sends it as one message, so a worker's memory grows with the collection. `LocalRunner` cuts the
share at element boundaries (`pipeline.runner.BUNDLE_CHUNK_BYTES`) and flushes after each piece.
These tests check that the pieces hold exactly Beam's bytes, in Beam's order, that none is much
larger than the limit, and that a real multi-process run with many pieces keeps every row.
The memory effect itself is measured in `benchmarks/local_runner_memory.py`.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import execution
from apache_beam.transforms import core, window
from apache_beam.utils import windowed_value

import pipeline.runner as runner
from pipeline.runner import LocalRunner, make_pipeline

LIMIT = 16 << 10


def _grouping_buffer(groups: int, payload: int) -> execution.GroupingBuffer:
    kv = coders.TupleCoder([coders.StrUtf8Coder(), coders.BytesCoder()])
    pre = coders.WindowedValueCoder(kv, coders.coders.GlobalWindowCoder())
    post = coders.WindowedValueCoder(
        coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.BytesCoder())]),
        coders.coders.GlobalWindowCoder(),
    )
    buffer = execution.GroupingBuffer(pre, post, core.Windowing(window.GlobalWindows()))
    for i in range(groups * 3):
        stream = coders.coder_impl.create_OutputStream()
        value = windowed_value.WindowedValue(
            (f"k{i % groups:05d}", bytes([i % 251]) * payload), 0, [window.GlobalWindow()]
        )
        pre.get_impl().encode_to_stream(value, stream, True)
        buffer.append(stream.get())
    return buffer


def test_grouping_pieces_hold_beams_bytes_in_beams_order(monkeypatch):
    monkeypatch.setattr(runner, "BUNDLE_CHUNK_BYTES", LIMIT)
    beams = runner.BEAMS_GROUPING_PARTITION(_grouping_buffer(400, 300), 2)
    ours = runner._grouping_partition(_grouping_buffer(400, 300), 2)
    assert [b"".join(part) for part in ours] == [b"".join(part) for part in beams]
    assert all(len(part) == 1 for part in beams)
    # ~120 KB per worker: several pieces each, none past the limit by more than one group (~1 KB).
    assert all(len(part) >= 5 for part in ours)
    assert max(len(piece) for part in ours for piece in part) < LIMIT + 1_000


def test_list_pieces_hold_beams_bytes(monkeypatch):
    monkeypatch.setattr(runner, "BUNDLE_CHUNK_BYTES", LIMIT)
    impl = coders.BytesCoder().get_impl()
    stream = coders.coder_impl.create_OutputStream()
    for i in range(500):
        impl.encode_to_stream(bytes([i % 251]) * 200, stream, True)
    whole = stream.get()

    def buffer():
        listed = execution.ListBuffer(impl)
        listed.append(whole)  # one piece for three workers: the re-encoding branch
        return listed

    beams = runner.BEAMS_LIST_PARTITION(buffer(), 3)
    ours = runner._list_partition(buffer(), 3)
    assert [b"".join(part) for part in ours] == [b"".join(part) for part in beams]
    assert max(len(piece) for part in ours for piece in part) < LIMIT + 300
    assert sum(len(part) for part in ours) > 3


PAIRS, CHUNK, PAYLOAD = 6_000, 500, 1_500


def _rows(start: int):
    for i in range(start, min(start + CHUNK, PAIRS)):
        yield f"{i % 1_000:05d}", bytes([i % 251]) * PAYLOAD


def _count(grouped):
    key, values = grouped
    values = list(values)
    Metrics.counter("bundles_test", "keys").inc()
    Metrics.counter("bundles_test", "rows").inc(len(values))
    Metrics.counter("bundles_test", "bytes").inc(sum(len(v) for v in values))
    Metrics.counter("bundles_test", "payload_sum").inc(sum(v[0] for v in values))


@pytest.mark.parametrize("workers", [2, None])
def test_a_run_of_many_pieces_keeps_every_row(monkeypatch, workers):
    # 9 MB through the grouping with 4 KB pieces: each worker's share arrives in ~1,100 pieces, more
    # than the data plane's queues hold, so the input is written while a worker process consumes
    # it; an in-process worker (None) reads only what was written when its bundle starts.
    monkeypatch.setattr(runner, "BUNDLE_CHUNK_BYTES", 4 << 10)
    pipeline = make_pipeline("local", [], workers)
    assert isinstance(pipeline.runner, LocalRunner)
    _ = (
        pipeline
        | beam.Create(list(range(0, PAIRS, CHUNK)))
        | beam.Reshuffle()
        | beam.FlatMap(_rows)
        | beam.GroupByKey()
        | beam.Map(_count)
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("bundles_test"))["counters"]
    counts = {c.key.metric.name: c.committed for c in counters}
    assert counts == {
        "keys": 1_000,
        "rows": PAIRS,
        "bytes": PAIRS * PAYLOAD,
        "payload_sum": sum(i % 251 for i in range(PAIRS)),
    }
