"""Scale: the dedup stage shuffles nothing no level reads (item 4), and the Dataflow template's
output gets its search index and its report (item 5)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from PIL import Image

from pipeline.cli import main as winnow
from pipeline.output.index import INDEX_DIR, index_files
from pipeline.output.report import REPORT_FILE
from schemas import Sample, Status, make_uid
from schemas.layout import STATS_FILE
from tests.conftest import TEST_OVERRIDES, overrides
from transforms.common.manifest import read_manifest
from transforms.crawl import CrawlConfig
from transforms.dedup import DedupConfig, DeduplicateImages
from transforms.dedup.types import EXACT, NEAR, SEMANTIC
from transforms.embed import EmbedConfig

# --- item 4: no survivors join after the last dedup level ------------------------------------------


def _picture(seed: int, quality: int = 95) -> bytes:
    """A smooth picture (a gradient and a disc): JPEG qualities change its pixels, not its hash."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96]
    cx, cy, r = rng.integers(20, 76), rng.integers(20, 76), rng.integers(10, 20)
    colours = rng.integers(0, 256, (3, 3))
    pixels = np.empty((96, 96, 3), dtype=np.float64)
    for c in range(3):
        pixels[..., c] = colours[0, c] * x / 95 + colours[1, c] * (1 - x / 95)
        pixels[..., c][(x - cx) ** 2 + (y - cy) ** 2 < r * r] = colours[2, c]
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _sample(name: str, image: bytes, embedding: np.ndarray, clip_score: float) -> Sample:
    url = f"http://example.com/{name}.jpg"
    return Sample(
        uid=make_uid(url, name),
        url=url,
        caption=f"a photo of {name}",
        status=Status.SUCCESS,
        image=image,
        image_ext="jpg",
        image_embedding=embedding.astype(np.float32),
        clip_score=clip_score,
    )


def _planted() -> list[Sample]:
    """Twelve distinct pictures, and one copy per level: the same bytes (exact), the same picture
    saved at another JPEG quality (near), another picture with the same embedding (semantic)."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(16, 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    samples = [_sample(f"p{i:02d}", _picture(i), vectors[i], 0.3) for i in range(12)]
    samples.append(_sample("exact", _picture(0), vectors[12], 0.2))
    samples.append(_sample("near", _picture(1, quality=70), vectors[13], 0.2))
    samples.append(_sample("semantic", _picture(100), vectors[2], 0.2))
    return samples


def _stage(config: DedupConfig) -> DeduplicateImages:
    return DeduplicateImages(config, CrawlConfig(), EmbedConfig())


def _joins(config: DedupConfig) -> set[str]:
    """The names of the survivors joins in the dedup stage's job graph."""
    p = beam.Pipeline(runner=FnApiRunner())  # built, not run
    _ = p | beam.Create(_planted()) | "Dedup" >> _stage(config)
    names = [t.unique_name for t in p.to_runner_api().components.transforms.values()]
    survivors = {f"Join{level}" for level in ("Eval", "Exact", "Near", "Semantic")}
    return {name.rsplit("/", 1)[-1] for name in names} & survivors


def test_scale_item4_no_survivors_join_after_the_last_level():
    every = DedupConfig(epsilon=0.01, clusters=1, keep="clip_score")
    assert _joins(every) == {"JoinExact", "JoinNear"}  # the semantic level's survivors are read by no one
    assert _joins(DedupConfig(semantic=False)) == {"JoinExact"}
    assert _joins(DedupConfig(perceptual=False, semantic=False)) == set()

    def check(lists: list[list[Sample]]) -> None:
        rows = {row.url.rsplit("/", 1)[-1][:-4]: row for row in lists[0]}
        assert len(rows) == 15  # every row is kept, decided or not
        removed = {
            name: (row.reason, row.duplicate_of) for name, row in rows.items() if row.status != Status.SUCCESS
        }
        assert removed == {
            "exact": (EXACT, rows["p00"].uid),
            "near": (NEAR, rows["p01"].uid),
            "semantic": (SEMANTIC, rows["p02"].uid),
        }
        assert rows["p02"].dup_group == rows["p02"].uid == rows["semantic"].dup_group

    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        decided = p | beam.Create(_planted()) | "Dedup" >> _stage(every) | beam.combiners.ToList()
        assert_that(decided, check)


# --- item 5: the Dataflow template's job writes the index and the report --------------------------


def _flex_template_main():
    spec = importlib.util.spec_from_file_location("flex_template_main", "deploy/dataflow/main.py")
    assert spec and spec.loader
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    return launcher


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scale_item5_the_flex_template_job_writes_the_index_and_the_report(sample_web, tmp_path, monkeypatch):
    lists = tmp_path / "lists.parquet"
    pq.write_table(pq.read_table(sample_web.urls).slice(0, 20), lists)
    launcher = _flex_template_main()
    # No Google Cloud here: the local runner stands in for Dataflow. The launcher submits with
    # --no-wait, as on Dataflow, so everything after the shards is the job's own work.
    monkeypatch.setattr(launcher, "RUNNER", "local")
    template = tmp_path / "template"
    settings = "|".join([*TEST_OVERRIDES, "run.progress=false"])
    code = launcher.main(
        [f"--input={lists}", f"--output={template}", "--stages=crawl|embed", f"--overrides={settings}"]
    )
    assert code == 0

    manifest = read_manifest(str(template))
    assert manifest is not None and manifest.state == "complete"
    written = _files(template)
    index = {f"{INDEX_DIR}/{name}" for name in index_files("Flat")}
    assert index <= set(written) and index <= set(manifest.files)
    assert REPORT_FILE in written and REPORT_FILE in manifest.files
    assert b"winnow audit" in written[REPORT_FILE]
    stats = json.loads(written[STATS_FILE])
    assert stats["index"]["type"] == "Flat" and stats["index"]["count"] > 0
    assert stats["config"]["run"]["stages"] == ["crawl", "embed"]  # as the launcher writes it
    assert not (template / INDEX_DIR / "parts").exists()  # the build's parts are gone

    # The same sequence as a `winnow run` that waits for its job: the same index, byte for byte.
    waited = tmp_path / "waited"
    argv = ["run", "--input", str(lists), "--output", str(waited), "--stages", "crawl,embed"]
    assert winnow(argv + overrides("run.progress=false")) == 0
    assert read_manifest(str(waited)).state == "complete"
    again = _files(waited)
    assert {name: again[name] for name in index} == {name: written[name] for name in index}
    assert set(read_manifest(str(waited)).files) == set(manifest.files)
