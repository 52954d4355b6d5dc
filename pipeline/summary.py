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


def format_summary(stats: dict[str, Any], output: str, wall_s: float | None = None) -> str:
    """A short human summary of a run's stats. `wall_s`: the seconds the user waited for the whole
    command (checks, start-up, index and report included), which the first line gives; the
    pipeline's own share (`duration_s`) follows it."""
    took = f"{stats.get('duration_s', 0):.1f}s"
    if wall_s is not None:
        took = f"{wall_s:.1f}s (pipeline {took})"
    lines = [f"{stats['samples']:,} samples in {took} → {output}"]
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
    lines += _forbidden_hint(stats)
    text = stats["stages"].get("text")
    if text:
        saved = text["total"] - text["kept"]
        lines.append(
            f"  text stage: {saved:,} fetches saved ({saved / max(text['total'], 1):.0%} of the pairs it saw)"
        )
    faces = _faces_line(stats.get("safety"))
    if faces:
        lines.append(faces)
    embed = stats["stages"].get("embed")
    if embed:
        lines += _embed_line(stats.get("metrics", {}))
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


def _faces_line(safety: dict[str, Any] | None) -> str | None:
    """What the safety stage found of faces and blurred, when it looked for them."""
    if not safety or not safety.get("face_detector") or "searched_for_faces" not in safety:
        return None
    searched, found, images = safety["searched_for_faces"], safety["faces"], safety["with_faces"]
    line = (
        f"  faces: {found:,} found on {images:,} of the {searched:,} images searched "
        f"(the input's boxes where it gave them, else {safety['face_detector']})"
    )
    if safety.get("blur_faces"):
        blurred = safety["blurred"]
        line += f"; {blurred:,} image{'' if blurred == 1 else 's'} blurred"
    return line


def _embed_line(metrics: dict[str, int]) -> list[str]:
    """How many pairs the embed stage scored, and whether it computed their embeddings or reused
    the ones the input carried (a pool's `.npz`, a clip-retrieval output, a retried output)."""
    judged = metrics.get("embed/total")
    if judged is None:
        return []
    reused = metrics.get("embed/embeddings_reused", 0)
    missing = metrics.get("embed/dropped/embedding_missing", 0)
    if not reused:
        return [f"  embed stage: {judged:,} pairs embedded and scored"]
    computed = judged - reused - missing
    line = (
        f"  embed stage: {judged:,} pairs scored; embeddings reused for {reused:,}, computed for {computed:,}"
    )
    return [line + (f", missing for {missing:,}" if missing else "")]


#: A share of the failures above which a run blocked from private addresses says how to allow them.
_FORBIDDEN_SHARE = 0.5


def _forbidden_hint(stats: dict[str, Any]) -> list[str]:
    """A hint when most failures are `forbidden_address`: the URLs point at loopback or private
    addresses, which the crawl refuses unless `crawl.allow_private_networks` is set."""
    failed = stats["status"].get("failed", 0)
    forbidden = stats["reasons"].get("failed", {}).get("forbidden_address", 0)
    if not failed or forbidden <= failed * _FORBIDDEN_SHARE:
        return []
    return [
        f"  {forbidden:,} of {failed:,} failures are forbidden_address: those hosts resolve to loopback "
        "or private addresses, which the crawl refuses; set crawl.allow_private_networks=true to "
        "crawl a network of your own"
    ]
