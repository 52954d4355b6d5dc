"""Embed stage: the open_clip handler on CPU with the shipped model, stored embeddings aligned with
uids, CLIP-score decisions, device errors."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.jobs import run_job
from schemas import Sample, Status, make_uid
from tests.conftest import TEST_OVERRIDES, read_output_rows
from transforms.embed.clip import (
    ClipExample,
    OpenClipModelHandler,
    load_clip,
    model_identity,
    preprocessing,
    resolve_device,
)
from transforms.embed.config import EmbedConfig, EmbedError
from transforms.embed.stage import DecideClipScore


def scored(score: float, index: int) -> Sample:
    url = f"http://x.example/{index}.jpg"
    return Sample(uid=make_uid(url, "c"), url=url, caption="c", status=Status.SUCCESS, clip_score=score)


def check_decisions(samples: list[Sample], config: EmbedConfig, check) -> None:
    """Runs `DecideClipScore` in a real pipeline; `check` gets the list of decided samples."""
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        decided = p | beam.Create(samples) | DecideClipScore(config) | beam.combiners.ToList()
        assert_that(decided, lambda lists: check(lists[0]))


def _check_fraction(out: list[Sample]) -> None:
    kept = [s for s in out if s.status == Status.SUCCESS]
    rejected = [s for s in out if s.status == Status.REJECTED]
    assert len(out) == 20_000
    assert abs(len(kept) / len(out) - 0.3) <= 0.01, len(kept)
    assert {s.reason for s in rejected} == {"low_clip_score"}
    assert max(s.clip_score for s in rejected) <= min(s.clip_score for s in kept)  # a cut, not a sample
    assert "threshold" in rejected[0].error


def test_keep_fraction_keeps_the_requested_share_within_one_percent():
    rng = random.Random(3)
    samples = [scored(rng.betavariate(2, 5), i) for i in range(20_000)]
    check_decisions(samples, EmbedConfig(keep_fraction=0.3), _check_fraction)


def _check_absolute(out: list[Sample]) -> None:
    outcomes = sorted((s.clip_score, s.reason) for s in out)
    assert outcomes == [(0.1, "low_clip_score"), (0.28, None), (0.3, None)]


def test_absolute_threshold():
    samples = [scored(0.1, 1), scored(0.3, 2), scored(0.28, 3)]
    check_decisions(samples, EmbedConfig(min_clip_score=0.28), _check_absolute)


def test_cuda_asked_for_without_cuda_is_a_clear_error(sample_web, tmp_path, capsys):
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
        return
    with pytest.raises(EmbedError, match="embed.device is 'cuda' but CUDA is not usable"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    code = main(["run", "--input", sample_web.urls, "--output", str(tmp_path), "--set", "embed.device=cuda"])
    assert code == 2 and "CUDA is not usable" in capsys.readouterr().err


def _clean_rows(sample_web, count: int) -> list[dict]:
    """Manifest rows of clean pairs whose image is a served JPEG file."""
    rows = pq.read_table(os.path.join(sample_web.dir, "manifest.parquet")).to_pylist()
    return [r for r in rows if r["noise"] == "none" and not r["fault"] and r["format"] == "jpeg"][:count]


def _image_file(sample_web, row: dict) -> str:
    return os.path.join(sample_web.dir, "files", row["path"].rsplit("/", 1)[-1])


def _examples(sample_web, config: EmbedConfig, count: int) -> tuple[list[ClipExample], list[str]]:
    prep = preprocessing(config)
    truth = _clean_rows(sample_web, count)
    examples = []
    for row in truth:
        with Image.open(_image_file(sample_web, row)) as image:
            pixels = np.asarray(prep.geometry(image.convert("RGB")), dtype=np.uint8)
        examples.append(ClipExample(pixels, prep.tokenizer([row["caption"]])[0].numpy()))
    return examples, [t["caption"] for t in truth]


def test_handler_on_cpu_with_the_shipped_model(sample_web):
    config = EmbedConfig(device="cpu", batch_size=8)
    handler = OpenClipModelHandler(config)
    model = handler.load_model()
    examples, _ = _examples(sample_web, config, 12)
    first = list(handler.run_inference(examples[:8], model))
    second = list(handler.run_inference(examples[5:12], model))  # a short batch, padded
    for embedding in first + second:
        assert embedding.image.dtype == np.float16 and embedding.text.dtype == np.float16
        assert abs(np.linalg.norm(embedding.image.astype(np.float32)) - 1) < 2e-3
        assert abs(np.linalg.norm(embedding.text.astype(np.float32)) - 1) < 2e-3
    # The same pair gives the same bytes whatever batch it came in.
    for a, b in zip(first[5:8], second[:3], strict=True):
        assert a.image.tobytes() == b.image.tobytes() and a.text.tobytes() == b.text.tobytes()
    # Own captions score above the others: the model really works.
    images = np.stack([e.image for e in first]).astype(np.float32)
    texts = np.stack([e.text for e in first]).astype(np.float32)
    similarity = images @ texts.T
    assert (similarity.argmax(axis=1) == np.arange(len(first))).mean() >= 0.75


def test_embeddings_stored_aligned_with_uids_and_scores_agree(reference_run):
    tmp_path = Path(reference_run.dir)
    rows = {r["uid"]: r for r in read_output_rows(str(tmp_path))}
    identity = model_identity(EmbedConfig())
    embedded = 0
    for name in sorted(os.listdir(tmp_path / "metadata")):
        shard = name.removeprefix("metadata_").removesuffix(".parquet")
        meta = pq.read_table(tmp_path / "metadata" / name).to_pylist()
        images = np.load(tmp_path / "img_emb" / f"img_emb_{shard}.npy")
        texts = np.load(tmp_path / "text_emb" / f"text_emb_{shard}.npy")
        assert images.dtype == np.float16 and images.shape == texts.shape and len(meta) == len(images)
        assert [m["uid"] for m in meta] == sorted(m["uid"] for m in meta)
        for row, image, text in zip(meta, images.astype(np.float32), texts.astype(np.float32), strict=True):
            assert abs(np.linalg.norm(image) - 1) < 2e-3 and abs(np.linalg.norm(text) - 1) < 2e-3
            assert abs(float(image @ text) - row["clip_score"]) < 1e-3
            assert rows[row["uid"]]["clip_score"] == pytest.approx(row["clip_score"])
            assert rows[row["uid"]]["clip_model"] == identity
        embedded += len(meta)
    # Kept samples, and the ones the dedup and noise stages removed after embedding them.
    downloaded = [
        r for r in rows.values() if r["status"] == Status.SUCCESS or r["stage"] in ("dedup", "noise")
    ]
    assert embedded == len(downloaded) > 100
    assert all(r["clip_score"] is not None for r in downloaded)
    assert all(r["clip_score"] is None for r in rows.values() if r not in downloaded)


def test_clip_score_separates_matched_from_mismatched_captions(sample_web, tmp_path):
    overrides = [*TEST_OVERRIDES, "run.stages=[crawl, embed]"]
    run_job(load_config(overrides=overrides), [sample_web.urls], str(tmp_path))
    score = {r["url"]: r["clip_score"] for r in read_output_rows(str(tmp_path))}
    truth = [t for t in sample_web.truth_rows() if score.get(t["url"]) is not None]
    clean = [score[t["url"]] for t in truth if t["noise"] == "none"]
    mismatched = [score[t["url"]] for t in truth if t["noise"] == "mismatched"]
    assert len(clean) > 100 and len(mismatched) > 10
    auc = np.mean([c > m for c in clean for m in mismatched])
    assert auc >= 0.9, auc


def test_model_identity_names_what_made_the_score():
    assert model_identity(EmbedConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k")) == (
        "ViT-B-32/laion2b_s34b_b79k"
    )
    assert model_identity(EmbedConfig(model="s3://bucket/models/my-clip")) == "s3://bucket/models/my-clip"
    assert model_identity(EmbedConfig()).startswith("winnow-tiny-clip@sha256:")


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(EmbedError, match="not an open_clip model folder"):
        load_clip(dataclasses.replace(EmbedConfig(), model=str(tmp_path)))


def test_preprocessing_matches_open_clips_own_transform(sample_web):
    """CPU geometry + normalisation on the model's device = open_clip's transform, bit for bit."""
    config = EmbedConfig(device="cpu")
    handler = OpenClipModelHandler(config)
    loaded = handler.load_model()
    _, own, _ = load_clip(config)
    examples, _ = _examples(sample_web, config, 3)
    rows = _clean_rows(sample_web, 3)
    for example, row in zip(examples, rows, strict=True):
        with Image.open(_image_file(sample_web, row)) as image:
            expected = own(image.convert("RGB")).numpy()
        pixels = torch.from_numpy(example.image[None].copy()).permute(0, 3, 1, 2).to(torch.float32).div(255)
        assert np.array_equal(pixels.sub(loaded.mean).div(loaded.std)[0].numpy(), expected)
