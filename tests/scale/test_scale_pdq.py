"""PDQ beside dHash/pHash (`dedup.hash: pdq`): Meta's 256-bit hash of the normalised image, Meta's
31-bit threshold, and no comparison of hashes of quality <= 49 (ThreatExchange's rule).

Real photographs (scikit-image's bundled, public-domain ones) go through the crawl's own image
path (`process_image`) and the dedup stage's `fingerprint`, as downloaded images do."""

from __future__ import annotations

import dataclasses
import io

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageEnhance
from skimage import data

from pipeline.cli import main
from schemas.sample import Sample
from transforms.crawl.config import ImageOptions
from transforms.dedup.config import DedupConfig
from transforms.dedup.decontam import DecontaminateEval, _DecontaminateFn, eval_sample, pack_eval_set
from transforms.dedup.fingerprints import fingerprint
from transforms.dedup.hashed import ExactDuplicates
from transforms.dedup.perceptual import hamming
from transforms.dedup.types import EVAL, EXACT, Fingerprint, comparable

OPTIONS = ImageOptions()
PDQ = DedupConfig(hash="pdq")


def _encoded(image: Image.Image, kind: str = "PNG", **params: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, kind, **params)
    return out.getvalue()


def _sample(uid: str, encoded: bytes) -> Sample:
    """A downloaded sample: `encoded` through the crawl's resize and encoding, as eval images are."""
    return eval_sample(uid, encoded, OPTIONS)


def _print(uid: str, image: Image.Image, hash_kind: str = "pdq", **params: int) -> Fingerprint:
    return fingerprint(_sample(uid, _encoded(image, **params)), hash_kind, OPTIONS)


