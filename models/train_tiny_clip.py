"""Train and evaluate ``winnow-tiny-clip``: a small open_clip CLIP model for the sample web.

The model only knows the synthetic scenes of ``sampleweb`` (coloured shapes on patterned
backgrounds, captions in seven languages); it exists so that the demo, the tests and CI can run the
embed stage with a model whose scores mean something.  Production configs name a real model.

Training pairs are generated in memory straight from ``sampleweb``: a random scene, a clean caption
of it (language mix of the corpus) and its rendering, sent through the pipeline's own image path
(a JPEG "source" file -> ``transforms.crawl.imaging.process_image`` as the crawl stores it, a 256 px
square, half of them ``center_crop`` (the demo's setting) and half ``border`` (the code default,
img2dataset's), JPEG quality 95 -> the model's open_clip preprocess).  Every odd pair shows the
scene of the pair before it with one shape changed, so that each batch holds hard negatives.
Evaluation uses the same path on held-out scenes drawn from another seed.

The recipe is three losses on an open_clip ``CLIP`` with a ModifiedResNet image tower:

* CLIP's contrastive loss on (image, caption);
* a concept-phrase loss: the 100 colour-shape phrases ("red circle") and ten background phrases,
  in the prompt templates of the noise stage's zero-shot concepts, are texts of their own, and
  every visible object's phrase must outscore, for its image, each phrase of an object that is not
  in the scene (``phrase_loss``); the background phrase is a ten-way choice;
* a per-object probe: a small head classifies each object's phrase from the tower's 4 x 4 feature
  map at the object's centre (the sample web knows where it drew it; ``ObjectProbe``), which
  teaches the tower to see shapes where they are.  The probe is not saved.

Run from the repository root::

    .venv/bin/python models/train_tiny_clip.py  # train, save and evaluate (make model)
    .venv/bin/python models/train_tiny_clip.py --out transforms/embed/models/winnow-tiny-clip --eval-only

``--eval-only`` loads the saved model through ``open_clip``'s ``local-dir:`` schema (as the embed
stage does), prints a table of held-out metrics and exits 0 (or 1 when ``--min-recall`` /
``--min-auc`` are given and missed).  ``--pairs N`` shrinks the evaluation (N held-out pairs per
set, a multiple of 100).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sampleweb.captions import describe
from sampleweb.scenes import COLORS, SHAPES, Scene, concepts, random_scene, render
from transforms.crawl.config import ImageOptions
from transforms.crawl.imaging import process_image

if TYPE_CHECKING:
    from open_clip.model import CLIP

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_NAME = "winnow-tiny-clip"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "transforms" / "embed" / "models" / MODEL_NAME
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"

CONTEXT_LENGTH = 64
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    # a list of layers makes open_clip build its ModifiedResNet (the RN50 family's tower), here at
    # 64 px with a base width of 32: feature maps of 16, 8, 4 and 2 pixels a side
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 32, "head_width": 64},
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": 49408,
        "width": 128,
        "heads": 4,
        "layers": 4,
    },
}
PREPROCESS_CFG: dict[str, Any] = {
    "size": 64,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}

# Caption languages, as in the corpus (sampleweb.corpus.CorpusConfig.languages).
LANGUAGE_MIX: tuple[tuple[str, float], ...] = (
    ("en", 0.70),
    ("fr", 0.06),
    ("de", 0.06),
    ("es", 0.06),
    ("zh", 0.06),
    ("it", 0.03),
    ("pt", 0.03),
)
# Source images as the corpus draws them: aspect ratio (weight), 30 % portrait, JPEG quality, grain.
ASPECTS: tuple[tuple[float, float], ...] = (
    (1.0, 0.22),
    (4 / 3, 0.3),
    (3 / 2, 0.22),
    (16 / 9, 0.16),
    (2.0, 0.1),
)
P_PORTRAIT = 0.3
SOURCE_QUALITY = (72, 93)
SOURCE_SHORT_SIDE = (256, 352)
GRAIN = 6.0
# The crawl stage's two ways to a 256 px square: the demo's centre crop (pipeline/default.yaml) and
# the code default, img2dataset's `border` (the whole image, letterboxed in white). Training pairs
# take either at random, so that the model sees the sample web as both configs store it.
CRAWL_OPTIONS = {
    "center_crop": ImageOptions(image_size=256, resize_mode="center_crop", encode_quality=95),
    "border": ImageOptions(image_size=256, resize_mode="border", encode_quality=95),
}
P_BORDER = 0.5
# Bump when the pair generation changes, so that cached pairs are not reused.
DATA_VERSION = 3

TRAIN_SEED = 0
EVAL_SEED = 1_000_003
GROUP_SIZE = 100


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pairs:
    """Image/caption pairs: ``pixels`` are the model's input before normalisation."""

    pixels: np.ndarray  # (n, size, size, 3) uint8: after the preprocess's resize and crop
    captions: list[str]
    langs: list[str]
    concepts: list[tuple[str, ...]]
    #: (n, MAX_OBJECTS, 4) float32 per object: phrase index (-1: no object), x, y (fractions of the
    #: model's input square), 1.0 if its centre lies inside the crop
    layout: np.ndarray
    #: (n,) int64: the background colour's index in COLORS
    background: np.ndarray

    def __len__(self) -> int:
        return len(self.captions)


