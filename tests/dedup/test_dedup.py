"""The dedup stage on the sample web's ground truth, level by level, and its Beam mechanics."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline

from pipeline.config import load_config
from pipeline.jobs import run_job
from sampleweb.scoring import duplicate_pair_scores, shared_object_false_positives
from schemas import Status
from tests.conftest import TEST_OVERRIDES, read_output_rows
from transforms.dedup.config import DedupConfig
from transforms.dedup.decontam import read_eval_images
from transforms.dedup.semantic import SemDeDupEmbeddings, member
from transforms.dedup.types import EVAL, EXACT, NEAR, SEMANTIC

DEDUP_REASONS = (EXACT, NEAR, SEMANTIC)


def _run(sample_web, tmp_path_factory, name: str, *overrides: str) -> list[dict]:
    output = str(tmp_path_factory.mktemp(name) / "out")
    run_job(
        load_config(overrides=[*TEST_OVERRIDES, "run.progress=false", *overrides]), [sample_web.urls], output
    )
    return read_output_rows(output)


@pytest.fixture(scope="module")
def truth(sample_web) -> dict[str, dict]:
    return {row["url"]: row for row in sample_web.truth_rows()}


@pytest.fixture(scope="module")
def all_levels(sample_web, tmp_path_factory):
    return _run(sample_web, tmp_path_factory, "all")


def test_all_levels_find_the_planted_duplicates(all_levels, truth):
    precision, recall = duplicate_pair_scores(all_levels, truth)
    print(f"all levels: pair precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= 0.95 and recall >= 0.90
    rate, pairs = shared_object_false_positives(all_levels, truth)
    print(f"distinct scenes sharing an object: {pairs} pairs, {rate:.4f} merged")
    assert pairs > 1000 and rate <= 0.001


def test_removed_rows_name_what_they_duplicate(all_levels):
    by_uid = {row["uid"]: row for row in all_levels}
    removed = [row for row in all_levels if row["reason"] in DEDUP_REASONS]
    assert Counter(row["reason"] for row in removed)[EXACT] > 0
    for row in removed:
        assert row["status"] == Status.REJECTED and row["stage"] == "dedup" and row["key"] is None
        assert row["duplicate_of"] in by_uid and row["duplicate_of"] != row["uid"]
        assert row["error"] and row["duplicate_of"] in row["error"]
        kept = by_uid[row["dup_group"]]  # the group's id is the uid of the sample it keeps
        assert kept["status"] == Status.SUCCESS and kept["dup_group"] == kept["uid"]
    # Every group id on a kept row belongs to a group with a removed member.
    groups = {row["dup_group"] for row in removed}
    assert {
        row["dup_group"] for row in all_levels if row["status"] == Status.SUCCESS and row["dup_group"]
    } == groups


def test_exact_level_alone_needs_no_model(sample_web, tmp_path_factory, truth):
    rows = _run(
        sample_web,
        tmp_path_factory,
        "exact",
        "run.stages=[crawl,dedup]",
        "dedup.perceptual=false",
        "dedup.semantic=false",
    )
    assert {row["reason"] for row in rows} & set(DEDUP_REASONS) == {EXACT}
    assert all(row["clip_score"] is None for row in rows)
    precision, recall = duplicate_pair_scores(rows, truth, exact_only=True)
    print(f"exact level: pair precision {precision:.3f}, recall {recall:.3f}")
    assert precision == 1.0 and recall == 1.0


def test_perceptual_level_alone(sample_web, tmp_path_factory, truth):
    rows = _run(
        sample_web,
        tmp_path_factory,
        "near",
        "run.stages=[crawl,dedup]",
        "dedup.exact=false",
        "dedup.semantic=false",
    )
    assert {row["reason"] for row in rows} & set(DEDUP_REASONS) == {NEAR}
    precision, recall = duplicate_pair_scores(rows, truth)
    rate, _ = shared_object_false_positives(rows, truth)
    print(
        f"perceptual level: pair precision {precision:.3f}, recall {recall:.3f}, shared-object FP {rate:.4f}"
    )
    assert precision >= 0.95 and recall >= 0.90 and rate <= 0.001


def test_semantic_level_alone(sample_web, tmp_path_factory, truth):
    rows = _run(sample_web, tmp_path_factory, "semantic", "dedup.exact=false", "dedup.perceptual=false")
    assert {row["reason"] for row in rows} & set(DEDUP_REASONS) == {SEMANTIC}
    precision, recall = duplicate_pair_scores(rows, truth)
    rate, _ = shared_object_false_positives(rows, truth)
    print(f"semantic level: pair precision {precision:.3f}, recall {recall:.3f}, shared-object FP {rate:.4f}")
    assert precision >= 0.95 and rate <= 0.001
    assert recall >= 0.55  # the shipped 8M-parameter model; see the README's dedup figures


def test_decontamination_against_the_heldout_split(sample_web, tmp_path_factory, truth):
    eval_dir = tmp_path_factory.mktemp("eval")
    originals = [
        t for t in truth.values() if t["split"] == "heldout" and t["dup_variant"] in (None, "original")
    ]
    for fact in originals:
        if fact["expected_status"] == "success":
            name = fact["url"].rsplit("/", 1)[-1]
            shutil.copy(os.path.join(sample_web.dir, "files", name), eval_dir / name)
    rows = _run(
        sample_web, tmp_path_factory, "decontam", "run.stages=[crawl,dedup]", f"dedup.eval_images={eval_dir}"
    )
    reached = [r for r in rows if r["status"] == Status.SUCCESS or r["reason"] in (*DEDUP_REASONS, EVAL)]
    heldout = [r for r in reached if truth[r["url"]]["split"] == "heldout"]
    flagged = [r for r in reached if r["reason"] == EVAL]
    assert len(heldout) >= 20
    recall = sum(r["reason"] == EVAL for r in heldout) / len(heldout)
    precision = sum(truth[r["url"]]["split"] == "heldout" for r in flagged) / max(1, len(flagged))
    print(f"decontamination: {len(heldout)} held-out samples, recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.95 and precision == 1.0
    for row in flagged:
        assert row["duplicate_of"] in os.listdir(eval_dir) and row["duplicate_of"] in row["error"]
        assert row["dup_group"] is None


def test_eval_images_from_tars_and_parquet(tmp_path):
    image = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(image, "PNG")
    data = image.getvalue()
    with tarfile.open(tmp_path / "eval.tar", "w") as archive:
        for name in ("a.png", "a.json", "b.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    pq.write_table(
        pa.table(
            {"key": ["x", "y"], "image": [{"bytes": data, "path": "x.png"}, {"bytes": data, "path": None}]}
        ),
        tmp_path / "eval.parquet",
    )
    assert [n for n, _ in read_eval_images(str(tmp_path / "eval.tar"))] == [
        "eval.tar:a.png",
        "eval.tar:b.png",
    ]
    assert [n for n, _ in read_eval_images(str(tmp_path / "eval.parquet"))] == [
        "eval.parquet:x",
        "eval.parquet:y",
    ]
    pq.write_table(pa.table({"caption": ["no image"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet: no image column"):
        list(read_eval_images(str(tmp_path / "bad.parquet")))


def _planted(n: int, copies: int, seed: int = 3) -> tuple[list, set[frozenset[str]]]:
    """`n` random unit vectors of dimension 32 and `copies` near-copies of the first ones."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, 32)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    members = [member(f"{i:04d}", points[i], float(i % 7)) for i in range(n)]
    groups = set()
    for c in range(copies):
        copy = points[c] + 0.005 * rng.standard_normal(32).astype(np.float32)
        members.append(member(f"c{c:03d}", copy, 10.0))
        groups.add(frozenset({f"{c:04d}", f"c{c:03d}"}))
    return members, groups


