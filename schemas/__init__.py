"""Record types, Arrow schemas and column names shared by every Winnow stage."""

from schemas.sample import (
    METADATA_SCHEMA,
    Sample,
    Status,
    make_uid,
    sample_to_metadata_row,
)

__all__ = ["METADATA_SCHEMA", "Sample", "Status", "make_uid", "sample_to_metadata_row"]
