"""DataComp's own download layout as input: `shards/*.tar` with img2dataset's per-shard Parquet,
and apart from them `metadata/*.parquet` with `.npz` siblings (`input.metadata`), joined by uid.

The download is generated here as DataComp's `download_upstream.py` leaves it: the metadata holds
more rows than the shards (images img2dataset could not fetch, or shards not downloaded), in
another order and split into other files than the tars. DataComp's CLIP-score baseline must
select exactly the uids `baselines/apply_filter.py`'s rule selects over every metadata row
(reimplemented below with numpy), and every shard row must have its output row.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.cli import main
from tests.conftest import read_output_rows
from tests.pipeline.test_s3 import BUCKET, monkeypatch_module, s3  # noqa: F401 (fixtures)
from transforms.embed.threshold import FractionThreshold, fraction_threshold

CONFIG = str(Path(__file__).parents[2] / "deploy" / "configs" / "datacomp-clip-score.yaml")
#: Rows of the generated pool: in the shards (some failed to download), and in the metadata only.
IN_SHARDS, FAILED, ONLY_METADATA = 36, 4, 24
#: The shard rows (by position) with no metadata row: a sample DataComp's metadata does not know.
UNKNOWN = 5

METADATA_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("clip_b32_similarity_score", pa.float32()),
        ("clip_l14_similarity_score", pa.float32()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
        ("sha256", pa.string()),
    ]
)


def _unit_pair(rng: np.random.Generator, score: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.standard_normal(width)
    image /= np.linalg.norm(image)
    other = rng.standard_normal(width)
    other -= other.dot(image) * image
    other /= np.linalg.norm(other)
    return image.astype(np.float16), (score * image + np.sqrt(1 - score * score) * other).astype(np.float16)


def _jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24 + i % 5, 20), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(out, "JPEG")
    return out.getvalue()


def write_datacomp_download(root: Path, seed: int = 5) -> dict:
    """Writes `root/metadata/*.parquet` (+ `.npz`) and `root/shards/*.tar` (+ img2dataset's
    `.parquet`) as DataComp's download leaves them; returns what was written."""
    rng = np.random.default_rng(seed)
    total = IN_SHARDS + ONLY_METADATA
    uids = [f"{int(rng.integers(0, 2**63)):016x}{int(rng.integers(0, 2**63)):016x}" for _ in range(total)]
    ties = rng.uniform(0.2, 0.3, size=3).astype(np.float32)  # scores repeated exactly: ties at the threshold
    l14 = np.where(rng.random(total) < 0.2, ties[rng.integers(0, 3, total)], rng.uniform(0.05, 0.45, total))
    l14 = l14.astype(np.float32)
    # The rows only in the metadata score higher on the whole: ranking the shards alone would differ.
    l14[IN_SHARDS:] += np.float32(0.08)
    b32 = rng.uniform(0.05, 0.45, total).astype(np.float32)
    meta = [
        {
            "uid": uids[i],
            "url": f"http://pool.example/{i}.jpg",
            "text": f"caption {i}",
            "original_width": 300 + i,
            "original_height": 240,
            "clip_b32_similarity_score": float(b32[i]),
            "clip_l14_similarity_score": float(l14[i]),
            "face_bboxes": [[0.1, 0.2, 0.3, 0.4]] if i % 7 == 0 else [],
            "sha256": f"{i:064x}",
        }
        for i in range(total)
    ]
    vectors = {
        uids[i]: {**dict(zip(("l14_img", "l14_txt"), _unit_pair(rng, float(l14[i]), 768), strict=True)),
                  **dict(zip(("b32_img", "b32_txt"), _unit_pair(rng, float(b32[i]), 512), strict=True))}
        for i in range(total)
    }  # fmt: skip
    # The metadata: every row but the unknown one, shuffled, in three files of other sizes than the shards.
    order = [i for i in rng.permutation(total) if i != UNKNOWN]
    metadata_dir = root / "metadata"
    metadata_dir.mkdir(parents=True)
    names = ["0a1f.parquet", "5be2.parquet", "c07d.parquet"]
    for name, part in zip(names, np.array_split(np.array(order), 3), strict=True):
        pq.write_table(
            pa.Table.from_pylist([meta[i] for i in part], schema=METADATA_SCHEMA), metadata_dir / name
        )
        arrays = {
            key: np.stack([vectors[uids[i]][key] for i in part])
            for key in ("l14_img", "l14_txt", "b32_img", "b32_txt")
        }
        np.savez(metadata_dir / name.replace(".parquet", ".npz"), **arrays)  # type: ignore[arg-type]
    # The shards: img2dataset's webdataset output of the first IN_SHARDS rows, 23 and 13 per shard.
    shards_dir = root / "shards"
    shards_dir.mkdir()
    failed = set(rng.choice(np.arange(IN_SHARDS), FAILED, replace=False).tolist()) - {UNKNOWN}
    for shard, rows in enumerate((range(0, 23), range(23, IN_SHARDS))):
        stem = f"{shard:08d}"
        records = []
        with tarfile.open(shards_dir / f"{stem}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for n, i in enumerate(rows):
                key = f"{shard:04d}{n:04d}"
                ok = i not in failed
                data = _jpeg(i) if ok else b""
                record = {
                    "key": key, "uid": uids[i], "url": meta[i]["url"], "caption": meta[i]["text"],
                    "status": "success" if ok else "failed_to_download",
                    "error_message": None if ok else "HTTP Error 404: Not Found",
                    "width": 24 + i % 5 if ok else None, "height": 20 if ok else None,
                    "original_width": 24 + i % 5 if ok else None, "original_height": 20 if ok else None,
                    "exif": None, "sha256": None,
                }  # fmt: skip
                records.append(record)
                if not ok:
                    continue
                meta_json = {
                    k: record[k] for k in ("uid", "key", "url", "caption", "status", "width", "height")
                }
                for name, payload in (
                    (f"{key}.jpg", data),
                    (f"{key}.txt", meta[i]["text"].encode()),
                    (f"{key}.json", json.dumps(meta_json).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
        pq.write_table(pa.Table.from_pylist(records), shards_dir / f"{stem}.parquet")
        (shards_dir / f"{stem}_stats.json").write_text(json.dumps({"count": len(records)}))
    return {"uids": uids, "l14": l14, "vectors": vectors, "failed": {uids[i] for i in failed},
            "order": order, "meta": meta}  # fmt: skip


def apply_filter_clip_score(metadata_dir: Path, fraction: float) -> set[str]:
    """DataComp's `apply_filter.py` (`load_uids_with_clip_score`, arch l14, a fraction): the
    threshold is the score at position int(n * fraction) of every metadata row's score sorted
    from the highest, and the uids scoring at least that are selected."""
    paths = sorted(p for p in metadata_dir.iterdir() if ".parquet" in p.name)
    df = pa.concat_tables(
        [pq.read_table(p, columns=["uid", "clip_l14_similarity_score"]) for p in paths]
    ).to_pandas()
    key = "clip_l14_similarity_score"
    threshold = -np.sort(-df[key].values)[int(len(df) * fraction)]
    return set(df[df[key] >= threshold]["uid"])


def _run(*args: str) -> int:
    return main(["run", "--config", CONFIG, *args, "--set", "output.index=false"])


def test_t2_item11_datacomp_metadata_joined_by_uid_selects_datacomps_uids(tmp_path: Path, capsys) -> None:
    pool = write_datacomp_download(tmp_path / "datacomp")
    uids, l14 = pool["uids"], pool["l14"]
    output = tmp_path / "out"
    code = _run("--input", str(tmp_path / "datacomp" / "shards"), "--output", str(output),
                "--set", f"input.metadata={tmp_path / 'datacomp' / 'metadata'}")  # fmt: skip
    assert code == 0, capsys.readouterr().err

    rows = read_output_rows(str(output))
    assert sorted(r["uid"] for r in rows) == sorted(uids[:IN_SHARDS])  # every shard row, once
    by_uid = {r["uid"]: r for r in rows}
    # The selection: apply_filter's over the whole metadata, within the images the shards hold.
    expected = apply_filter_clip_score(tmp_path / "datacomp" / "metadata", 0.3)
    downloaded = set(uids[:IN_SHARDS]) - pool["failed"] - {uids[UNKNOWN]}
    kept = {r["uid"] for r in rows if r["status"] == "success"}
    assert kept == expected & downloaded
    assert 0 < len(kept) < len(downloaded)
    # Ranking only what the shards hold would select otherwise: the metadata's other rows count.
    in_shards = np.array([l14[i] for i in range(IN_SHARDS) if i != UNKNOWN])
    shard_threshold = fraction_threshold(in_shards, 0.3)
    assert {u for u in downloaded if l14[uids.index(u)] >= shard_threshold} != kept

    for uid in downloaded - kept:
        assert by_uid[uid]["reason"] == "low_clip_score"
    for uid in pool["failed"]:
        assert by_uid[uid]["reason"] == "not_downloaded"
    unknown = by_uid[uids[UNKNOWN]]  # a shard sample without a metadata row: its own row, with why
    assert (unknown["status"], unknown["reason"]) == ("failed", "embedding_missing")

    # The metadata's scores, face boxes and embeddings went with the samples; no model ran.
    for uid in downloaded:
        row, i = by_uid[uid], uids.index(uid)
        extra = json.loads(row["extra"])
        assert extra["clip_l14_similarity_score"] == pytest.approx(float(l14[i]))
        assert extra["face_bboxes"] == pool["meta"][i]["face_bboxes"]
        assert extra["original_width"] == 300 + i  # the metadata's record, as DataComp's rules read it
        assert row["clip_score"] == pytest.approx(float(l14[i]))
        assert row["clip_model"] == "ViT-L-14/openai"
        assert (
            row["embedding_source"].startswith("pool:") and ".npz#l14_img,l14_txt" in row["embedding_source"]
        )
    stats = json.loads((output / "stats.json").read_text())
    metrics = stats["metrics"]
    assert metrics["crawl/metadata_joined"] == IN_SHARDS - 1
    assert metrics["crawl/metadata_missing"] == 1
    assert metrics["crawl/metadata_not_in_pool"] == ONLY_METADATA
    assert metrics["embed/embeddings_reused"] == len(downloaded)
    assert stats["pool"]["metadata"] == str(tmp_path / "datacomp" / "metadata")
    # The stored embeddings (the kept samples' among them) are the metadata's .npz rows, L2-normalised.
    emb_rows = (
        pa.concat_tables([pq.read_table(p) for p in sorted((output / "metadata").glob("*.parquet"))])
        .column("uid")
        .to_pylist()
    )
    images = np.concatenate([np.load(p) for p in sorted((output / "img_emb").glob("*.npy"))])
    assert kept <= set(emb_rows) <= downloaded
    for uid, vector in zip(emb_rows, images, strict=True):
        want = pool["vectors"][uid]["l14_img"].astype(np.float32)
        assert np.allclose(vector.astype(np.float32), want / np.linalg.norm(want), atol=2e-3)


def test_t2_item11_exact_threshold_matches_datacomps_rule_in_bounded_passes() -> None:
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(0.25, 0.08, 5000).astype(np.float32), np.full(40, 0.31, np.float32)])
    scores = scores.astype(np.float64)
    scores[rng.choice(len(scores), 30, replace=False)] = np.nan  # missing scores: counted, sorted last
    parts = [scores[i : i + 333] for i in range(0, len(scores), 333)]
    for fraction in (0.3, 0.9, 0.001, 1.0):
        with beam.Pipeline() as p:
            got = p | beam.Create(parts) | FractionThreshold(fraction)
            assert_that(got, equal_to([fraction_threshold(scores, fraction)]))


def _hostile(tmp_path: Path, capsys, damage) -> str:
    root = tmp_path / "datacomp"
    write_datacomp_download(root)
    damage(root / "metadata")
    code = _run("--input", str(root / "shards"), "--output", str(tmp_path / "out"),
                "--set", f"input.metadata={root / 'metadata'}")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("winnow:")]  # past the progress line
    assert len(errors) == 1 and errors[0].startswith("winnow: error: input.metadata:"), err
    assert "while running" not in errors[0]  # Beam's step name is not the user's business
    return errors[0]


