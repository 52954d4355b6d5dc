"""The sample web's held-out eval sets, in clip_benchmark's WebDataset layout.

Contract:

* ``write_eval_set(out_dir, seed)`` writes two clip_benchmark datasets under ``out_dir`` (by
  convention ``<corpus>/eval``) and returns an :class:`EvalSetSummary`::

      out_dir/                                      zero-shot classification ("concepts")
          dataset_type.txt                          classification
          classnames.txt                            the 100 colour-shape concepts, one per line
          zeroshot_classification_templates.txt     prompt templates, "{c}" is the class name
          test/nshards.txt, test/0.tar              <key>.jpg + <key>.cls (the class index)
          backgrounds/                              zero-shot classification of the background colour
              (the same files; classes "<colour> background")
          retrieval/                                image-text retrieval
              dataset_type.txt                      retrieval
              test/nshards.txt, test/0.tar          <key>.jpg + <key>.txt (captions, one per line)

  clip_benchmark reads each as ``--dataset wds/<name> --dataset_root <dir>``
  (``clip_benchmark.datasets.builder.build_wds_dataset``).
* The scenes come from seed streams of their own (purpose :data:`_EVAL_PURPOSE`, never used by
  :func:`sampleweb.corpus.generate_corpus`), so they are in no URL list the pipeline reads.  Two
  independent scenes can still coincide by chance, as in the corpus itself.
* Concepts: ``per_class`` images of every colour-shape concept; each image is one large object of
  that colour and shape in the centre, on a background of a colour it never blends into.
* Backgrounds: ``10 * per_class`` scenes per background colour, drawn as the corpus draws scenes
  (one to four objects); the class is the background's colour.
* Retrieval: ``retrieval_pairs`` scenes of one to four objects, each with ``captions_per_image``
  clean English captions of the whole scene.
* Output is a pure function of the arguments (fixed encoder settings, tar members in key order
  with fixed metadata): the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from sampleweb.captions import describe
from sampleweb.scenes import (
    COLORS,
    PATTERNS,
    SHAPES,
    Scene,
    SceneObject,
    object_colors,
    random_scene,
    render,
)

EVAL_DIR = "eval"
RETRIEVAL_DIR = "retrieval"
BACKGROUNDS_DIR = "backgrounds"
#: Prompt templates of the zero-shot classification, in clip_benchmark's file format.
TEMPLATES: tuple[str, ...] = ("a photo of a {c}.", "a {c}.", "an image of a {c}.", "a picture of a {c}.")
#: Seed-sequence purpose of the eval scenes: the corpus uses 0..5.
_EVAL_PURPOSE = 1000
_CLASSIFICATION, _RETRIEVAL, _BACKGROUNDS = 0, 1, 2
_IMAGE_SIZE = 256
_JPEG_QUALITY = 90
_GRAIN = 6.0


@dataclass(frozen=True)
class EvalSetSummary:
    """What :func:`write_eval_set` wrote."""

    classification_dir: str
    backgrounds_dir: str
    retrieval_dir: str
    classes: int
    classification_images: int
    background_images: int
    retrieval_images: int

    def __str__(self) -> str:
        return (
            f"eval: {self.classification_images} images of {self.classes} concepts in "
            f"{self.classification_dir}, {self.background_images} scenes of {len(COLORS)} background "
            f"colours in {self.backgrounds_dir}, {self.retrieval_images} captioned scenes in "
            f"{self.retrieval_dir}"
        )


def class_names() -> list[str]:
    """The classification's classes: every colour-shape concept, colour-major (index = ``.cls``)."""
    return [f"{color} {shape}" for color in COLORS for shape in SHAPES]


def background_names() -> list[str]:
    """The background classification's classes: ``"<colour> background"`` (index = ``.cls``)."""
    return [f"{color} background" for color in COLORS]


def _rng(seed: int, task: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _EVAL_PURPOSE, task, index]))


