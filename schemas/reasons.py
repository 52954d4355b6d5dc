"""What a failure reason says about trying again (reason codes are values of the `reason` column)."""

from __future__ import annotations

#: Failures retried within a run (`crawl.retries`): the server or the network may recover soon.
RETRYABLE_IN_RUN = frozenset(
    {"timeout", "connection_error", "http_500", "http_502", "http_503", "http_504", "http_429"}
)
#: Failures worth another attempt in a later run (`winnow run --retry-failed`): transient ones,
#: including DNS outages, robots.txt files that were unreachable and a pool's tar that could not be
#: read (`shard_unreadable`: an object store's outage, a copy still in progress).
RETRYABLE_LATER = RETRYABLE_IN_RUN | {"dns_error", "ssl_error", "robots_unreachable", "shard_unreadable"}


def is_retryable_failure(reason: str | None) -> bool:
    """True for a crawl failure that a later run may fix (timeouts, DNS, 5xx, 429, unreachable robots.txt)."""
    return reason is not None and (
        reason in RETRYABLE_LATER or (reason.startswith("http_5") and len(reason) == 8)
    )
