"""The audit's aggregates, computed on the workers into one small `audit.json`.

In: the names (`NNNNN`) of an output's shards, whose `NNNNN.parquet` (and, for the few thumbnails
shown, `NNNNN.tar`) are written. Out: one dict, the body of `OUTPUT/audit.json`, that
`pipeline/output/audit.py` renders without reading a row:

- `ScanShard`: each shard's Parquet, read batch by batch with only the columns the audit needs,
  becomes its `AuditCounts` (`auditscan.py`), its (domain, outcome) counts and its dup_group
  counts. The counts merge in one global combine whose accumulator is bounded (reasons,
  languages, models, fixed histograms, k rows per outcome); domains and groups are counted per
  key (one key per domain or group, combined before the shuffle), then reduced to the 40 top
  domains and to the group-size histogram with the largest groups: no step holds one entry per row.
- `FindRows`: a second parallel read of each shard finds the rows the shown samples cite (a
  duplicate's kept copy, the uids an error names) and the members of the largest groups (at most
  `group_members` per group, the kept one first).
- `Thumbnails`: the shown kept rows' images, read from their tars (only those members), inlined as
  JPEG data URIs.

Each shard is read twice, in parallel, whatever the number of shards: the work is linear in the
rows. The same transform runs in the job (`WriteStats`) and, for an output written before
`audit.json` existed, in a local pipeline over its shards (`winnow audit`), so both give the same
page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.layout import read_tar_images
from transforms.write.auditscan import (
    KEPT,
    PENDING,
    SAMPLE_COLUMNS,
    SCAN_COLUMNS,
    AuditCounts,
    AuditSettings,
    Histogram,
    cited_uids,
    count,
    hash64,
    in_reading_order,
    noise_histogram,
    position,
    scan_batch,
    thumbnail_uri,
    with_columns,
)

AUDIT_FILE = "audit.json"
#: The layout of `audit.json`; a reader finding another one computes the audit again.
AUDIT_VERSION = 1
TOP_DOMAINS = 40  # by samples and by dropped samples, each
_BATCH_ROWS = 65_536
#: Columns every Winnow shard has and a download's Parquet (img2dataset's, DataComp's) lacks.
WINNOW_COLUMNS = ("uid", "status", "stage")


class NotWinnowShardError(ValueError):
    """A shard whose Parquet lacks Winnow's columns (a download's, say)."""


def _open(path: str) -> Any:
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def missing_columns(names: Iterable[str]) -> list[str]:
    return [name for name in WINNOW_COLUMNS if name not in set(names)]


class _ScanShardFn(beam.DoFn):
    """Shard name → its `AuditCounts`; tagged `domains`: (domain, {outcome: [n, first]}), and
    `groups`: (dup_group, members in this shard)."""

    def __init__(self, output_dir: str, settings: AuditSettings):
        self._output_dir = output_dir
        self._settings = settings

    def process(self, shard: str) -> Iterator[Any]:
        path = f"{self._output_dir}/{shard}.parquet"
        counts = AuditCounts()
        domains: dict[str, dict[str, list[int]]] = {}
        groups: dict[str, int] = {}
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        with _open(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = set(parquet.schema_arrow.names)
            missing = missing_columns(names)
            if missing:
                raise NotWinnowShardError(f"{path} lacks Winnow's column(s) {', '.join(missing)}")
            if "noise_prob" in names:
                counts.histograms["noise_prob"] = noise_histogram()
            offset = 0
            for batch in parquet.iter_batches(_BATCH_ROWS, columns=sorted(SCAN_COLUMNS & names)):
                table = with_columns(batch, SCAN_COLUMNS)
                by_domain, by_group = scan_batch(counts, table, shard, offset, self._settings)
                offset += table.num_rows
                for row in by_domain.to_pylist():
                    count(
                        domains.setdefault(row["domain"], {}),
                        row["outcome"],
                        row["count_all"],
                        row["_pos_min"],
                    )
                for row in by_group.to_pylist():
                    groups[row["dup_group"]] = groups.get(row["dup_group"], 0) + row["count_all"]
        yield beam.pvalue.TaggedOutput("files", (1, size))
        yield counts
        for domain, outcomes in domains.items():
            yield beam.pvalue.TaggedOutput("domains", (domain, outcomes))
        for group, n in groups.items():
            yield beam.pvalue.TaggedOutput("groups", (group, n))


class _MergeCountsFn(beam.CombineFn):
    """The shards' `AuditCounts` into one (bounded: see `auditscan.py`)."""

    def __init__(self, settings: AuditSettings):
        self._settings = settings

    def create_accumulator(self) -> AuditCounts:
        return AuditCounts()

    def add_input(self, accumulator: AuditCounts, element: AuditCounts) -> AuditCounts:
        accumulator.merge(element, self._settings)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[AuditCounts]) -> AuditCounts:
        merged = AuditCounts()
        for accumulator in accumulators:
            merged.merge(accumulator, self._settings)
        return merged

    def extract_output(self, accumulator: AuditCounts) -> AuditCounts:
        return accumulator


