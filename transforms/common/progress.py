"""Stage counters: Beam metrics with fixed names, plus live progress files for local runs.

Every stage counts each sample it decides under the namespace `winnow`:
`<stage>/total`, `<stage>/kept` and `<stage>/dropped/<reason>`. The same names show in
Dataflow's UI, in `result.metrics()` and in the stats JSON.

For local runs a progress folder may be given: each DoFn instance then rewrites one small JSON
file (`<stage>.<pid>.<n>.json`, at most once a second) holding its running totals (samples done,
and of those, rejected and failed, as the `status` column says), which the CLI sums into one live
line per stage. Workers in other processes report the same way.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from apache_beam.metrics import Metrics

from schemas.sample import Status

NAMESPACE = "winnow"
_instance_ids = itertools.count()


class StageCounter:
    """Counts samples through one stage; cheap enough to call once per sample."""

    def __init__(self, stage: str, progress_dir: str | None = None, flush_every_s: float = 1.0):
        self.stage = stage
        self._total = Metrics.counter(NAMESPACE, f"{stage}/total")
        self._kept = Metrics.counter(NAMESPACE, f"{stage}/kept")
        self._dropped: dict[str, object] = {}
        self._progress_path = None
        if progress_dir:
            name = f"{stage}.{os.getpid()}.{next(_instance_ids)}.json"
            self._progress_path = os.path.join(progress_dir, name)
        self._flush_every_s = flush_every_s
        self._last_flush = 0.0
        self.done = 0
        self.rejected = 0  # samples this stage dropped with status `rejected`
        self.failed = 0  # and with status `failed`

    def add_passed(self) -> None:
        """A sample decided upstream that this stage passed through: progress only, no metric
        (`<stage>/total` counts the samples the stage judged)."""
        self.done += 1
        self._maybe_flush()

    def add(self, kept: bool = True, reason: str | None = None, status: str = Status.REJECTED) -> None:
        """A sample this stage judged: kept, or dropped for `reason` with `status` (rejected by a
        rule, or failed)."""
        self._total.inc()
        self.done += 1
        if kept:
            self._kept.inc()
        else:
            self._count_dropped(status, 1)
            key = reason or "unknown"
            counter = self._dropped.get(key)
            if counter is None:
                counter = self._dropped[key] = Metrics.counter(NAMESPACE, f"{self.stage}/dropped/{key}")
            counter.inc()  # type: ignore[attr-defined]
        self._maybe_flush()

    def add_many(
        self,
        kept: int = 0,
        dropped: Mapping[str | None, int] | None = None,
        passed: int = 0,
        status: str = Status.REJECTED,
    ) -> None:
        """`add` for a whole batch: `kept` samples kept, {reason: samples} dropped (with `status`),
        and `passed` samples passed through."""
        reasons: Counter[str] = Counter()
        for reason, count in (dropped or {}).items():
            reasons[reason or "unknown"] += count
        judged = kept + sum(reasons.values())
        if judged:
            self._total.inc(judged)
        if kept:
            self._kept.inc(kept)
        for key, count in reasons.items():
            counter = self._dropped.get(key)
            if counter is None:
                counter = self._dropped[key] = Metrics.counter(NAMESPACE, f"{self.stage}/dropped/{key}")
            counter.inc(count)  # type: ignore[attr-defined]
        self._count_dropped(status, sum(reasons.values()))
        self.done += judged + passed
        self._maybe_flush()

    def _count_dropped(self, status: str, n: int) -> None:
        if status == Status.FAILED:
            self.failed += n
        else:
            self.rejected += n

    def _maybe_flush(self) -> None:
        if self._progress_path and time.monotonic() - self._last_flush >= self._flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Writes the running totals to this instance's progress file (atomically)."""
        if not self._progress_path:
            return
        self._last_flush = time.monotonic()
        tmp = self._progress_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                totals = {"done": self.done, "rejected": self.rejected, "failed": self.failed}
                json.dump({"stage": self.stage, **totals}, handle)
            os.replace(tmp, self._progress_path)
        except OSError:
            # Progress is best-effort display; a full disk must not fail the job.
            self._progress_path = None


def read_progress(progress_dir: str, stages: Iterable[str]) -> dict[str, Counter[str]]:
    """Sums the progress files of every worker: {stage: Counter(done=…, rejected=…, failed=…)}."""
    totals: dict[str, Counter[str]] = {stage: Counter() for stage in stages}
    try:
        names = os.listdir(progress_dir)
    except OSError:
        return totals
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(progress_dir, name), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue  # being replaced right now; the next poll reads it
        totals.setdefault(data["stage"], Counter()).update(
            done=data["done"], rejected=data.get("rejected", 0), failed=data["failed"]
        )
    return totals
