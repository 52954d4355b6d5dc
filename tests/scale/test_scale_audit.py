"""Item 5, the report: the audit's aggregates are computed on the workers into `audit.json`, with a
combine whose accumulator does not grow with the rows, and the page rendered from that file is
the page computed from the shards."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cli import main
from pipeline.output.audit import audit_output
from pipeline.output.report import render_report
from schemas.sample import METADATA_SCHEMA
from transforms.common.manifest import read_manifest
from transforms.write.audit import (
    AUDIT_FILE,
    _GroupSizesFn,
    _MergeCountsFn,
    _ScanShardFn,
    _TopDomainsFn,
)
from transforms.write.auditscan import AuditSettings

_REASONS = ("http_404", "timeout", "too_small", "low_clip_score", "duplicate")
_LANGS = ("en", "de", "fr")


def _write_output(folder: str, rows: int, per_shard: int = 2_000) -> None:
    """A Winnow-shaped output of `rows` rows: a host per row, reasons and languages from small
    sets, duplicate groups of 1 to 4 members plus one group of 120."""
    os.makedirs(folder)
    for shard, start in enumerate(range(0, rows, per_shard)):
        ids = range(start, min(start + per_shard, rows))
        status = ["success" if i % 3 == 0 else "rejected" for i in ids]
        table = {
            "uid": [f"{i:032x}" for i in ids],
            "url": [f"http://host{i:06d}.example/{i:06d}.jpg" for i in ids],
            "caption": [f"caption {i:06d}" for i in ids],
            "status": status,
            "stage": [None if s == "success" else "crawl" for s in status],
            "reason": [
                None if s == "success" else _REASONS[i % len(_REASONS)]
                for i, s in zip(ids, status, strict=True)
            ],
            "lang": [_LANGS[i % 3] for i in ids],
            "clip_score": [(i % 100) / 100 for i in ids],
            "num_tokens": [i % 40 for i in ids],
            "dup_group": [f"{(0 if i < 120 else i // 4):032x}" for i in ids],
        }
        schema = pa.schema([METADATA_SCHEMA.field(name) for name in table])
        pq.write_table(pa.table(table, schema=schema), f"{folder}/{shard:05d}.parquet")


def _accumulator_bytes(folder: str) -> dict[str, int]:
    """Pickled bytes of each global combine's accumulator once every shard is in, and the number
    of entries (keys, bins, rows) the counts hold."""
    settings = AuditSettings()
    scan = _ScanShardFn(folder, settings)
    merge, top, sizes = _MergeCountsFn(settings), _TopDomainsFn(), _GroupSizesFn(settings.groups, 0)
    counts, domains, groups = merge.create_accumulator(), top.create_accumulator(), sizes.create_accumulator()
    per_group: dict[str, int] = {}
    for name in sorted(os.listdir(folder)):
        for out in scan.process(name.removesuffix(".parquet")):
            tag = getattr(out, "tag", None)
            if tag is None:
                counts = merge.add_input(counts, out)
            elif tag == "domains":
                domains = top.add_input(domains, out.value)
            elif tag == "groups":
                per_group[out.value[0]] = per_group.get(out.value[0], 0) + out.value[1]
    for element in per_group.items():
        groups = sizes.add_input(groups, element)
    entries = len(counts.outcomes) + len(counts.languages) + len(counts.models) + len(counts.blocklists)
    entries += sum(len(h.kept) for h in counts.histograms.values())
    entries += sum(len(rows) for rows in counts.samples.values())
    return {
        "entries": entries,
        "counts": len(pickle.dumps(counts)),
        "domains": len(pickle.dumps(domains)),
        "groups": len(pickle.dumps(groups)),
    }


def test_scale_item5_audit_accumulators_stay_bounded_as_rows_grow_tenfold(tmp_path):
    small, large = str(tmp_path / "small"), str(tmp_path / "large")
    _write_output(small, 2_000)
    _write_output(large, 20_000)
    before, after = _accumulator_bytes(small), _accumulator_bytes(large)
    assert after["entries"] == before["entries"]  # ×10 rows (and hosts and groups): as many entries
    for name in before:  # and as many bytes, but for wider numbers and strings pickled once per shard
        assert after[name] <= 1.3 * before[name], (name, before, after)
    assert after["counts"] < 64_000 and after["domains"] < 32_000 and after["groups"] < 4_000

    # The real transform over the large output: exact counts, bounded group rows.
    audit = audit_output(large)
    assert audit.total == 20_000 and sum(audit.group_sizes.values()) == 1 + (20_000 - 120) // 4
    assert audit.group_sizes[120] == 1 and audit.group_members[0] == 120
    assert len(audit.groups[0]) == AuditSettings().group_members
    assert len(audit.domains) <= 80 and all(c.total() == 1 for c in audit.domains.values())
    assert "and 70 more members" in render_report(audit)


def test_scale_item5_audit_json_is_written_by_the_job_and_renders_as_the_shards_do(tmp_path, capsys):
    listed = tmp_path / "list.csv"
    captions = [f"a photo of a red kite number {i} over a green hill" for i in range(24)]
    captions += ["x", "", "buy now buy now"]  # rejected by the text stage
    listed.write_text(
        "url,caption\n" + "".join(f"http://h{i % 5}.example/{i}.jpg,{c}\n" for i, c in enumerate(captions))
    )
    output = str(tmp_path / "out")
    run = ["run", "--input", str(listed), "--output", output, "--stages", "text"]
    assert main([*run, "--set", "run.progress=false", "--set", "output.samples_per_shard=8"]) == 0
    manifest = read_manifest(output)
    assert manifest is not None and AUDIT_FILE in manifest.files
    with open(f"{output}/{AUDIT_FILE}") as handle:
        recorded = json.load(handle)
    assert recorded["total"] == len(captions) and recorded["shards"]["count"] == 4

    # The same aggregates from the shards (an output written before audit.json): the same page.
    copy = str(tmp_path / "copy")
    shutil.copytree(output, copy)
    os.remove(f"{copy}/{AUDIT_FILE}")
    fast, computed = audit_output(output), audit_output(copy)
    assert render_report(fast) == render_report(computed).replace(copy, output)
    assert render_report(fast, fast) == render_report(computed, computed).replace(copy, output)
    assert main(["audit", copy, "--compare", output, "--out", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    counts = dict(re.findall(r'data-key="([^"]*)" data-count="(\d+)"', page))
    assert counts["a/samples"] == counts["b/samples"] == str(len(captions))

    # A shard gone since the job ran: audit.json no longer describes the folder and is not used.
    os.remove(f"{output}/00000.parquet")
    assert audit_output(output).total == len(captions) - pq.read_metadata(f"{copy}/00000.parquet").num_rows


def test_scale_item5_audit_json_does_not_depend_on_the_order_shards_are_merged(tmp_path):
    """A runner merges the shards' counts in any order: the body of audit.json is the same bytes."""
    from transforms.write.audit import _Found, assemble

    folder = str(tmp_path / "out")
    _write_output(folder, rows=6_000, per_shard=1_000)
    settings = AuditSettings()
    scan, merge = _ScanShardFn(folder, settings), _MergeCountsFn(settings)
    per_shard = [
        out
        for name in sorted(os.listdir(folder))
        for out in scan.process(name.removesuffix(".parquet"))
        if getattr(out, "tag", None) is None
    ]
    groups = {"sizes": [], "top": []}

    def body(order: list[int]) -> str:
        accumulators = []
        for index in order:  # one accumulator per shard, merged in `order`
            accumulators.append(
                merge.add_input(merge.create_accumulator(), pickle.loads(pickle.dumps(per_shard[index])))
            )
        counts = merge.merge_accumulators(accumulators)
        return json.dumps(assemble(counts, [], groups, _Found(), settings, (len(order), 0)))

    forward = body(list(range(len(per_shard))))
    assert json.loads(forward)["samples"] and len(per_shard) == 6
    assert body([5, 3, 1, 0, 4, 2]) == forward
    assert body(list(reversed(range(len(per_shard))))) == forward