class _MergeOutcomesFn(beam.CombineFn):
    """One domain's {outcome: [n, first]} from each shard into one."""

    def create_accumulator(self) -> dict[str, list[int]]:
        return {}

    def add_input(
        self, accumulator: dict[str, list[int]], element: dict[str, list[int]]
    ) -> dict[str, list[int]]:
        for outcome, (n, first) in element.items():
            count(accumulator, outcome, n, first)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, list[int]]]) -> dict[str, list[int]]:
        merged: dict[str, list[int]] = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator: dict[str, list[int]]) -> dict[str, list[int]]:
        return accumulator


def _total(outcomes: dict[str, list[int]]) -> int:
    return sum(n for n, _ in outcomes.values())


def _dropped(outcomes: dict[str, list[int]]) -> int:
    """Rejected or failed samples: neither kept nor still pending."""
    return sum(n for outcome, (n, _) in outcomes.items() if outcome not in (KEPT, PENDING))


class _TopDomainsFn(beam.CombineFn):
    """The `n` domains with the most samples and the `n` with the most dropped ones (ties: by
    name): two lists of at most `n` (domain, outcomes) each."""

    def __init__(self, n: int = TOP_DOMAINS):
        self._n = n

    def create_accumulator(self) -> tuple[list[Any], list[Any]]:
        return [], []

    def _cut(self, items: list[Any], key: Any) -> list[Any]:
        return sorted(items, key=key)[: self._n]

    def add_input(
        self, accumulator: tuple[list[Any], list[Any]], element: Any
    ) -> tuple[list[Any], list[Any]]:
        return self.merge_accumulators([accumulator, ([element], [element])])

    def merge_accumulators(
        self, accumulators: Iterable[tuple[list[Any], list[Any]]]
    ) -> tuple[list[Any], list[Any]]:
        rows: list[Any] = []
        dropped: list[Any] = []
        for by_rows, by_dropped in accumulators:
            rows += by_rows
            dropped += by_dropped
        return (
            self._cut(rows, lambda kv: (-_total(kv[1]), kv[0])),
            self._cut(dropped, lambda kv: (-_dropped(kv[1]), kv[0])),
        )

    def extract_output(self, accumulator: tuple[list[Any], list[Any]]) -> list[list[Any]]:
        """[domain, [[outcome, n], …]] for the union, by samples first; outcomes in reading order."""
        chosen = dict([*accumulator[0], *accumulator[1]])
        return [[domain, [list(pair) for pair in in_reading_order(chosen[domain])]] for domain in chosen]


