"""Output linear in a duplicate group's size: a dedup unit of work emits a spanning forest of its
links, not every similar pair, and the components settle across workers with nothing gathered."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.common.progress import NAMESPACE
from transforms.common.unionfind import ConnectedComponents, Link, resolve_links
from transforms.dedup.config import DedupConfig
from transforms.dedup.semantic import SemDeDupEmbeddings, member
from transforms.dedup.types import SEMANTIC

COPIES = 20_000


def _counter(result: beam.runners.runner.PipelineResult, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(c.committed for c in found)


def test_scale_item3_a_group_of_20000_copies_emits_under_two_links_per_member():
    # 20,000 copies drifting along a ring: each within cosine 0.999 of its ~40 nearest, all one
    # group through them (a dense clique would cost 2·10^8 pair results just to find).
    angles = np.arange(COPIES) * (2 * np.pi / COPIES)
    copies = np.zeros((COPIES, 16))
    copies[:, 0], copies[:, 1] = np.cos(angles), np.sin(angles)
    members = [member(f"c{i:05d}", copies[i], clip_score=float(i % 97) / 100) for i in range(COPIES)]
    config = DedupConfig(clusters=1, kmeans_sample=2000, max_group_size=5000, epsilon=0.001)
    p = beam.Pipeline(runner=FnApiRunner())
    decisions = p | beam.Create(members) | SemDeDupEmbeddings(config)
    kept = "c00096"  # the highest clip score (0.96), smallest uid among the ties
    expected = [(f"c{i:05d}", SEMANTIC, kept) for i in range(COPIES) if f"c{i:05d}" != kept]
    assert_that(decisions | beam.Map(lambda d: (d.uid, d.reason, d.duplicate_of)), equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    links = _counter(result, "dedup/semantic_links")
    # The cluster of copies is cut into 4 chunks (10 tiles); every similar pair would be ~8·10^5.
    assert COPIES - 1 <= links < 2 * COPIES, links
    assert _counter(result, "dedup/semantic_comparisons") >= COPIES * (COPIES - 1) // 2


def _chain_and_star() -> list[Link]:
    """A chain of 400 (ranks rising along it, the worst order for label propagation), a star of
    1,500 around a low-ranked centre, and a clique of 40 linked twice."""
    links = []

    def link(a: str, rank_a: float, b: str, rank_b: float, evidence: str) -> None:
        if a > b:
            a, rank_a, b, rank_b = b, rank_b, a, rank_a
        links.append(Link(a, rank_a, b, rank_b, evidence))

    for i in range(399):
        link(f"chain{i:04d}", float(i), f"chain{i + 1:04d}", float(i + 1), "hash distance 1")
    for i in range(1500):
        link("star", 5.0, f"leaf{i:04d}", float(i % 7), f"embedding cosine 0.99{i % 10}")
    clique = [f"q{i:02d}" for i in range(40)]
    for i, a in enumerate(clique):
        for b in clique[i + 1 :]:
            link(a, float(len(a)), b, float(len(b)), "hash distance 0")
    return links + links[:300]


def test_scale_item3_components_equal_a_plain_union_find_on_a_chain_and_a_star():
    links = _chain_and_star()
    oracle = [tuple(r) for r in resolve_links(links, where=" (near)")]
    assert len(oracle) == 399 + 1500 + 39
    with beam.Pipeline(runner=FnApiRunner()) as p:
        found = p | beam.Create(links) | ConnectedComponents(where=" (near)") | beam.Map(tuple)
        assert_that(found, equal_to(oracle))


def test_scale_no_components_key_holds_a_whole_star():
    # The 1,500-leaf star's centre has all its leaves as neighbours in every large-star step and
    # all its members when the stars are joined; with parts of at most 64 no grouping key holds
    # more than the limit (and a head), and the answer is the plain union-find's.
    from pipeline.shuffles import group_maxima, measure_shuffles

    links = _chain_and_star()
    oracle = [tuple(r) for r in resolve_links(links, where=" (near)")]
    p = beam.Pipeline(runner=FnApiRunner())
    found = p | beam.Create(links) | ConnectedComponents(where=" (near)", limit=64) | beam.Map(tuple)
    assert_that(found, equal_to(oracle))
    assert measure_shuffles(p) > 30
    result = p.run()
    result.wait_until_finish()
    maxima = {label: most for label, most in group_maxima(result).items() if label.startswith("Connected")}
    parted = [most for label, most in maxima.items() if "/Parts/" in label]
    assert len(parted) == 2 * 16 + 1 and max(parted) > 32  # every step measured, the star in parts
    assert max(maxima.values()) <= 64 + 1, sorted(maxima.items(), key=lambda kv: -kv[1])[:3]


def test_scale_a_kept_uid_with_thousands_of_copies_resolves_its_group_in_parts():
    # Level 0 removes 5,000 copies of "k", which level 1 removes as a copy of "root", and "x" as a
    # copy of "y": each copy's group is the root of its chain. The join by kept uid comes in parts
    # (PART_ELEMENTS, 2,048), not as one key of 5,001 elements.
    from pipeline.shuffles import group_maxima, measure_shuffles
    from transforms.common.unionfind import PART_ELEMENTS
    from transforms.dedup.stage import _resolve_groups
    from transforms.dedup.types import Decision

    first = [Decision(f"c{i:05d}", "exact_duplicate", "k", "") for i in range(5_000)]
    first.append(Decision("x", "exact_duplicate", "y", ""))
    second = [Decision("k", "near_duplicate", "root", "")]
    expected = [(f"c{i:05d}", "root") for i in range(5_000)] + [("x", "y"), ("k", "root")]
    p = beam.Pipeline(runner=FnApiRunner())
    levels = [p | "First" >> beam.Create(first), p | "Second" >> beam.Create(second)]
    assert_that(_resolve_groups(levels), equal_to(expected))
    measure_shuffles(p)
    result = p.run()
    result.wait_until_finish()
    joins = {label: most for label, most in group_maxima(result).items() if label.startswith("JoinRoots")}
    assert joins and 1_000 < max(joins.values()) <= PART_ELEMENTS + 1, joins
