"""Beam coders for the records that cross a shuffle: `Sample` and the stages' `Verdict`s.

Without a coder of its own a dataclass is pickled at every shuffle: each element carries its
class path and every field name, and NumPy embeddings go through their pickle reduction.
`SampleCoder` writes the fields' values in declaration order as one tuple through Beam's
`FastPrimitivesCoder` (its compiled implementation), with the embeddings as (dtype, shape, raw
bytes). It is deterministic: the same sample always encodes to the same bytes.

`register()` (run when this module is imported) makes Beam choose these coders for PCollections
typed `Sample` or `Verdict`, and `encode_sample` / `decode_sample` put samples on the wire as
plain bytes where a step's element type is a union Beam cannot infer a coder for (the shard
grouping, which joins samples with their verdicts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import apache_beam as beam
import numpy as np

from schemas.sample import Sample
from schemas.verdict import Verdict

_FIELDS = tuple(field.name for field in dataclasses.fields(Sample))
_ARRAYS = frozenset({"image_embedding", "text_embedding"})
_ARRAY_INDEX = tuple(i for i, name in enumerate(_FIELDS) if name in _ARRAYS)
_PRIMITIVES = beam.coders.FastPrimitivesCoder()


def _pack_array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    return value  # None, or a plain list


def _unpack_array(value: Any) -> Any:
    if isinstance(value, tuple):
        dtype, shape, raw = value
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return value


def encode_sample(sample: Sample) -> bytes:
    state = sample.__dict__
    values = [state[name] for name in _FIELDS]
    for i in _ARRAY_INDEX:
        values[i] = _pack_array(values[i])
    return _PRIMITIVES.encode(tuple(values))


def decode_sample(encoded: bytes) -> Sample:
    values = list(_PRIMITIVES.decode(encoded))
    for i in _ARRAY_INDEX:
        values[i] = _unpack_array(values[i])
    sample = object.__new__(Sample)
    sample.__dict__.update(zip(_FIELDS, values, strict=True))
    return sample


def encode_verdict(verdict: Verdict) -> bytes:
    return _PRIMITIVES.encode((verdict.uid, verdict.step, verdict.candidate, verdict.changes))


def decode_verdict(encoded: bytes) -> Verdict:
    uid, step, candidate, changes = _PRIMITIVES.decode(encoded)
    return Verdict(uid, step, candidate, tuple((name, value) for name, value in changes))


class SampleCoder(beam.coders.Coder):
    """`Sample` ↔ bytes: its field values in order, embeddings as raw arrays (see the module)."""

    def encode(self, value: Sample) -> bytes:
        return encode_sample(value)

    def decode(self, encoded: bytes) -> Sample:
        return decode_sample(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return Sample


class VerdictCoder(beam.coders.Coder):
    """`Verdict` ↔ bytes (uid, step, candidate, changes)."""

    def encode(self, value: Verdict) -> bytes:
        return encode_verdict(value)

    def decode(self, encoded: bytes) -> Verdict:
        return decode_verdict(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return Verdict


def register() -> None:
    beam.coders.registry.register_coder(Sample, SampleCoder)
    beam.coders.registry.register_coder(Verdict, VerdictCoder)


register()