class _GroupSizesFn(beam.CombineFn):
    """(dup_group, size) → group size → number of groups, and the `top` largest groups of more
    than one member (ties: by seeded hash of the group). Bounded: there are fewer distinct sizes
    than sqrt(2 × rows)."""

    def __init__(self, top: int, seed: int):
        self._top = top
        self._seed = seed

    def create_accumulator(self) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
        return {}, []

    def add_input(self, accumulator: Any, element: tuple[str, int]) -> Any:
        group, size = element
        sizes, top = accumulator
        sizes[size] = sizes.get(size, 0) + 1
        if size > 1:
            top.append((-size, int(hash64([group], self._seed)[0]), group))
            top.sort()
            del top[self._top :]
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        sizes: dict[int, int] = {}
        top: list[tuple[int, int, str]] = []
        for more, largest in accumulators:
            for size, n in more.items():
                sizes[size] = sizes.get(size, 0) + n
            top += largest
        return sizes, sorted(top)[: self._top]

    def extract_output(self, accumulator: Any) -> dict[str, Any]:
        sizes, top = accumulator
        return {
            "sizes": [[size, n] for size, n in sorted(sizes.items())],
            "top": [[group, -negative] for negative, _, group in top],
        }


def targets(counts: AuditCounts) -> list[str]:
    """The uids the shown rows cite: a removed duplicate's kept copy (`duplicate_of`, else its
    group's), and every uid its error names."""
    shown = [row for rows in counts.samples.values() for _, _, row in rows]
    found = {
        r[c] for r in shown for c in ("duplicate_of", "dup_group") if r.get(c) and r.get("stage") == "dedup"
    }
    return sorted(found | {uid for r in shown for uid in cited_uids(r.get("error"))})


class _FindRowsFn(beam.DoFn):
    """Shard name → (position, row, cited, group) of every row with a cited uid (`cited`) or in
    one of the largest groups (`group`, else None)."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(
        self, shard: str, counts: AuditCounts, groups: dict[str, Any]
    ) -> Iterator[tuple[int, dict[str, Any], bool, str | None]]:
        uids = pa.array(targets(counts), pa.string())
        top = pa.array([group for group, _ in groups["top"]], pa.string())
        if not len(uids) and not len(top):
            return
        with _open(f"{self._output_dir}/{shard}.parquet") as handle:
            parquet = pq.ParquetFile(handle)
            columns = sorted(set(SAMPLE_COLUMNS) & set(parquet.schema_arrow.names))
            offset = 0
            for raw in parquet.iter_batches(_BATCH_ROWS, columns=columns):
                batch = with_columns(raw, frozenset(SAMPLE_COLUMNS))
                cited = pc.is_in(batch["uid"], value_set=uids)
                grouped = pc.fill_null(pc.is_in(batch["dup_group"], value_set=top), False)
                index = pc.indices_nonzero(pc.or_(cited, grouped)).to_pylist()
                rows = batch.take(pa.array(index, pa.int64())).to_pylist()
                for i, row in zip(index, rows, strict=True):
                    group = row["dup_group"] if grouped[i].as_py() else None
                    yield position(shard, offset + i), {**row, "shard": shard}, cited[i].as_py(), group
                offset += batch.num_rows


@dataclasses.dataclass
class _Found:
    """The rows of cited uids (per uid the last read, as a reader keeps it) and the members of the
    largest groups (at most `members` per group: the kept one first, then by uid)."""

    cited: dict[str, tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    members: dict[str, list[tuple[tuple[bool, str, int], dict[str, Any]]]] = dataclasses.field(
        default_factory=dict
    )

    def cite(self, pos: int, row: dict[str, Any]) -> None:
        if pos >= self.cited.get(row["uid"], (-1, {}))[0]:
            self.cited[row["uid"]] = (pos, row)

    def add_members(
        self, group: str, rows: list[tuple[tuple[bool, str, int], dict[str, Any]]], k: int
    ) -> None:
        self.members[group] = sorted([*self.members.get(group, []), *rows], key=lambda kr: kr[0])[:k]


class _FoundRowsFn(beam.CombineFn):
    """`_FindRowsFn`'s rows into one `_Found`: bounded by the uids cited and `members` per group."""

    def __init__(self, members: int):
        self._members = members

    def create_accumulator(self) -> _Found:
        return _Found()

    def add_input(self, accumulator: _Found, element: tuple[int, dict[str, Any], bool, str | None]) -> _Found:
        pos, row, cited, group = element
        if cited:
            accumulator.cite(pos, row)
        if group is not None:
            accumulator.add_members(
                group, [((row["status"] != "success", row["uid"], pos), row)], self._members
            )
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Found]) -> _Found:
        merged = _Found()
        for found in accumulators:
            for pos, row in found.cited.values():
                merged.cite(pos, row)
            for group, rows in found.members.items():
                merged.add_members(group, rows, self._members)
        return merged

    def extract_output(self, accumulator: _Found) -> _Found:
        return accumulator