_COLLECTED: list[tuple[str, str, str]] = []


def _collect(decisions: list) -> None:
    _COLLECTED.extend(decisions)  # the in-process runner shares this module's globals


def _semantic_decisions(members: list, config: DedupConfig) -> list[tuple[str, str, str]]:
    _COLLECTED.clear()
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        (
            p
            | beam.Create(members)
            | SemDeDupEmbeddings(config)
            | beam.Map(lambda d: (d.uid, d.duplicate_of, d.reason))
            | beam.combiners.ToList()
            | beam.Map(_collect)
        )
    return list(_COLLECTED)


def test_semdedup_tiles_huge_clusters_without_changing_the_result():
    members, groups = _planted(400, 30)
    config = DedupConfig(epsilon=0.01, clusters=2, keep="clip_score")
    whole = _semantic_decisions(members, config)
    tiled = _semantic_decisions(
        members, DedupConfig(epsilon=0.01, clusters=2, keep="clip_score", max_group_size=40)
    )
    assert sorted(whole) == sorted(tiled)
    # Each planted copy has the higher clip score, so the copy is kept and the original removed.
    assert {frozenset({removed, kept}) for removed, kept, _ in whole} <= groups
    assert all(removed[0] != "c" and reason == SEMANTIC for removed, _, reason in whole)
    assert len(whole) >= 27  # a copy may land in another cluster than its original


