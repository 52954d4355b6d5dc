"""What a stage returns when it has more to say than its rows."""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam


class WithSummary(NamedTuple):
    """A stage's rows, and a PCollection of at most one dict for the stage's section of stats.json.

    Beam takes a named tuple of PCollections as a transform's output, so the wiring stays
    explicit: `out = rows | stage`, then `out.rows` and `out.summary`.
    """

    rows: beam.PCollection
    summary: beam.PCollection