def _histogram_json(hist: Histogram) -> dict[str, Any]:
    return {"lo": hist.lo, "width": hist.width, "kept": hist.kept, "other": hist.other}


def assemble(
    counts: AuditCounts, domains: list[list[Any]], groups: dict[str, Any], found: _Found,
    settings: AuditSettings, files: tuple[int, int],
) -> dict[str, Any]:  # fmt: skip
    """The body of `audit.json` (without thumbnails): everything the report draws from the rows."""
    # Dicts built by merging accumulators hold their keys in the order the runner merged them:
    # every dict and list here is sorted, so that the file is the same on any runner.
    samples = {outcome: [row for _, _, row in rows] for outcome, rows in sorted(counts.samples.items())}
    shown = [row for rows in samples.values() for row in rows]
    # Rows as a reader of the shards in order finds them: per uid the last one read wins.
    read = {pos: row for pos, row in found.cited.values()}
    for rows in found.members.values():
        read.update({key[2]: row for key, row in rows})
    by_uid = {r["uid"]: r for r in [*shown, *(read[pos] for pos in sorted(read))]}
    sizes = dict(groups["top"])
    group_rows = [
        {"size": sizes[group], "rows": [row for _, row in found.members[group]]}
        for group, _ in groups["top"]
        if group in found.members
    ]
    return {
        "version": AUDIT_VERSION,
        "settings": dataclasses.asdict(settings),
        "shards": {"count": files[0], "parquet_bytes": files[1]},
        "total": counts.total,
        "outcomes": [[*key, n] for key, n in in_reading_order(counts.outcomes)],
        "histograms": {name: _histogram_json(h) for name, h in sorted(counts.histograms.items())},
        "languages": [
            [lang, kept, other]
            for lang, (kept, other, _) in sorted(counts.languages.items(), key=lambda kv: kv[1][2])
        ],
        "models": [[model, n] for model, n in in_reading_order(counts.models)],
        "domains": domains,
        "group_sizes": groups["sizes"],
        "groups": group_rows,
        "samples": samples,
        "rows": [by_uid[uid] for uid in sorted(by_uid)],
        "safety": {
            "present": counts.has_safety,
            "blocklists": dict(sorted(counts.blocklists.items())),
            "nsfw": _histogram_json(counts.nsfw),
            "with_faces": counts.with_faces,
            "faces": counts.faces,
        },
        "thumbnails": {},
    }