def classification_scene(color: str, shape: str, rng: np.random.Generator) -> Scene:
    """One ``color`` ``shape`` on a background it stands out from (the corpus's colour rule)."""
    backgrounds = [name for name in COLORS if color in object_colors(name)]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    obj = SceneObject(shape=shape, color=color, size="large", position="center")
    return Scene(background=background, pattern=pattern, objects=(obj,))


def _jpeg(scene: Scene, rng: np.random.Generator) -> bytes:
    image = render(scene, _IMAGE_SIZE, _IMAGE_SIZE, grain=_GRAIN, grain_seed=int(rng.integers(2**31)))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _write_dataset(
    folder: str, members: Iterable[tuple[str, bytes]], classes: list[str] | None = None
) -> None:
    """One clip_benchmark set: a classification when `classes` are given, else a retrieval."""
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    _write_text(os.path.join(folder, "dataset_type.txt"), "classification\n" if classes else "retrieval\n")
    _write_tar(os.path.join(folder, "test", "0.tar"), members)
    _write_text(os.path.join(folder, "test", "nshards.txt"), "1\n")
    if classes:
        _write_text(os.path.join(folder, "classnames.txt"), "".join(f"{name}\n" for name in classes))
        _write_text(
            os.path.join(folder, "zeroshot_classification_templates.txt"),
            "".join(f"{template}\n" for template in TEMPLATES),
        )


def _classification_members(seed: int, per_class: int) -> Iterable[tuple[str, bytes]]:
    index = 0
    for label, name in enumerate(class_names()):
        color, shape = name.split(" ")
        for _ in range(per_class):
            rng = _rng(seed, _CLASSIFICATION, index)
            key = f"{index:06d}"
            yield f"{key}.jpg", _jpeg(classification_scene(color, shape, rng), rng)
            yield f"{key}.cls", f"{label}".encode()
            index += 1


def _background_members(seed: int, per_class: int) -> Iterable[tuple[str, bytes]]:
    index = 0
    for label, color in enumerate(COLORS):
        for _ in range(per_class):
            rng = _rng(seed, _BACKGROUNDS, index)
            while (scene := random_scene(rng)).background != color:
                pass  # a scene drawn as the corpus draws it, until its background is this colour
            yield f"{index:06d}.jpg", _jpeg(scene, rng)
            yield f"{index:06d}.cls", f"{label}".encode()
            index += 1


def _retrieval_members(seed: int, pairs: int, captions_per_image: int) -> Iterable[tuple[str, bytes]]:
    for index in range(pairs):
        rng = _rng(seed, _RETRIEVAL, index)
        scene = random_scene(rng)
        captions = [describe(scene, "en", rng) for _ in range(captions_per_image)]
        key = f"{index:06d}"
        yield f"{key}.jpg", _jpeg(scene, rng)
        yield f"{key}.txt", "\n".join(captions).encode("utf-8")


def write_eval_set(
    out_dir: str,
    seed: int = 0,
    per_class: int = 10,
    retrieval_pairs: int = 1000,
    captions_per_image: int = 2,
) -> EvalSetSummary:
    """Writes the concept classification and the retrieval set under ``out_dir`` (see the module)."""
    if per_class < 1 or retrieval_pairs < 1 or captions_per_image < 1:
        raise ValueError("per_class, retrieval_pairs and captions_per_image must be >= 1")
    names = class_names()
    _write_dataset(out_dir, _classification_members(seed, per_class), names)
    backgrounds = os.path.join(out_dir, BACKGROUNDS_DIR)
    _write_dataset(backgrounds, _background_members(seed, per_class * 10), background_names())
    retrieval = os.path.join(out_dir, RETRIEVAL_DIR)
    _write_dataset(retrieval, _retrieval_members(seed, retrieval_pairs, captions_per_image))
    return EvalSetSummary(
        classification_dir=out_dir,
        backgrounds_dir=backgrounds,
        retrieval_dir=retrieval,
        classes=len(names),
        classification_images=per_class * len(names),
        background_images=per_class * 10 * len(COLORS),
        retrieval_images=retrieval_pairs,
    )