def _rewrite(path: Path, change) -> None:
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), path)


@pytest.mark.parametrize("case", ["no_uid_column", "uid_missing", "uid_twice", "npz_short"])
def test_t2_item11_hostile_metadata_is_exit_2_naming_the_file(tmp_path: Path, capsys, case: str) -> None:
    if case == "no_uid_column":  # found before the run: the output folder is never made
        err = _hostile(
            tmp_path,
            capsys,
            lambda d: pq.write_table(pq.read_table(d / "0a1f.parquet").drop(["uid"]), d / "0a1f.parquet"),
        )
        assert "0a1f.parquet has no 'uid' column" in err
        assert not os.path.exists(tmp_path / "out")
    elif case == "uid_missing":
        err = _hostile(
            tmp_path, capsys, lambda d: _rewrite(d / "5be2.parquet", lambda rows: rows[3].update(uid=None))
        )
        assert "5be2.parquet row 3" in err
    elif case == "uid_twice":

        def twice(d: Path) -> None:
            first = pq.read_table(d / "0a1f.parquet").column("uid")[0].as_py()
            _rewrite(d / "c07d.parquet", lambda rows: rows[1].update(uid=first))

        err = _hostile(tmp_path, capsys, twice)
        assert "0a1f.parquet row 0" in err and "c07d.parquet row 1" in err
    else:

        def short(d: Path) -> None:
            with np.load(d / "c07d.npz") as arrays:
                kept = {k: arrays[k][:-1] for k in arrays.files}
            np.savez(d / "c07d.npz", **kept)  # type: ignore[arg-type]

        err = _hostile(tmp_path, capsys, short)
        assert "c07d.npz" in err and "rows" in err
    assert not os.path.exists(tmp_path / "out" / "stats.json")


def test_t2_item11_metadata_on_s3_is_joined_as_a_local_one(tmp_path: Path, s3, capsys) -> None:  # noqa: F811
    endpoint, client = s3
    pool = write_datacomp_download(tmp_path / "datacomp")
    for path in sorted((tmp_path / "datacomp" / "metadata").iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"dc/metadata/small/{path.name}", Body=path.read_bytes())
    output = tmp_path / "out"
    code = _run("--input", str(tmp_path / "datacomp" / "shards"), "--output", str(output),
                "--set", f"input.metadata=s3://{BUCKET}/dc/metadata/small",
                f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
                "--s3_secret_access_key=testing", "--s3_region_name=us-east-1")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = read_output_rows(str(output))
    downloaded = set(pool["uids"][:IN_SHARDS]) - pool["failed"] - {pool["uids"][UNKNOWN]}
    expected = apply_filter_clip_score(tmp_path / "datacomp" / "metadata", 0.3) & downloaded
    assert {r["uid"] for r in rows if r["status"] == "success"} == expected
    assert (
        json.loads((output / "stats.json").read_text())["metrics"]["crawl/metadata_not_in_pool"]
        == ONLY_METADATA
    )
