"""A pool of downloaded shards as input: a DataComp-shaped pool (tars, Parquet, `.npz`) through
`winnow run`, DataComp's baselines reproduced uid for uid against a reference written here from
its rules, the pool's embeddings reused, Winnow's own output read back, a damaged tar retried."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from sampleweb.pool import write_clip_retrieval_output, write_datacomp_pool
from schemas.layout import read_tar_images
from schemas.sample import make_uid
from tests.conftest import SampleWeb
from transforms.text.langid import default_model_path

CONFIGS = Path(__file__).parents[2] / "deploy" / "configs"


@pytest.fixture(scope="module")
def pool(sample_web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = str(tmp_path_factory.mktemp("datacomp-pool"))
    write_datacomp_pool(sample_web.dir, folder, shards=2, seed=3)
    return folder


def _pool_rows(folder: str) -> dict[str, np.ndarray]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{folder}/*.parquet"))])
    return {name: np.array(table.column(name).to_pylist(), dtype=object) for name in table.column_names}


def datacomp_selection(folder: str, rule: str) -> set[str]:
    """The uids DataComp's `baselines/apply_filter.py` selects with `rule`, written from its rules
    over the pool's Parquet files (all rows, as DataComp reads its metadata)."""
    df = _pool_rows(folder)
    text = [str(t) for t in df["text"]]
    model = fasttext.load_model(default_model_path())
    labels = model.predict([t.replace("\n", " ") for t in text], k=1)[0]
    english = np.array([label[0].replace("__label__", "") == "en" for label in labels])
    words = np.array([len(t.split()) for t in text])
    chars = np.array([len(t) for t in text])
    width = df["original_width"].astype(np.float64)
    height = df["original_height"].astype(np.float64)
    shorter, longer = np.minimum(width, height), np.maximum(width, height)
    basic = english & (words > 2) & (chars > 5) & (shorter >= 200) & (longer / shorter <= 3.0)
    l14 = df["clip_l14_similarity_score"].astype(np.float32)
    threshold = -np.sort(-l14)[int(len(l14) * 0.3)]
    top30 = l14 >= threshold
    b32 = df["clip_b32_similarity_score"].astype(np.float32)
    masks = {
        "basic": basic,
        "clip_score": top30,
        "basic_clip_score": basic & top30,
        "laion2b": english & (b32 >= 0.28),
    }
    return set(df["uid"][masks[rule]])


def _output_rows(output: str) -> list[dict]:
    paths = sorted(glob.glob(f"{output}/[0-9]*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in paths]).to_pylist()


def _run(*args: str) -> int:
    return main(["run", *args, "--set", "output.index=false"])


@pytest.mark.parametrize(
    ("config", "rule", "identity"),
    [
        ("datacomp-basic.yaml", "basic", None),
        ("datacomp-clip-score.yaml", "clip_score", "ViT-L-14/openai"),
        ("datacomp-clip-filter.yaml", "basic_clip_score", "ViT-L-14/openai"),
        ("datacomp-laion2b.yaml", "laion2b", "ViT-B-32/openai"),
    ],
)
def test_datacomp_baselines_select_the_uids_datacomps_rules_select(
    pool: str, tmp_path: Path, config: str, rule: str, identity: str | None
) -> None:
    output = str(tmp_path / "out")
    assert _run("--config", str(CONFIGS / config), "--input", f"{pool}/*.tar", "--output", output,
                "--set", "output.uids_file=selected.npy") == 0  # fmt: skip
    pool_rows = _pool_rows(pool)
    downloaded = set(pool_rows["uid"][pool_rows["status"] == "success"])
    expected = datacomp_selection(pool, rule) & downloaded
    assert 0 < len(expected) < len(downloaded)  # the rule decides something on this pool

    rows = _output_rows(output)
    assert sorted(r["uid"] for r in rows) == sorted(pool_rows["uid"])  # one row per pool row, same uid
    kept = {r["uid"] for r in rows if r["status"] == "success"}
    assert kept == expected
    for row in rows:  # every row names its place in the pool and why it was not kept
        extra = json.loads(row["extra"])
        assert extra["__shard__"].endswith(".tar") and extra["__key__"]
        assert (row["status"] == "success") == (row["reason"] is None)
    not_downloaded = {r["uid"] for r in rows if r["reason"] == "not_downloaded"}
    assert not_downloaded == set(pool_rows["uid"]) - downloaded

    selected = np.load(f"{output}/selected.npy")
    assert selected.dtype == np.dtype("u8,u8")
    pairs = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in expected], np.dtype("u8,u8"))
    assert selected.tolist() == np.sort(pairs).tolist()

    stats = json.loads(Path(output, "stats.json").read_text())
    if identity is None:
        assert all(r["clip_score"] is None for r in rows)
        return
    # The pool's embeddings were used: no model ran (the weights are not on this machine).
    embedded = [r for r in rows if r["embedding_source"] is not None]
    assert {r["clip_model"] for r in embedded} == {identity}
    assert all(r["embedding_source"].startswith("pool:") for r in embedded)
    reached = stats["stages"]["embed"]["total"]
    assert stats["metrics"]["embed/embeddings_reused"] == reached > 0
    arch = "l14" if "L-14" in identity else "b32"
    assert len(np.load(glob.glob(f"{output}/img_emb/*.npy")[0])[0]) == {"l14": 768, "b32": 512}[arch]