def test_semdedup_keep_policy_first_uid():
    members, _ = _planted(200, 10)
    decisions = _semantic_decisions(members, DedupConfig(epsilon=0.01, clusters=1, keep="first_uid"))
    assert sorted((removed, kept) for removed, kept, _ in decisions) == [
        (f"c{c:03d}", f"{c:04d}") for c in range(10)
    ]


def test_near_duplicates_tile_hot_buckets(sample_web, tmp_path_factory, all_levels):
    # The same run with every hash bucket cut into tiles of 8: identical decisions.
    rows = _run(sample_web, tmp_path_factory, "tiled", "dedup.max_group_size=8")
    assert [(r["uid"], r["reason"], r["duplicate_of"]) for r in rows] == [
        (r["uid"], r["reason"], r["duplicate_of"]) for r in all_levels
    ]


def test_dedup_config_is_checked():
    with pytest.raises(ValueError, match="max_hash_distance"):
        DedupConfig(max_hash_distance=64)
    with pytest.raises(ValueError, match="epsilon"):
        DedupConfig(epsilon=1.0)
    assert DedupConfig(max_hash_distance=10).bands == 11 and DedupConfig(hash_bands=4).bands == 4


def test_decontamination_matches_by_embedding_when_hashes_differ():
    from transforms.dedup.decontam import _DecontaminateFn, pack_eval_set
    from transforms.dedup.types import Fingerprint

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def fp(uid: str, hash64: int, vector: np.ndarray) -> Fingerprint:
        return Fingerprint(uid, None, uid, hash64, bytes(768), 1, None, vector.astype(np.float16))

    evals = [fp("eval.tar:cat.jpg", 0, vectors[0]), fp("eval.tar:dog.jpg", 0, vectors[1])]
    near = vectors[0] + 0.001 * rng.standard_normal(16).astype(np.float32)
    batch = [
        ("copy", fp("copy", (1 << 64) - 1, near)),  # all 64 hash bits differ: only the embedding matches
        ("other", fp("other", (1 << 64) - 1, vectors[2])),
    ]
    decisions = list(_DecontaminateFn(DedupConfig()).process(batch, pack_eval_set(evals)))
    assert [(d.uid, d.reason, d.duplicate_of) for d in decisions] == [("copy", EVAL, "eval.tar:cat.jpg")]
    assert "embedding cosine" in decisions[0].detail


def test_decontamination_with_eval_embeddings_from_the_model(sample_web, tmp_path_factory, truth):
    eval_dir = tmp_path_factory.mktemp("eval-embed")
    heldout = [
        t
        for t in truth.values()
        if t["split"] == "heldout"
        and t["dup_variant"] in (None, "original")
        and t["expected_status"] == "success"
    ]
    for fact in heldout:
        name = fact["url"].rsplit("/", 1)[-1]
        shutil.copy(os.path.join(sample_web.dir, "files", name), eval_dir / name)
    # The eval images go through the embed stage's model too; hashes alone would catch these as well,
    # so what this checks is that the eval branch with RunInference runs and agrees.
    rows = _run(sample_web, tmp_path_factory, "decontam-embed", f"dedup.eval_images={eval_dir}")
    flagged = [r for r in rows if r["reason"] == EVAL]
    assert flagged and all(truth[r["url"]]["split"] == "heldout" for r in flagged)
    assert not any(truth[r["url"]]["split"] == "heldout" and r["status"] == Status.SUCCESS for r in rows)