def wanted_images(body: dict[str, Any]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(shard, [(tar key, uid), …]) of the shown rows that have an image."""
    wanted: dict[str, dict[str, str]] = {}
    for row in body["rows"]:
        if row["status"] == "success" and row.get("key"):
            wanted.setdefault(row["shard"], {})[row["key"]] = row["uid"]
    for shard, keys in sorted(wanted.items()):
        yield shard, sorted(keys.items())


def read_thumbnails(wanted: tuple[str, list[tuple[str, str]]], output_dir: str, size: int) -> dict[str, str]:
    """uid → JPEG data URI of a `size` px thumbnail, for `wanted` = (shard, [(tar key, uid), …]),
    reading only these members of the shard's tar."""
    shard, keys = wanted
    path = f"{output_dir}/{shard}.tar"
    if not FileSystems.exists(path):
        return {}
    uids = dict(keys)
    thumbnails = {}
    for key, _, data in read_tar_images(path, set(uids)):
        uri = thumbnail_uri(data, size)
        if uri:
            thumbnails[uids[key]] = uri
    return thumbnails


class _MergeDictsFn(beam.CombineFn):
    """Small dicts (the thumbnails, bounded by the rows shown) into one."""

    def create_accumulator(self) -> dict[str, str]:
        return {}

    def add_input(self, accumulator: dict[str, str], element: dict[str, str]) -> dict[str, str]:
        accumulator.update(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, str]]) -> dict[str, str]:
        merged: dict[str, str] = {}
        for accumulator in accumulators:
            merged.update(accumulator)
        return merged

    def extract_output(self, accumulator: dict[str, str]) -> dict[str, str]:
        return dict(sorted(accumulator.items()))


def _with_thumbnails(body: dict[str, Any], thumbnails: dict[str, str]) -> dict[str, Any]:
    return {**body, "thumbnails": thumbnails}


def _add_files(totals: tuple[int, int], more: tuple[int, int]) -> tuple[int, int]:
    return totals[0] + more[0], totals[1] + more[1]


def _sum_files(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    total = (0, 0)
    for pair in pairs:
        total = _add_files(total, pair)
    return total


class AuditShards(beam.PTransform):
    """Shard names (`NNNNN`) of `output_dir` → one dict, the body of `audit.json` (see the module)."""

    def __init__(self, output_dir: str, settings: AuditSettings | None = None):
        super().__init__()
        self._output_dir = output_dir.rstrip("/")
        self._settings = settings or AuditSettings()

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        settings = self._settings
        scanned = shards | "ScanShard" >> beam.ParDo(_ScanShardFn(self._output_dir, settings)).with_outputs(
            "domains", "groups", "files", main="counts"
        )
        counts = beam.pvalue.AsSingleton(
            scanned.counts | "MergeCounts" >> beam.CombineGlobally(_MergeCountsFn(settings))
        )
        files = scanned.files | "CountFiles" >> beam.CombineGlobally(_sum_files)
        domains = (
            scanned.domains
            | "PerDomain" >> beam.CombinePerKey(_MergeOutcomesFn())
            | "TopDomains" >> beam.CombineGlobally(_TopDomainsFn())
        )
        groups = beam.pvalue.AsSingleton(
            scanned.groups
            | "PerGroup" >> beam.CombinePerKey(sum)
            | "GroupSizes" >> beam.CombineGlobally(_GroupSizesFn(settings.groups, settings.seed))
        )
        found = (
            shards
            | "FindRows" >> beam.ParDo(_FindRowsFn(self._output_dir), counts, groups)
            | "KeepRows" >> beam.CombineGlobally(_FoundRowsFn(settings.group_members))
        )
        body = domains | "Assemble" >> beam.Map(
            lambda top, c, g, f, n: assemble(c, top, g, f, settings, n),
            counts,
            groups,
            beam.pvalue.AsSingleton(found),
            beam.pvalue.AsSingleton(files),
        )
        thumbnails = (
            body
            | "WantedImages" >> beam.FlatMap(wanted_images)
            | "SpreadImages" >> beam.Reshuffle()
            | "Thumbnails" >> beam.Map(read_thumbnails, self._output_dir, settings.thumbnail_px)
            | "AllThumbnails" >> beam.CombineGlobally(_MergeDictsFn())
        )
        return body | "WithThumbnails" >> beam.Map(_with_thumbnails, beam.pvalue.AsSingleton(thumbnails))