def build_transform(preprocess_cfg: dict[str, Any] | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """The open_clip evaluation transform, built the way the embed stage builds it."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = dict(PREPROCESS_CFG if preprocess_cfg is None else preprocess_cfg)
    for key in ("mean", "std"):
        cfg[key] = tuple(cfg[key])
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


#: The 100 colour-shape phrases ("red circle") of the concept check and the training's phrase loss.
PHRASES: tuple[str, ...] = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
#: The ten background phrases ("green background").
BACKGROUND_PHRASES: tuple[str, ...] = tuple(f"{color} background" for color in COLORS)
MAX_OBJECTS = 4


def object_layout(scene: Scene, width: int, height: int, crawl: str) -> np.ndarray:
    """Where each object of ``scene`` lands in the model's input: (MAX_OBJECTS, 4) rows of phrase
    index, x, y and visibility, after the crawl stored a ``width`` x ``height`` render as a 256 px
    square (``center_crop``: the short side's square; ``border``: the long side's, letterboxed),
    which the model's preprocess then resizes as a whole."""
    from sampleweb.scenes import _ANCHORS

    side = min(width, height) if crawl == "center_crop" else max(width, height)
    layout = np.full((MAX_OBJECTS, 4), -1.0, dtype=np.float32)
    for k, obj in enumerate(scene.objects):
        fx, fy = _ANCHORS[obj.position]
        x = (fx * width - (width - side) / 2) / side
        y = (fy * height - (height - side) / 2) / side
        visible = 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
        layout[k] = (PHRASES.index(obj.concept), x, y, 1.0 if visible else 0.0)
    return layout


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def shape_twin(scene: Scene, rng: np.random.Generator) -> Scene:
    """``scene`` with one object's shape changed (colours, sizes, positions and background kept)."""
    k = int(rng.integers(len(scene.objects)))
    used = {(obj.color, obj.shape) for obj in scene.objects}
    target = scene.objects[k]
    shapes = [shape for shape in SHAPES if shape != target.shape and (target.color, shape) not in used]
    changed = replace(target, shape=shapes[int(rng.integers(len(shapes)))])
    return replace(scene, objects=scene.objects[:k] + (changed,) + scene.objects[k + 1 :])


def source_image(
    index: int, seed: int, square: bool, twins: bool = False, crawl: str = "center_crop"
) -> tuple[bytes, str, str, tuple[str, ...], np.ndarray, int, str]:
    """One sample-web "file": (JPEG bytes, clean caption, language, concepts, object layout,
    background index, crawl resize mode), a function of the arguments.

    ``square`` renders 256 x 256 (the crawl's resize is then a no-op); otherwise the aspect ratio
    follows the corpus, so the crawl crops the sides (or top and bottom) or letterboxes the image
    as it does there: ``crawl`` is ``center_crop``, ``border`` or ``mixed`` (either, at random).
    With ``twins``, each odd index shows the scene of the index before it with one shape changed
    (:func:`shape_twin`); its caption, language and rendering are drawn anew.
    """
    rng = _rng(seed, index)
    twin = twins and index % 2 == 1
    scene = shape_twin(random_scene(_rng(seed, index - 1)), rng) if twin else random_scene(rng)
    names, weights = zip(*LANGUAGE_MIX, strict=True)
    lang = names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]
    caption = describe(scene, lang, rng)
    if square:
        width = height = CRAWL_OPTIONS["center_crop"].image_size
    else:
        ratios, ratio_weights = zip(*ASPECTS, strict=True)
        ratio = ratios[int(rng.choice(len(ratios), p=np.asarray(ratio_weights) / sum(ratio_weights)))]
        short = int(rng.integers(*SOURCE_SHORT_SIDE))
        width, height = round(short * ratio), short
        if rng.random() < P_PORTRAIT:
            width, height = height, width
    grain = GRAIN * float(rng.uniform(0.5, 1.5))
    grain_seed = int(rng.integers(2**32))
    image = render(scene, width, height, grain=grain, grain_seed=grain_seed)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(*SOURCE_QUALITY)))
    if crawl == "mixed":
        crawl = "border" if rng.random() < P_BORDER else "center_crop"
    layout = object_layout(scene, width, height, crawl)
    background = list(COLORS).index(scene.background)
    return buffer.getvalue(), caption, lang, tuple(concepts(scene)), layout, background, crawl


