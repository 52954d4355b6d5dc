"""Record types, Arrow schemas and column names shared by every Winnow stage."""

from schemas.sample import (
    BATCH_SCHEMA,
    METADATA_SCHEMA,
    Sample,
    Status,
    batch_from_samples,
    make_uid,
    sample_to_metadata_row,
    samples_from_batch,
)

__all__ = [
    "BATCH_SCHEMA",
    "METADATA_SCHEMA",
    "Sample",
    "Status",
    "batch_from_samples",
    "make_uid",
    "sample_to_metadata_row",
    "samples_from_batch",
]
