"""Verdicts: the change a stage made, applied to the right copy, in step order, by a real join."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.sample import Sample, Status, make_uid
from schemas.verdict import DEDUP, NOISE
from transforms.common.verdicts import ApplyVerdicts, apply_by_uid, apply_verdicts, light, verdict


def downloaded(sha: str = "aa", caption: str = "a cat") -> Sample:
    url = "http://x/cat.jpg"
    return Sample(
        uid=make_uid(url, caption),
        url=url,
        caption=caption,
        status=Status.SUCCESS,
        sha256=sha,
        image=b"jpeg bytes " + sha.encode(),
        image_embedding=np.ones(4, np.float32),
        text_embedding=np.ones(4, np.float32),
    )


def test_a_verdict_holds_only_what_changed_and_never_the_heavy_fields():
    before = downloaded()
    after = before.decided(Status.REJECTED, "exact_duplicate", "dedup", "same pixels").evolve(
        duplicate_of="f" * 32, dup_group="f" * 32
    )
    found = verdict(light(before, embeddings=False), light(after, embeddings=False), DEDUP, "kept")
    assert found is not None
    assert dict(found.changes) == {
        "status": Status.REJECTED,
        "reason": "exact_duplicate",
        "stage": "dedup",
        "error": "same pixels",
        "duplicate_of": "f" * 32,
        "dup_group": "f" * 32,
    }
    assert verdict(before, before.evolve(dup_group=None), DEDUP, "kept") is None
    # Applied to the sample with its bytes: the same sample as the stage's own result.
    (applied,) = apply_verdicts([before], [found])
    assert applied.__dict__.keys() == after.__dict__.keys()
    assert all(
        np.array_equal(applied.__dict__[k], v) if isinstance(v, np.ndarray) else applied.__dict__[k] == v
        for k, v in after.__dict__.items()
    )
    assert applied.image is None  # a rejected sample keeps no image


def test_steps_apply_in_order_to_the_first_candidate_copy():
    first, second = downloaded("aa"), downloaded("bb")  # one uid: the same url and caption
    assert first.uid == second.uid
    dedup = verdict(first, first.evolve(dup_group="g" * 32), DEDUP, "kept")
    noise = verdict(first, first.evolve(noise_prob=0.9, caption_source="original"), NOISE, "embedded")
    assert dedup is not None and noise is not None
    out = apply_verdicts([second, first], [noise, dedup])
    assert [s.sha256 for s in out] == ["aa", "bb"]
    assert (out[0].dup_group, out[0].noise_prob) == ("g" * 32, 0.9)
    assert (out[1].dup_group, out[1].noise_prob) == (None, None)  # the other copy passes as it was


def test_a_rejected_copy_is_no_candidate_of_a_later_step():
    sample = downloaded()
    rejected = verdict(sample, sample.decided(Status.REJECTED, "near_duplicate", "dedup"), DEDUP, "kept")
    noise = verdict(sample, sample.evolve(noise_prob=0.1), NOISE, "embedded")
    assert rejected is not None and noise is not None
    with pytest.raises(ValueError, match="no copy left"):
        apply_verdicts([sample], [rejected, noise])


def test_apply_verdicts_joins_by_uid_in_a_pipeline():
    samples = [downloaded(caption=f"cat {i}") for i in range(5)]
    verdicts = [verdict(s, s.evolve(noise_prob=i / 10), NOISE, "embedded") for i, s in enumerate(samples)]
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        applied = (
            p
            | "Samples" >> beam.Create(samples)
            | ApplyVerdicts(p | "Verdicts" >> beam.Create(verdicts[1:]))
            | beam.Map(lambda s: (s.caption, s.noise_prob, s.image is not None))
        )
        expected = [("cat 0", None, True)] + [(f"cat {i}", i / 10, True) for i in range(1, 5)]
        assert_that(applied, equal_to(expected))


def test_apply_by_uid_applies_each_uids_verdicts_and_refuses_an_orphan():
    cat, dog = downloaded(caption="a cat"), downloaded(caption="a dog")
    found = verdict(dog, dog.evolve(noise_prob=0.4), NOISE, "embedded")
    assert found is not None
    out = {s.caption: s.noise_prob for s in apply_by_uid([cat, dog], [found])}
    assert out == {"a cat": None, "a dog": 0.4}
    with pytest.raises(ValueError, match="without a sample"):
        apply_by_uid([cat], [found])