def crawl_image(data: bytes, crawl: str = "center_crop") -> bytes:
    """What the crawl stage stores for an image file: a 256 px square (``crawl``: its resize mode),
    JPEG quality 95."""
    return process_image(data, CRAWL_OPTIONS[crawl]).data


def model_pixels(stored: bytes, transform: Callable[[Image.Image], torch.Tensor]) -> np.ndarray:
    """The model's input for a stored image as uint8 HWC (the transform without its normalisation).

    The embed stage decodes the stored JPEG and applies ``transform``; the normalised tensor is
    mapped back to the exact 8-bit values it was made from, so that pairs can be cached compactly.
    """
    with Image.open(io.BytesIO(stored)) as image:
        tensor = transform(image.convert("RGB"))
    mean, std = _normalisation(transform)
    values = (tensor * std[:, None, None] + mean[:, None, None]) * 255.0
    pixels = values.round().clamp(0, 255).to(torch.uint8)
    if float((values - pixels).abs().max()) > 0.01:
        raise RuntimeError("the transform does not produce 8-bit values; cannot cache its output")
    return pixels.permute(1, 2, 0).numpy()


def _normalisation(transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
    for step in getattr(transform, "transforms", []):
        if type(step).__name__ == "Normalize":
            return torch.tensor(step.mean, dtype=torch.float32), torch.tensor(step.std, dtype=torch.float32)
    raise ValueError("the transform has no Normalize step")


_WORKER_TRANSFORM: Any = None


def _init_worker(transform: Any) -> None:
    global _WORKER_TRANSFORM
    torch.set_num_threads(1)
    _WORKER_TRANSFORM = transform


def _make_chunk(job: tuple[int, int, int, bool, bool, str]) -> Pairs:
    start, stop, seed, square, twins, crawl = job
    pixels, captions, langs, scene_concepts, layouts, backgrounds = [], [], [], [], [], []
    for index in range(start, stop):
        data, caption, lang, names, layout, background, mode = source_image(index, seed, square, twins, crawl)
        pixels.append(model_pixels(crawl_image(data, mode), _WORKER_TRANSFORM))
        captions.append(caption)
        langs.append(lang)
        scene_concepts.append(names)
        layouts.append(layout)
        backgrounds.append(background)
    return Pairs(
        np.stack(pixels), captions, langs, scene_concepts, np.stack(layouts), np.asarray(backgrounds)
    )


def generate_pairs(
    count: int,
    seed: int,
    transform: Any,
    square: bool = False,
    twins: bool = False,
    crawl: str = "center_crop",
    workers: int = 2,
    cache_dir: str | None = None,
) -> Pairs:
    """``count`` clean pairs; pair ``i`` depends only on ``(i, seed, square, twins, crawl)``, not on
    ``count`` or ``workers``.

    ``workers`` > 1 renders in a spawned process pool (the caller's module must be importable);
    ``cache_dir`` keeps the result as an ``.npz`` keyed by the arguments and the transform.
    """
    cache = None
    if cache_dir:
        key = f"{DATA_VERSION}|{count}|{seed}|{square}|{twins}|{crawl}|{transform!r}".encode()
        cache = Path(cache_dir) / f"pairs-{hashlib.sha256(key).hexdigest()[:16]}.npz"
        if cache.exists():
            with np.load(cache) as stored:
                return Pairs(
                    pixels=stored["pixels"],
                    captions=[str(c) for c in stored["captions"]],
                    langs=[str(c) for c in stored["langs"]],
                    concepts=[tuple(str(c).split("|")) for c in stored["concepts"]],
                    layout=stored["layout"],
                    background=stored["background"],
                )
    chunk = 250
    jobs = [
        (start, min(start + chunk, count), seed, square, twins, crawl) for start in range(0, count, chunk)
    ]
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(transform,)) as pool:
            parts = pool.map(_make_chunk, jobs, chunksize=1)
    else:
        _init_worker(transform)
        torch.set_num_threads(2)
        parts = [_make_chunk(job) for job in jobs]
    pairs = Pairs(
        pixels=np.concatenate([part.pixels for part in parts]),
        captions=[caption for part in parts for caption in part.captions],
        langs=[lang for part in parts for lang in part.langs],
        concepts=[names for part in parts for names in part.concepts],
        layout=np.concatenate([part.layout for part in parts]),
        background=np.concatenate([part.background for part in parts]),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".tmp.npz")
        np.savez(
            partial,
            pixels=pairs.pixels,
            captions=np.array(pairs.captions),
            langs=np.array(pairs.langs),
            concepts=np.array(["|".join(names) for names in pairs.concepts]),
            layout=pairs.layout,
            background=pairs.background,
        )
        partial.replace(cache)
    return pairs