def _edits(photo: Image.Image) -> dict[str, bytes]:
    """Everyday edits of a photograph, encoded as a site would serve them."""
    width, height = photo.size
    margin = width // 100  # 1 % off every side
    return {
        "resized": _encoded(photo.resize((width * 3 // 5, height * 3 // 5), Image.Resampling.BICUBIC)),
        "jpeg q40": _encoded(photo, "JPEG", quality=40),
        "cropped": _encoded(photo.crop((margin, margin, width - margin, height - margin))),
        "brighter": _encoded(ImageEnhance.Brightness(photo).enhance(1.2)),
    }


def test_scale_item1_pdq_hashes_edited_copies_within_31_bits():
    assert (PDQ.hash_bits, PDQ.max_distance, PDQ.max_hash_distance) == (256, 31, 31)
    assert DedupConfig().max_distance == 10 and DedupConfig(hash="phash").max_distance == 10
    assert DedupConfig(hash="pdq", max_hash_distance=20).max_distance == 20
    photo = Image.fromarray(data.astronaut())
    original = _print("original", photo)
    assert original.hash64 >= 1 << 200 and original.hash64 < 1 << 256  # the 256 bits, as an int
    assert original.hash_quality == 100 and comparable(original)
    for name, encoded in _edits(photo).items():
        edited = fingerprint(_sample(name, encoded), "pdq", OPTIONS)
        assert comparable(edited)
        assert hamming(original.hash64, edited.hash64) <= PDQ.max_distance, name
    for other in (data.coffee(), data.chelsea(), data.rocket()):
        different = _print("other", Image.fromarray(other))
        assert hamming(original.hash64, different.hash64) > 3 * PDQ.max_distance
    # The 64-bit hashes keep their 64 bits and have no quality.
    dhashed = _print("original", photo, "dhash")
    assert dhashed.hash64 < 1 << 64 and dhashed.hash_quality is None and comparable(dhashed)


def test_scale_item1_pdq_flat_images_are_not_compared_by_hash():
    """A flat image's PDQ has quality 0 and its bits are noise (two flat images of one colour at
    two sizes hash over 100 bits apart): decontamination by hash does not compare it, not even with an
    identical flat eval image (a placeholder), which dHash matches (hash 0, flat thumbnails) and
    which PDQ would match at distance 0 without the quality rule. The exact level still removes a
    second copy with the same pixels."""
    red = Image.new("RGB", (256, 256), (200, 30, 30))
    flat = [_print("flat-red", red), _print("flat-red-again", red)]
    flat.append(_print("flat-red-wide", Image.new("RGB", (300, 200), (200, 30, 30))))
    flat.append(_print("flat-green", Image.new("RGB", (256, 256), (30, 160, 60))))
    assert all(f.hash_quality is not None and f.hash_quality <= 49 for f in flat)
    assert not any(comparable(f) for f in flat)
    assert hamming(flat[0].hash64, flat[1].hash64) == 0 and hamming(flat[0].hash64, flat[2].hash64) > 100
    photo = _print("photo", Image.fromarray(data.astronaut()))
    copy = fingerprint(_sample("copy", _edits(Image.fromarray(data.astronaut()))["jpeg q40"]), "pdq", OPTIONS)

    # Decontamination by hash: the flat samples meet nothing, the photo's copy its original.
    packed = pack_eval_set([flat[0], photo], PDQ.hash_bits)
    batch = [(f.uid, f) for f in (*flat[1:], copy)]
    decisions = list(_DecontaminateFn(PDQ).process(batch, packed))
    assert [(d.uid, d.reason, d.duplicate_of) for d in decisions] == [("copy", EVAL, "photo")]
    # Without the quality rule the identical flat image would match; dHash matches it.
    unrated = [dataclasses.replace(f, hash_quality=None) for f in flat[:2]]
    found = list(
        _DecontaminateFn(PDQ).process([("flat-red-again", unrated[1])], pack_eval_set(unrated[:1], 256))
    )
    assert [(d.uid, d.duplicate_of) for d in found] == [("flat-red-again", "flat-red")]
    flat64 = [_print("flat-red", red, "dhash"), _print("flat-red-again", red, "dhash")]
    found = list(
        _DecontaminateFn(DedupConfig()).process([("flat-red-again", flat64[1])], pack_eval_set(flat64[:1]))
    )
    assert [(d.uid, d.duplicate_of) for d in found] == [("flat-red-again", "flat-red")]

    # The exact level still compares flat images by their pixels.
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        decisions = (
            p
            | beam.Create([(f.uid, f) for f in flat])
            | ExactDuplicates()
            | beam.Map(lambda d: (d.uid, d.reason, d.duplicate_of))
        )
        assert_that(decisions, equal_to([("flat-red-again", EXACT, "flat-red")]))


def test_scale_item1_pdq_distance_beyond_the_hash_is_a_config_error(capsys):
    status = main(["config", "--set", "dedup.hash=pdq", "--set", "dedup.max_hash_distance=300"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("winnow: error: ") and "dedup.max_hash_distance (300)" in err and "255" in err
    status = main(["config", "--set", "dedup.max_hash_distance=64"])  # dHash: 64 bits
    err = capsys.readouterr().err
    assert status == 2 and "dedup.max_hash_distance (64)" in err and "63" in err
    assert main(["config", "--set", "dedup.hash=pdq"]) == 0
    printed = capsys.readouterr().out
    assert "max_hash_distance: 31" in printed and "hash: pdq" in printed


def test_scale_item1_pdq_decontamination_finds_an_edited_copy(tmp_path):
    """The eval set read from a folder by the transform's own steps (crawl image path, PDQ
    fingerprints, a 256-bit FAISS binary index), matched through a Beam pipeline."""
    photo = Image.fromarray(data.astronaut())
    evals = tmp_path / "eval"
    evals.mkdir()
    (evals / "astronaut.png").write_bytes(_encoded(photo))
    (evals / "rocket.png").write_bytes(_encoded(Image.fromarray(data.rocket())))
    (evals / "blank.png").write_bytes(_encoded(Image.new("RGB", (64, 64), (250, 250, 250))))
    config = DedupConfig(hash="pdq", eval_images=str(evals))
    edits = _edits(photo)
    samples = [fingerprint(_sample(name, encoded), "pdq", OPTIONS) for name, encoded in edits.items()]
    samples += [
        _print("coffee", Image.fromarray(data.coffee())),
        _print("grey", Image.new("RGB", (80, 80), (128, 128, 128))),  # flat: no hash match
    ]
    original = fingerprint(_sample("astronaut.png", _encoded(photo)), "pdq", OPTIONS)
    distances = {f.uid: hamming(original.hash64, f.hash64) for f in samples[: len(edits)]}
    expected = [(name, EVAL, "astronaut.png", f"hash distance {distances[name]}") for name in edits]
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        found = (
            p
            | beam.Create([(f.uid, f) for f in samples])
            | DecontaminateEval(config, OPTIONS, None)
            | beam.Map(lambda d: (d.uid, d.reason, d.duplicate_of, d.detail.split("; ")[1].split(",")[0]))
        )
        assert_that(found, equal_to(expected))
