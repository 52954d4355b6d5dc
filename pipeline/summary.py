"""The few lines `winnow run` and `winnow demo` print about a finished (or dry) run."""

from __future__ import annotations

from typing import Any


def format_dry_run(stats: dict[str, Any]) -> str:
    """What `--dry_run` translated: the job graph's size and where resource hints sit."""
    steps = stats["steps"]
    hinted = {name: hints for name, hints in steps.items() if hints}
    # Name only the outermost hinted steps: a composite's parts carry its hints too.
    tops = sorted(n for n in hinted if not any(n.startswith(other + "/") for other in hinted))
    size = f" ({stats['graph_bytes'] / 1e3:,.0f} KB)" if "graph_bytes" in stats else ""
    lines = [f"dry run: {stats['runner']} translated {len(steps):,} steps{size}; nothing ran"]
    lines.append(f"  stages: {', '.join(stats['stages'])}")
    for name in tops:
        lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(hinted[name].items())))
    if not tops:
        lines.append("  no resource hints (set embed.accelerator to put the embedding step on GPU workers)")
    return "\n".join(lines)


def format_summary(stats: dict[str, Any], output: str) -> str:
    """A short human summary of a run's stats."""
    lines = [f"{stats['samples']:,} samples in {stats.get('duration_s', 0):.1f}s → {output}"]
    harvest = stats.get("harvest")
    if harvest:
        skipped = ", ".join(f"{n:,} {reason}" for reason, n in harvest["skipped_records"].items()) or "none"
        lines.append(
            f"  harvest: {harvest['pages']:,} pages ({harvest['pages_with_pairs']:,} with images), "
            f"{harvest['pairs']:,} image/alt-text pairs, {harvest['unique_pairs']:,} distinct; "
            f"records skipped: {skipped}"
        )
    for status, count in stats["status"].items():
        lines.append(f"  {status:<9} {count:>8,}")
        for reason, n in stats["reasons"].get(status, {}).items():
            lines.append(f"    {reason:<22} {n:>6,}")
    text = stats["stages"].get("text")
    if text:
        saved = text["total"] - text["kept"]
        lines.append(
            f"  text stage: {saved:,} fetches saved ({saved / max(text['total'], 1):.0%} of the pairs it saw)"
        )
    embed = stats["stages"].get("embed")
    if embed:
        embedded = stats.get("metrics", {}).get("embed/total")
        if embedded is not None:
            lines.append(f"  embed stage: {embedded:,} pairs embedded and scored")
    dedup = stats["stages"].get("dedup")
    if dedup:
        removed = ", ".join(f"{n:,} {reason}" for reason, n in sorted(dedup["dropped"].items())) or "none"
        lines.append(f"  dedup stage: {dedup['total']:,} downloaded pairs compared; removed: {removed}")
    noise = stats["stages"].get("noise")
    if noise:
        metrics = stats.get("metrics", {})
        sources = ("original", "completed", "generated", "neighbour", "bow")
        chosen = ", ".join(f"{metrics.get(f'noise/caption_{s}', 0):,} {s}" for s in sources)
        lines.append(
            f"  noise stage: {noise['total']:,} pairs judged; caption kept as: {chosen}; "
            f"{noise['dropped'].get('noisy_pair', 0):,} too noisy to repair"
        )
        guard = stats.get("noise", {}).get("term_guard")
        if guard:
            lines.append(
                f"  precision guard: {guard['terms_trusted']:,} of {guard['terms_measured']:,} measured "
                f"concepts trusted (precision >= {guard['min_term_precision']} over "
                f"{guard['min_term_support']}+ clean pairs)"
                + (f"; repair {guard['repair']}" if "repair" in guard else "")
            )
    shards = stats["shards"]
    lines.append(
        f"  shards: {shards['count']} Parquet, {shards['tar_files']} tar ({shards['tar_bytes'] / 1e6:.1f} MB)"
    )
    index = stats.get("index")
    if index:
        lines.append(
            f"  index: {index['type']} of {index['count']:,} kept samples' image embeddings "
            f"({index['dim']}-d) in index/, for `winnow search`"
        )
    if stats.get("report"):
        lines.append(f"  report: {stats['report']}")
    return "\n".join(lines)