# --------------------------------------------------------------------------- model


def build_model(model_cfg: dict[str, Any] | None = None) -> CLIP:
    """A freshly initialised open_clip ``CLIP`` (the same class ``local-dir:`` loading builds)."""
    from open_clip.model import CLIP

    return CLIP(**(MODEL_CFG if model_cfg is None else model_cfg))


def build_tokenizer(context_length: int = CONTEXT_LENGTH) -> Any:
    """open_clip's default BPE tokenizer (what ``get_tokenizer("local-dir:...")`` gives for this config)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def load_model(folder: str | Path) -> tuple[CLIP, Any, Any]:
    """(model, preprocess, tokenizer) of a saved model, loaded as the embed stage loads it."""
    import open_clip

    name = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    return cast("CLIP", model), preprocess, open_clip.get_tokenizer(name)


def save_model(model: CLIP, folder: str | Path) -> Path:
    """Writes the open_clip config and the weights (float16 safetensors); returns the weights path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {key: value.detach().to(torch.float16).contiguous() for key, value in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": "pt", "model": MODEL_NAME})
    return weights


def normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, exactly as the transform's ToTensor + Normalize."""
    images = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return (images - mean[None, :, None, None]) / std[None, :, None, None]


@torch.no_grad()
def embed(
    model: CLIP,
    pixels: np.ndarray,
    tokens: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and text embeddings (float32 numpy), in batches."""
    was_training = model.training
    model.eval()
    images, texts = [], []
    for start in range(0, len(pixels), batch_size):
        batch = normalise(torch.from_numpy(pixels[start : start + batch_size]), mean, std)
        images.append(F.normalize(model.encode_image(batch), dim=-1))
        texts.append(F.normalize(model.encode_text(tokens[start : start + batch_size]), dim=-1))
    model.train(was_training)
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


# --------------------------------------------------------------------------- metrics


def recall_at_1(
    image_emb: np.ndarray, text_emb: np.ndarray, group_size: int = GROUP_SIZE
) -> tuple[float, float]:
    """(image->text, text->image) recall@1 among ``group_size`` candidates: consecutive groups, mean."""
    hits_i2t, hits_t2i = per_query_hits(image_emb, text_emb, group_size)
    return float(hits_i2t.mean()), float(hits_t2i.mean())


def per_query_hits(
    image_emb: np.ndarray, text_emb: np.ndarray, group_size: int = GROUP_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, whether its own partner ranks first within its group (both directions)."""
    groups = len(image_emb) // group_size
    if groups < 1:
        raise ValueError(f"need at least {group_size} pairs, got {len(image_emb)}")
    i2t, t2i = [], []
    for g in range(groups):
        part = slice(g * group_size, (g + 1) * group_size)
        sims = image_emb[part] @ text_emb[part].T
        own = np.arange(group_size)
        i2t.append(sims.argmax(axis=1) == own)
        t2i.append(sims.argmax(axis=0) == own)
    return np.concatenate(i2t), np.concatenate(t2i)


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve of scores separating positives from negatives (ties count half)."""
    scores = np.concatenate([positives, negatives])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks (1-based) over runs of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mismatch_partners(scene_concepts: Sequence[tuple[str, ...]], seed: int) -> np.ndarray:
    """For each pair, another pair whose scene has a different set of concepts."""
    rng = np.random.default_rng(seed)
    n = len(scene_concepts)
    partners = np.empty(n, dtype=np.int64)
    for i in range(n):
        while True:
            j = int(rng.integers(n))
            if j != i and set(scene_concepts[j]) != set(scene_concepts[i]):
                partners[i] = j
                break
    return partners


@dataclass(frozen=True)
class Metrics:
    pairs: int
    recall_i2t: float
    recall_t2i: float
    auc: float
    cos_matched: float
    cos_mismatched: float
    recall_by_lang: dict[str, tuple[float, int]]
    concept_recall: float


#: Prompt templates of the zero-shot concept check (the noise stage's default, pipeline/default.yaml).
CONCEPT_TEMPLATES = ("{}", "a photo of a {}.")


def concept_recall(model: CLIP, tokenizer: Any, image_emb: np.ndarray, pairs: Pairs) -> float:
    """Zero-shot visual concepts: the share of each scene's objects found among the top n of the
    100 English colour-shape phrases (n = the scene's object count), prompts averaged over
    ``CONCEPT_TEMPLATES``. Chance is about 0.03; knowing colours but not shapes gives about 0.1."""
    phrases = PHRASES
    was_training = model.training
    model.eval()
    with torch.no_grad():
        vocab = sum(
            F.normalize(model.encode_text(tokenizer([t.format(p) for p in phrases])).float(), dim=-1)
            for t in CONCEPT_TEMPLATES
        )
    model.train(was_training)
    scores = image_emb @ F.normalize(vocab, dim=-1).numpy().T
    found = total = 0
    for row, names in zip(scores, pairs.concepts, strict=True):
        objects = {name for name in names if not name.endswith("background")}
        top = {phrases[int(i)] for i in np.argsort(-row)[: len(objects)]}
        found += len(objects & top)
        total += len(objects)
    return found / max(1, total)


def evaluate(model: CLIP, tokenizer: Any, pairs: Pairs, mean: torch.Tensor, std: torch.Tensor) -> Metrics:
    """Held-out metrics: recall@1 among 100 candidates and matched-vs-mismatched ROC-AUC."""
    tokens = tokenizer(pairs.captions)
    image_emb, text_emb = embed(model, pairs.pixels, tokens, mean, std)
    hits_i2t, hits_t2i = per_query_hits(image_emb, text_emb)
    matched = np.einsum("nd,nd->n", image_emb, text_emb)
    partners = mismatch_partners(pairs.concepts, seed=len(pairs))
    mismatched = np.einsum("nd,nd->n", image_emb, text_emb[partners])
    langs = np.asarray(pairs.langs[: len(hits_i2t)])
    by_lang = {
        lang: (float(hits_i2t[langs == lang].mean()), int((langs == lang).sum()))
        for lang, _ in LANGUAGE_MIX
        if (langs == lang).any()
    }
    return Metrics(
        pairs=len(pairs),
        recall_i2t=float(hits_i2t.mean()),
        recall_t2i=float(hits_t2i.mean()),
        auc=roc_auc(matched, mismatched),
        cos_matched=float(matched.mean()),
        cos_mismatched=float(mismatched.mean()),
        recall_by_lang=by_lang,
        concept_recall=concept_recall(model, tokenizer, image_emb, pairs),
    )


def print_table(results: dict[str, Metrics], title: str) -> None:
    print(title)
    columns = ("set", "pairs", "R@1 i->t", "R@1 t->i", "ROC-AUC", "cos match", "cos mism", "concepts")
    header = " ".join(
        f"{name:<8}" if k == 0 else f"{name:>{w}}"
        for k, (name, w) in enumerate(zip(columns, (8, 5, 9, 9, 8, 10, 9, 9), strict=True))
    )
    print(header)
    print("-" * len(header))
    for name, m in results.items():
        print(
            f"{name:<9} {m.pairs:>4} {m.recall_i2t:>9.3f} {m.recall_t2i:>9.3f} {m.auc:>8.4f}"
            f" {m.cos_matched:>10.3f} {m.cos_mismatched:>9.3f} {m.concept_recall:>9.3f}"
        )
    for name, m in results.items():
        langs = "  ".join(f"{lang} {value:.2f} ({n})" for lang, (value, n) in m.recall_by_lang.items())
        print(f"R@1 i->t by caption language, {name}: {langs}")
    sys.stdout.flush()


#: name: (square renders, the crawl's resize mode)
EVAL_SETS: dict[str, tuple[bool, str]] = {
    "square": (True, "center_crop"),
    "cropped": (False, "center_crop"),
    "letterbox": (False, "border"),
}


def held_out_sets(
    transform: Any, pairs: int, seed: int, workers: int, cache_dir: str | None
) -> dict[str, Pairs]:
    """The evaluation sets: 256 x 256 renders (``square``), and corpus aspect ratios centre-cropped
    (``cropped``, the demo's crawl) and letterboxed (``letterbox``, the code default's)."""
    return {
        name: generate_pairs(
            pairs, seed, transform, square=square, crawl=crawl, workers=workers, cache_dir=cache_dir
        )
        for name, (square, crawl) in EVAL_SETS.items()
    }


# --------------------------------------------------------------------------- training


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (the CLIP loss) with a learnable temperature."""
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def phrase_loss(
    image_features: torch.Tensor,
    phrase_features: torch.Tensor,
    layout: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Multi-positive concept loss through the text tower: every visible object's phrase must
    outscore, for its image, each of the phrases of objects not in the scene.

    Per positive phrase p of image i: softplus(logsumexp over negatives - logit p), i.e. a softmax
    over p and the negatives alone, so that the other objects of the scene are not pushed away.
    Objects cropped out of the frame are neither positives nor negatives.
    """
    logits = scale * image_features @ phrase_features.T  # (B, 100)
    index = layout[..., 0].long()
    present = index >= 0
    visible = present & (layout[..., 3] > 0.5)
    rows = torch.arange(len(logits))[:, None].expand_as(index)
    known = torch.zeros_like(logits, dtype=torch.bool)
    known[rows[present], index[present]] = True
    negatives = torch.logsumexp(logits.masked_fill(known, float("-inf")), dim=1)  # (B,)
    positive = logits[rows[visible], index[visible]]
    return F.softplus(negatives[rows[visible]] - positive).mean()


class ObjectProbe(torch.nn.Module):
    """Auxiliary training head: classifies each object's colour-shape phrase from the image tower's
    4 x 4 feature map (layer3), sampled at the object's centre. It steers the tower to see shapes
    where they are drawn; it is not part of the saved model."""

    def __init__(self, channels: int, classes: int = len(PHRASES)):
        super().__init__()
        self.head = torch.nn.Sequential(
            torch.nn.Linear(channels, 256), torch.nn.GELU(), torch.nn.Linear(256, classes)
        )

    def forward(self, features: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        visible = (layout[..., 0] >= 0) & (layout[..., 3] > 0.5)  # (B, K)
        grid = (layout[..., 1:3] * 2 - 1)[:, :, None, :]  # (B, K, 1, 2) in [-1, 1]
        sampled = F.grid_sample(features, grid, mode="bilinear", align_corners=False)  # (B, C, K, 1)
        sampled = sampled[..., 0].permute(0, 2, 1)[visible]  # (visible objects, C)
        return F.cross_entropy(self.head(sampled), layout[..., 0][visible].long())


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings; none on gains, biases, class token or temperature (open_clip's
    rule)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(args: argparse.Namespace) -> CLIP:
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    transform = build_transform()
    mean, std = _normalisation(transform)
    tokenizer = build_tokenizer()

    data = generate_pairs(
        args.train_pairs,
        args.seed,
        transform,
        twins=True,
        crawl="mixed",
        workers=args.workers,
        cache_dir=args.cache_dir,
    )
    monitor = generate_pairs(
        500, args.eval_seed, transform, square=True, workers=args.workers, cache_dir=args.cache_dir
    )
    print(f"generated {len(data)} training pairs in {time.perf_counter() - started:.0f} s", flush=True)
    tokens = tokenizer(data.captions)
    pixels = torch.from_numpy(data.pixels)

    model = build_model()
    model.train()
    feature_maps: dict[str, torch.Tensor] = {}
    visual = cast(Any, model.visual)
    visual.layer3.register_forward_hook(lambda _m, _i, out: feature_maps.__setitem__("layer3", out))
    probe = ObjectProbe(visual.layer3[-1].bn3.num_features)
    probe.train()
    phrase_tokens = [
        tokenizer([t.format(p) for p in PHRASES + BACKGROUND_PHRASES]) for t in CONCEPT_TEMPLATES
    ]
    layout = torch.from_numpy(data.layout)
    background = torch.from_numpy(data.background)
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay) + param_groups(probe, args.weight_decay),
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    if args.batch_size % 2 or len(data) % 2:
        raise ValueError("--batch-size and --train-pairs must be even (pairs come as shape twins)")
    steps_per_epoch = len(data) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(total * args.warmup))
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
        f"{args.epochs} epochs x {steps_per_epoch} steps of {args.batch_size}",
        flush=True,
    )
    objects = len(PHRASES)
    step = 0
    for epoch in range(args.epochs):
        # shuffle whole twin families, so that each scene meets its shape twin as an in-batch negative
        families = torch.randperm(len(data) // 2, generator=generator)
        order = torch.stack([2 * families, 2 * families + 1], dim=1).flatten()
        epoch_start, losses = time.perf_counter(), []
        for batch_index in range(steps_per_epoch):
            index = order[batch_index * args.batch_size : (batch_index + 1) * args.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, args.lr)
            images = normalise(pixels[index], mean, std)
            image_features = F.normalize(model.encode_image(images), dim=-1)
            text_features = F.normalize(model.encode_text(tokens[index]), dim=-1)
            parts = [clip_loss(image_features, text_features, model.logit_scale)]
            # the concept phrases as texts of their own, in the prompt templates by turns
            phrases = F.normalize(model.encode_text(phrase_tokens[step % len(phrase_tokens)]), dim=-1)
            scale = model.logit_scale.exp()
            concept = phrase_loss(image_features, phrases[:objects], layout[index], scale)
            background_logits = scale * image_features @ phrases[objects:].T
            concept = concept + F.cross_entropy(background_logits, background[index])
            parts.append(args.phrase_weight * concept)
            parts.append(args.probe_weight * probe(feature_maps["layer3"], layout[index]))
            loss = sum(parts)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append([part.item() for part in parts])
            step += 1
            if step % 50 == 0:
                recent = np.mean(losses[-50:], axis=0)
                print(
                    f"  step {step}/{total} loss clip {recent[0]:.3f} phrases {recent[1]:.3f} "
                    f"probe {recent[2]:.3f} scale {model.logit_scale.exp().item():.1f} "
                    f"lr {optimizer.param_groups[0]['lr']:.2e} {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        metrics = evaluate(model, tokenizer, monitor, mean, std)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {np.sum(np.mean(losses, axis=0)):.3f}, "
            f"{time.perf_counter() - epoch_start:.0f} s; "
            f"held-out (500 square) R@1 {metrics.recall_i2t:.3f} AUC {metrics.auc:.4f} "
            f"concept recall {metrics.concept_recall:.3f}; total {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    print(f"training wall time (data + training): {time.perf_counter() - started:.0f} s", flush=True)
    return model


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="model folder (config + weights)")
    parser.add_argument("--train-pairs", type=int, default=48_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--phrase-weight", type=float, default=1.0, help="weight of the concept-phrase loss")
    parser.add_argument("--probe-weight", type=float, default=0.5, help="weight of the per-object probe loss")
    parser.add_argument("--warmup", type=float, default=0.05, help="warmup, as a fraction of all steps")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED, help="training scenes and initialisation")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the saved model, do not train")
    parser.add_argument("--pairs", type=int, default=1000, help="held-out pairs per evaluation set")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="held-out scenes")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--cache-dir", default=None, help="keep generated pairs here (e.g. under /tmp)")
    parser.add_argument("--min-recall", type=float, default=None, help="exit 1 below this R@1 (any set)")
    parser.add_argument("--min-auc", type=float, default=None, help="exit 1 below this ROC-AUC (any set)")
    args = parser.parse_args(argv)
    if args.pairs < GROUP_SIZE or args.pairs % GROUP_SIZE:
        parser.error(f"--pairs must be a positive multiple of {GROUP_SIZE}")
    if args.eval_seed == args.seed:
        parser.error("--eval-seed must differ from --seed (held-out scenes)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(2)
    trained = None
    if not args.eval_only:
        trained = train(args)
        weights = save_model(trained, args.out)
        print(f"saved {weights} ({weights.stat().st_size / 1e6:.1f} MB)", flush=True)
    started = time.perf_counter()
    model, preprocess, tokenizer = load_model(args.out)
    mean, std = _normalisation(preprocess)
    sets = held_out_sets(preprocess, args.pairs, args.eval_seed, args.workers, args.cache_dir)
    title = (
        f"{MODEL_NAME} held-out evaluation (seed {args.eval_seed}; recall@1 among {GROUP_SIZE} candidates, "
        f"mean of {args.pairs // GROUP_SIZE} groups; ROC-AUC of matched vs mismatched captions by cosine)"
    )
    if trained is not None:
        in_memory = {name: evaluate(trained, tokenizer, pairs, mean, std) for name, pairs in sets.items()}
        print_table(in_memory, "trained model before saving (float32 weights):")
        print()
    results = {name: evaluate(model, tokenizer, pairs, mean, std) for name, pairs in sets.items()}
    print_table(results, title)
    print(f"evaluation: {time.perf_counter() - started:.1f} s")
    failed = [
        f"{name}: {label} {value:.3f} < {limit}"
        for name, m in results.items()
        for label, value, limit in (("R@1", m.recall_i2t, args.min_recall), ("AUC", m.auc, args.min_auc))
        if limit is not None and value < limit
    ]
    for line in failed:
        print(f"below target: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