def test_a_pool_with_another_models_embeddings_is_an_error_unless_recomputed(
    pool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--input", f"{pool}/*.tar", "--stages", "crawl,embed", "--set", "crawl.resize_mode=no"]
    assert _run(*args, "--output", str(tmp_path / "a")) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ViT-B-32/openai, ViT-L-14/openai" in message and "winnow-tiny-clip" in message
    assert "embed.recompute" in message

    assert _run(*args, "--output", str(tmp_path / "b"), "--set", "embed.recompute=true") == 0
    rows = _output_rows(str(tmp_path / "b"))
    embedded = [r for r in rows if r["clip_score"] is not None]
    assert len(embedded) == sum(r["status"] == "success" for r in rows) > 0
    assert all(r["clip_model"].startswith("winnow-tiny-clip@") for r in embedded)
    assert all(r["embedding_source"] is None for r in rows)


def test_winnows_own_output_read_as_a_pool_keeps_the_same_samples(pool: str, tmp_path: Path) -> None:
    config = str(CONFIGS / "datacomp-clip-filter.yaml")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    assert _run("--config", config, "--input", f"{pool}/*.tar", "--output", first) == 0
    # The first output given as a folder: its tars are the shards; its Parquet, embeddings, stats
    # and report beside them are not inputs of their own.
    assert _run("--config", config, "--input", first, "--output", second) == 0
    kept = [{r["uid"] for r in _output_rows(out) if r["status"] == "success"} for out in (first, second)]
    assert kept[0] == kept[1] and kept[0]
    # The audit reads a pool run as any run: its report names the pool's own failure reason.
    os.remove(f"{first}/report.html")
    assert main(["audit", first]) == 0
    assert "not_downloaded" in Path(first, "report.html").read_text(encoding="utf-8")
    again = [r for r in _output_rows(second) if r["status"] == "success"]
    # The first run's embeddings (its img_emb/ files, model in its Parquet) were reused.
    assert all(r["embedding_source"].startswith("pool:img_emb/") for r in again)
    before = {r["uid"]: r for r in _output_rows(first)}
    stored = {
        key: hashlib.sha256(data).hexdigest()
        for t in glob.glob(f"{first}/*.tar")
        for key, _, data in read_tar_images(t)
    }
    for row in again:  # the image the first run stored is the one the second read
        assert row["sha256"] == stored[row["uid"]]
        assert (row["original_width"], row["original_height"]) == (
            before[row["uid"]]["original_width"],
            before[row["uid"]]["original_height"],
        )


def test_a_tar_that_cannot_be_read_fails_its_rows_and_retry_failed_reads_it_again(
    pool: str, tmp_path: Path
) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    tar = sorted(copy.glob("*.tar"))[1]
    intact = tar.read_bytes()
    tar.write_bytes(intact[: len(intact) // 2])  # a copy cut short
    config = str(CONFIGS / "datacomp-clip-score.yaml")
    first, retried, whole = (str(tmp_path / name) for name in ("first", "retried", "whole"))
    _run("--config", config, "--input", f"{copy}/*.tar", "--output", first)  # exit 3: the alarm
    rows = _output_rows(first)
    cut = [r for r in rows if r["reason"] == "shard_unreadable"]
    assert cut and all(json.loads(r["extra"])["__shard__"] == str(tar) for r in cut)
    assert len(rows) == len(_pool_rows(pool)["uid"])

    tar.write_bytes(intact)
    assert _run("--config", config, "--retry-failed", first, "--output", retried) == 0
    assert _run("--config", config, "--input", f"{copy}/*.tar", "--output", whole) == 0
    outcome = [{r["uid"]: (r["status"], r["reason"]) for r in _output_rows(out)} for out in (retried, whole)]
    assert outcome[0] == outcome[1]
    assert not any(reason == "shard_unreadable" for _, reason in outcome[0].values())


def test_a_uids_file_outside_the_output_is_never_overwritten(pool: str, tmp_path: Path) -> None:
    existing = tmp_path / "mine.npy"
    existing.write_bytes(b"not Winnow's")
    args = ["--input", f"{pool}/*.tar", "--stages", "crawl", "--output", str(tmp_path / "o")]
    assert _run(*args, "--set", f"output.uids_file={existing}") == 2
    assert existing.read_bytes() == b"not Winnow's"
    fresh = tmp_path / "fresh.npy"
    assert _run(*args, "--set", f"output.uids_file={fresh}", "--set", "crawl.resize_mode=no") == 0
    assert len(np.load(fresh)) == sum(r["status"] == "success" for r in _output_rows(str(tmp_path / "o")))
    assert os.path.exists(tmp_path / "o" / "stats.json")


IMG2DATASET_POOL = Path(__file__).parents[1] / "data" / "img2dataset-pool"


def _tar_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_an_img2dataset_download_is_read_as_img2dataset_wrote_it(tmp_path: Path) -> None:
    """img2dataset's own output (`tests/data/make_img2dataset_pool.py`), given as a folder: its
    Parquet and stats beside the tar are the shard's metadata, not inputs of their own."""
    output = str(tmp_path / "out")
    args = [
        "--stages",
        "crawl",
        "--set",
        "crawl.resize_mode=no",
        "--set",
        "input.save_additional_columns=[license]",
    ]
    assert _run("--input", str(IMG2DATASET_POOL), "--output", output, *args) == 0
    written = pq.read_table(IMG2DATASET_POOL / "00000.parquet").to_pylist()
    members = _tar_members(str(IMG2DATASET_POOL / "00000.tar"))
    rows = {json.loads(r["extra"])["__key__"]: r for r in _output_rows(output)}
    assert sorted(rows) == sorted(r["key"] for r in written)
    stored = {name: data for t in glob.glob(f"{output}/*.tar") for name, data in _tar_members(t).items()}
    for source in written:
        row = rows[source["key"]]
        assert row["uid"] == make_uid(source["url"], source["caption"])
        assert (row["url"], row["caption"]) == (source["url"], source["caption"])
        assert json.loads(row["extra"])["license"] == source["license"]
        if source["status"] != "success":
            assert (row["status"], row["reason"]) == ("failed", "not_downloaded")
            assert source["error_message"] in row["error"]
            continue
        image = members[f"{source['key']}.jpg"]
        assert row["status"] == "success"
        assert stored[f"{row['uid']}.jpg"] == image  # resize_mode: no keeps the pool's bytes
        assert row["sha256"] == hashlib.sha256(image).hexdigest()
        assert (row["width"], row["height"]) == (source["width"], source["height"])
        assert (row["original_width"], row["original_height"]) == (
            source["original_width"],
            source["original_height"],
        )
    assert {r["status"] for r in written} == {"success", "failed_to_download"}


def test_a_tar_alone_gives_a_row_per_key_from_its_txt_and_json(tmp_path: Path) -> None:
    alone = tmp_path / "pool"
    alone.mkdir()
    members = _tar_members(str(IMG2DATASET_POOL / "00000.tar"))
    keys = sorted({name.split(".", 1)[0] for name in members})
    with tarfile.open(alone / "00000.tar", "w") as tar:
        for name, data in sorted(members.items()):
            if name == f"{keys[0]}.jpg":
                continue  # a sample whose image is missing
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    output = str(tmp_path / "out")
    assert _run("--input", str(alone / "00000.tar"), "--output", output, "--stages", "crawl") == 0
    rows = {json.loads(r["extra"])["__key__"]: r for r in _output_rows(output)}
    assert sorted(rows) == keys
    for key in keys:
        metadata = json.loads(members[f"{key}.json"])
        assert rows[key]["caption"] == members[f"{key}.txt"].decode()
        assert rows[key]["url"] == metadata["url"]
        assert json.loads(rows[key]["extra"])["original_width"] == metadata["original_width"]
    assert (rows[keys[0]]["status"], rows[keys[0]]["reason"]) == ("failed", "image_missing")
    assert all(rows[k]["status"] == "success" for k in keys[1:])


def test_two_rows_naming_one_key_keep_both_rows(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(IMG2DATASET_POOL, pool)
    table = pq.read_table(pool / "00000.parquet")
    first = table.slice(0, 1).to_pylist()[0]
    twin = {**first, "caption": first["caption"] + " (again)"}
    pq.write_table(
        pa.concat_tables([table, pa.Table.from_pylist([twin], schema=table.schema)]), pool / "00000.parquet"
    )
    output = str(tmp_path / "out")
    assert _run("--input", str(pool), "--output", output, "--stages", "crawl") == 0
    rows = [r for r in _output_rows(output) if json.loads(r["extra"])["__key__"] == first["key"]]
    assert sorted((r["status"], r["reason"]) for r in rows) == [
        ("failed", "duplicate_key"),
        ("success", None),
    ]
    assert len(_output_rows(output)) == table.num_rows + 1


def test_a_clip_retrieval_output_of_the_pool_gives_its_embeddings(tmp_path: Path, capsys) -> None:
    """clip-retrieval's embeddings of an img2dataset download (its layout, `sampleweb/pool.py`),
    joined by WebDataset key: reused, row for row, and declared by the model that made them."""
    folder = tmp_path / "embeddings"
    vectors = write_clip_retrieval_output(str(IMG2DATASET_POOL), str(folder), width=512, partitions=2)
    output = str(tmp_path / "out")
    args = [
        "--input", str(IMG2DATASET_POOL), "--stages", "crawl,embed", "--set", "crawl.resize_mode=no",
        "--set", f"input.embeddings={folder}", "--set", "input.embeddings_model=ViT-B-32/openai",
    ]  # fmt: skip
    assert _run(*args, "--output", str(tmp_path / "other")) == 2  # the run's model is another
    assert "ViT-B-32/openai" in capsys.readouterr().err
    model = ["--set", "embed.model=ViT-B-32", "--set", "embed.pretrained=openai"]
    assert _run(*args, *model, "--output", output) == 0
    rows = _output_rows(output)
    kept = [r for r in rows if r["status"] == "success"]
    assert kept and len(kept) == len(vectors)
    for row in kept:
        image, text = vectors[json.loads(row["extra"])["__key__"]]
        assert row["embedding_source"] in ("clip-retrieval:img_emb_0.npy", "clip-retrieval:img_emb_1.npy")
        assert row["clip_model"] == "ViT-B-32/openai"
        assert row["clip_score"] == pytest.approx(
            float(np.dot(image.astype(np.float32), text.astype(np.float32))), abs=1e-3
        )
    metadata = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{output}/metadata/*.parquet"))])
    written = np.concatenate([np.load(p) for p in sorted(glob.glob(f"{output}/img_emb/*.npy"))])
    by_uid = {r["uid"]: json.loads(r["extra"])["__key__"] for r in kept}
    for uid, vector in zip(metadata.column("uid").to_pylist(), written, strict=True):
        expected = vectors[by_uid[uid]][0].astype(np.float32)
        assert np.allclose(vector.astype(np.float32), expected / np.linalg.norm(expected), atol=2e-3)


@pytest.mark.parametrize("cut", ["at a member", "inside a member"])
def test_a_tar_alone_cut_short_says_so_in_a_row_of_its_own(tmp_path: Path, cut: str) -> None:
    """`tarfile` reads a tar cut at a member boundary as a shorter archive: the reader checks for
    the end-of-archive blocks itself, and a member cut short is caught by its length."""
    data = (IMG2DATASET_POOL / "00000.tar").read_bytes()
    with tarfile.open(IMG2DATASET_POOL / "00000.tar") as tar:
        middle = tar.getmembers()[len(tar.getmembers()) // 2]
    end = middle.offset if cut == "at a member" else middle.offset_data + 100
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "00000.tar").write_bytes(data[:end])
    output = str(tmp_path / "out")
    assert _run("--input", str(pool), "--output", output, "--stages", "crawl") == 0
    rows = _output_rows(output)
    broken = [r for r in rows if r["reason"] == "unreadable_file"]
    assert len(broken) == 1 and broken[0]["error"].startswith(str(pool / "00000.tar"))
    assert 0 < len(rows) - 1 < 48  # the samples read before the cut keep their rows


def test_a_pools_face_boxes_are_blurred_as_given_and_other_images_kept_as_they_were(
    pool: str, tmp_path: Path
) -> None:
    """DataComp ships `face_bboxes`; with `safety.blur_faces` they are blurred (no detector runs)
    and recorded, and an image without a box keeps the pool's bytes (`crawl.resize_mode: no`)."""
    output = str(tmp_path / "out")
    settings = ["safety.blur_faces=true", "crawl.resize_mode=no", "run.stages=[crawl, safety]"]
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    assert _run("--input", f"{pool}/*.tar", "--output", output, *overrides) == 0
    table = _pool_rows(pool)
    given = dict(zip(table["uid"].tolist(), table["face_bboxes"].tolist(), strict=True))
    pool_images = {key: data for t in glob.glob(f"{pool}/*.tar") for key, _, data in read_tar_images(t)}
    stored = {key: data for t in glob.glob(f"{output}/*.tar") for key, _, data in read_tar_images(t)}
    rows = [r for r in _output_rows(output) if r["status"] == "success"]
    blurred = [r for r in rows if r["face_bboxes"]]
    assert blurred and len(blurred) < len(rows)
    for row in rows:
        key = json.loads(row["extra"])["__key__"]
        expected = given[row["uid"]] or []
        assert len(row["face_bboxes"]) == len(expected), row["uid"]
        assert not expected or np.allclose(row["face_bboxes"], expected), row["uid"]
        if row["face_bboxes"]:
            assert stored[row["uid"]] != pool_images[key]
        else:
            assert stored[row["uid"]] == pool_images[key]
