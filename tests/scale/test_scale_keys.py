"""No hot keys, no growing gathers: each keyed step groups a bounded number of elements per key
as the rows grow ×10, and its results are those of the rule it replaces.

Each test runs the real transform on the local runner at n and 10·n and reads the largest number
of elements any key grouped from the transform's own metrics (a distribution or a counter)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from pipeline.graph import gathers
from schemas import Sample, Status, batch_from_samples, make_uid, samples_from_batch
from transforms.common.clustering import KMeansCentroids, sample_key
from transforms.common.sampling import HashSample, candidates
from transforms.embed.config import EmbedConfig
from transforms.embed.stage import DecideClipScore
from transforms.embed.threshold import fraction_threshold
from transforms.read.lists import DistinctPairs
from transforms.text.config import TextConfig
from transforms.text.stage import FilterText, keeper_order


def _run(pipeline: beam.Pipeline) -> beam.runners.runner.PipelineResult:
    result = pipeline.run()
    result.wait_until_finish()
    return result


def _distribution_max(result, name: str) -> int:
    (found,) = result.metrics().query(MetricsFilter().with_name(name))["distributions"]
    return found.committed.max


def _counter(result, name: str) -> int:
    (found,) = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return found.committed


def _url_rows(urls: int, seed: int) -> list[Sample]:
    """Rows naming `urls` URLs 1–3 times each, captions of 2–6 words (2 break `min_words`), one
    URL + caption named twice (the same uid)."""
    rng = random.Random(seed)
    rows = []
    for k in range(urls):
        url = f"http://example.com/img/{k}.jpg"
        for copy in range(rng.randint(1, 3)):
            words = " ".join(
                rng.choice(["red", "blue", "cat", "dog", "tree"]) for _ in range(rng.randint(2, 6))
            )
            caption = f"a {words} {copy}" if rng.random() < 0.8 else "a cat"
            rows.append(Sample(uid=make_uid(url, caption), url=url, caption=caption))
    return rows


def _check_url_verdicts(samples: list[Sample]) -> None:
    """Per URL exactly one row keeps its own verdict, the one `keeper_order` puts first (the rule of
    `text.dedupe_urls`); the others are `duplicate_url` of its uid."""
    by_url: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_url[s.url].append(s)
    for rows in by_url.values():
        codes = np.array([int(s.num_tokens < 3) for s in rows])
        order = keeper_order(
            codes,
            [s.caption_clean for s in rows],
            np.array([s.num_tokens for s in rows]),
            [s.uid for s in rows],
            [None] * len(rows),
        )
        best = rows[order[0]]
        kept = [s for s in rows if s.reason != "duplicate_url"]
        assert len(kept) == 1 and kept[0].uid == best.uid, rows
        assert all(s.duplicate_of == best.uid for s in rows if s.reason == "duplicate_url")


def _url_dedupe(urls: int) -> int:
    rows = _url_rows(urls, seed=urls)
    batches = [batch_from_samples(rows[i : i + 50]) for i in range(0, len(rows), 50)]
    batches.append(batches[0])  # the same rows twice (a file listed under two names)
    expected_rows = len(rows) + batches[0].num_rows
    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create(batches) | FilterText(TextConfig(min_words=3)) | beam.FlatMap(samples_from_batch)

    def check(samples):
        assert len(samples) == expected_rows
        _check_url_verdicts(list(samples))

    assert_that(out, check)
    result = _run(p)
    assert _distribution_max(result, "verdict_join_elements") <= 2 * (2 * 50)  # two twin batches
    return _distribution_max(result, "rows_per_repeated_url")


def test_scale_item4_duplicate_urls_keyed_by_url_hash():
    small, large = _url_dedupe(100), _url_dedupe(1000)
    # A URL's light rows (at most 3 copies, ×2 for the twin batch), not a partition's rows.
    assert small <= 6 and large <= 6


def _archive_batches(pairs: int, heavy_copies: int) -> tuple[list, dict[str, tuple]]:
    """Row batches of pairs found on pages 1–3 times, one pair found `heavy_copies` times; and per
    uid the row `DistinctPairs` must keep (the first found, as today's rule)."""
    rng = random.Random(pairs)
    rows = []
    for k in range(pairs):
        url, caption = f"http://example.com/{k}.jpg", f"picture {k}"
        copies = heavy_copies if k == 0 else rng.randint(1, 3)
        for _ in range(copies):
            extra = {"warc_file": f"crawl-{rng.randint(0, 9)}.warc.gz", "warc_offset": rng.randint(0, 10**6)}
            rows.append(Sample(uid=make_uid(url, caption), url=url, caption=caption, extra=extra))
    rng.shuffle(rows)
    best: dict[str, tuple] = {}
    for s in rows:
        found = (s.extra["warc_file"], s.extra["warc_offset"], 0)
        if s.uid not in best or found < best[s.uid]:
            best[s.uid] = found
    return [batch_from_samples(rows[i : i + 100]) for i in range(0, len(rows), 100)], best


def _distinct(pairs: int, heavy_copies: int) -> int:
    batches, best = _archive_batches(pairs, heavy_copies)
    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create(batches) | DistinctPairs() | beam.FlatMap(samples_from_batch)

    def check(samples):
        kept = {s.uid: (s.extra["warc_file"], s.extra["warc_offset"], 0) for s in samples}
        assert len(kept) == len(samples) == len(best)
        assert kept == best

    assert_that(out, check)
    return _distribution_max(_run(p), "distinct_pairs_merged")


def test_scale_item4_distinct_pairs_best_row_combine():
    # The heavy pair's copies grow ×10; the rows its key merges stay one per bundle that saw it.
    small, large = _distinct(100, heavy_copies=40), _distinct(1000, heavy_copies=400)
    assert large <= max(small, 4) < 40


def _hash_sample(n: int, size: int) -> int:
    rng = random.Random(n)
    members = [(f"{rng.getrandbits(128):032x}", rng.random()) for _ in range(n)]
    key = sample_key(7)
    expected = sorted(members, key=key, reverse=True)[:size]
    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create(members) | HashSample(size, key, "test")

    def check(samples):
        assert [sorted(s) for s in samples] == [sorted(expected)]  # `Top.Of`'s sample

    assert_that(out, check)
    return _counter(_run(p), "sample_candidates")


def test_scale_item4_samples_by_uid_hash_threshold():
    size = 100
    small, large = _hash_sample(2_000, size), _hash_sample(20_000, size)
    limit = candidates(size, 10**12)
    for reached in (small, large):  # what reaches `Top.Of`: about 1.2·size + 64, whatever n
        assert size <= reached <= limit + 6 * math.sqrt(limit)
    # The k-means sample goes through the same threshold.
    rng = np.random.default_rng(0)
    members = [(f"{i:032x}", rng.normal(size=8).astype(np.float16).tobytes()) for i in range(2_000)]
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(members) | KMeansCentroids(lambda m: m[1], sample_size=200, cluster_size=100)
    assert _counter(_run(p), "sample_candidates") <= candidates(200, 10**12) + 6 * math.sqrt(304)


def _keep_fraction(n: int) -> None:
    rng = random.Random(n)
    scores = [round(rng.uniform(0.1, 0.4), 3) for _ in range(n)]  # many ties
    scores[:5] = [float("nan")] * 5
    samples = [
        Sample(uid=f"{i:032x}", url=None, caption=None, status=Status.SUCCESS, clip_score=s)
        for i, s in enumerate(scores)
    ]
    threshold = fraction_threshold(np.array(scores), 0.3)
    expected = sorted(s.uid for s in samples if not s.clip_score >= threshold)
    p = beam.Pipeline(runner=FnApiRunner())
    rows = p | "Read" >> beam.Create(samples)
    out = (
        rows
        | DecideClipScore(EmbedConfig(keep_fraction=0.3))
        | beam.Filter(lambda s: s.reason == "low_clip_score")
        | beam.Map(lambda s: s.uid)
    )

    def check(rejected):
        assert sorted(rejected) == expected

    assert_that(out, check)
    assert gathers(p) == []  # no step holds the scores
    _run(p)


def test_scale_item4_keep_fraction_exact_without_a_gather():
    _keep_fraction(400)
    _keep_fraction(4_000)
