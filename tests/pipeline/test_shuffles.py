"""Heavy bytes move once: measured, only the shard grouping of a full run carries the images.

The deciding stages (dedup, noise) judge light views and emit verdicts; the samples reach the
shard grouping as bytes of their own coder, where they meet the verdicts. `run.measure_shuffles`
(`pipeline/shuffles.py`) counts what enters every GroupByKey.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline.jobs import _counters
from pipeline.shuffles import NAMESPACE, measure_shuffles, shuffle_table
from schemas.sample import Sample, Status
from tests.conftest import ReferenceRun

SHARD_GROUPING = "WriteShards/GroupShards/CoGroupByKeyImpl/GroupByKey"


def test_the_probes_count_elements_bytes_and_samples_with_images():
    samples = [
        Sample(uid=f"{i:032x}", url=None, caption=None, status=Status.SUCCESS, image=b"x" * 1000)
        for i in range(7)
    ]
    p = beam.Pipeline(runner=FnApiRunner())
    keyed = p | beam.Create(samples) | beam.Map(lambda s: (s.uid, s))
    _ = keyed | "Heavy" >> beam.GroupByKey()
    _ = (
        keyed
        | "Lighten" >> beam.Map(lambda kv: (kv[0], kv[1].evolve(image=None)))
        | "Light" >> beam.GroupByKey()
    )
    assert measure_shuffles(p) == 3  # and the one inside Create's reshuffle
    result = p.run()
    result.wait_until_finish()
    table = shuffle_table(_counters(result, NAMESPACE))
    assert table["Heavy"]["elements"] == table["Light"]["elements"] == 7
    assert (table["Heavy"]["images"], table["Light"]["images"]) == (7, 0)
    assert table["Heavy"]["bytes"] - table["Light"]["bytes"] >= 7 * 1000


def test_a_full_run_moves_the_images_through_the_shard_grouping_alone(reference_run: ReferenceRun):
    stats = reference_run.stats
    assert "dedup" in stats["stages"] and "noise" in stats
    table = stats["shuffles"]
    assert SHARD_GROUPING in table and len(table) > 10
    # No shuffle receives a sample object that holds its image ...
    assert {label: row["images"] for label, row in table.items() if row["images"]} == {}
    # ... and the shard grouping receives every sample (with its image, as its coder's bytes) and
    # the verdicts; the largest single shuffle of the run.
    shards = table[SHARD_GROUPING]
    assert shards["elements"] > stats["samples"]
    assert shards["bytes"] >= stats["shards"]["tar_bytes"] // 2
    assert shards["bytes"] == max(row["bytes"] for row in table.values())
