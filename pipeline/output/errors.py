"""Errors about a finished output folder; the CLI shows them as one line and exits with 2
(`RowsLostError` and `ReportError`, faults of the run itself rather than of what the user gave: 1).

They live apart from the readers so that the CLI can catch them without importing the readers'
libraries (FAISS, the CLIP model).
"""

from __future__ import annotations


class AuditError(ValueError):
    """An output folder that cannot be audited (no Parquet shards, unreadable files)."""


class IndexBudgetError(ValueError):
    """No FAISS index type fits the memory budget of an output's index (`output.index_memory_gb`)."""


class SearchError(Exception):
    """An output that cannot be indexed or searched, or a query that cannot be made (the message says why)."""


class RowsLostError(RuntimeError):
    """A finished run whose shards hold fewer (or more) rows than its read stage produced: the
    runner lost (or repeated) rows. stats.json records `rows_read` and `rows_lost`."""


class ReportError(RuntimeError):
    """A finished run whose audit report could not be written (a full disk, say): its shards and
    stats.json are whole, and `winnow audit OUTPUT` writes the report once the cause is fixed."""
