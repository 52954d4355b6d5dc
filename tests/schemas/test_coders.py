"""The Beam coders of `Sample` and `Verdict`: exact round trips, deterministic, smaller than pickle."""

from __future__ import annotations

import pickle

import apache_beam as beam
import numpy as np

from schemas.coders import SampleCoder, VerdictCoder, decode_sample, encode_sample
from schemas.sample import Sample, Status, make_uid
from schemas.verdict import NOISE, Verdict


def full_sample() -> Sample:
    url, caption = "http://example.com/a.jpg", "a red circle ✓"
    rng = np.random.default_rng(3)
    return Sample(
        uid=make_uid(url, caption),
        url=url,
        caption=caption,
        extra={"width": 640, "tags": ["a", "b"], "nested": {"x": 1.5, "y": None}, "flag": True},
        caption_clean=caption,
        num_tokens=3,
        lang="en",
        lang_score=0.93,
        status=Status.SUCCESS,
        http_status=200,
        content_type="image/jpeg",
        width=256,
        height=192,
        sha256="ab" * 32,
        image_bytes=15_000,
        image=bytes(range(256)) * 60,
        image_ext="jpg",
        clip_score=0.31,
        clip_model="open_clip:ViT-B-32/openai",
        image_embedding=rng.standard_normal(512).astype(np.float32),
        text_embedding=rng.standard_normal(512).astype(np.float16),
        dup_group="cd" * 16,
        noise_prob=0.125,
        concepts=[("circle", 0.41), ("red", 0.2)],
        caption_source="original",
    )


def test_sample_round_trip_is_exact():
    sample = full_sample()
    back = decode_sample(encode_sample(sample))
    for name, value in sample.__dict__.items():
        got = back.__dict__[name]
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and got.shape == value.shape
            assert np.array_equal(got, value)
            got[0] = 0  # a decoded embedding is the sample's own, writable array
        else:
            assert got == value and type(got) is type(value), name
    assert back.extra == sample.extra and list(back.extra) == list(sample.extra)


def test_sample_with_nothing_set_and_list_embeddings():
    bare = Sample(uid="u", url=None, caption=None)
    assert decode_sample(encode_sample(bare)).__dict__ == bare.__dict__
    listed = bare.evolve(image_embedding=[0.5, 0.25])
    assert decode_sample(encode_sample(listed)).image_embedding == [0.5, 0.25]


def test_coders_are_deterministic_and_smaller_than_pickle():
    sample = full_sample()
    coder = SampleCoder()
    assert coder.is_deterministic()
    assert coder.encode(sample) == coder.encode(decode_sample(coder.encode(sample)))
    encoded = len(coder.encode(sample))
    pickled = len(beam.coders.FastPrimitivesCoder().encode(sample))
    assert encoded < pickled, (encoded, pickled)
    assert pickled == len(pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)) + 1  # the fallback


def test_registry_picks_the_coders():
    assert isinstance(beam.coders.registry.get_coder(Sample), SampleCoder)
    assert isinstance(beam.coders.registry.get_coder(Verdict), VerdictCoder)
    verdict = Verdict("u" * 32, NOISE, "embedded", (("noise_prob", 0.5), ("concepts", [("sky", 0.3)])))
    assert VerdictCoder().decode(VerdictCoder().encode(verdict)) == verdict
