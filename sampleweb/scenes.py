"""Scenes of the Winnow sample web: a patterned background and a few coloured shapes.

Contract:

* A :class:`Scene` is pure data: a background colour and pattern, and one to four
  :class:`SceneObject` (shape, colour, size, position).  Within one scene every object has a
  distinct position and a distinct (colour, shape) pair, and no object colour is close to the
  background colour, so every object stays clearly visible and the scene's concepts are unique.
* :func:`random_scene` draws a scene from a ``numpy.random.Generator``; the same generator
  state always yields the same scene.
* :func:`render` draws a scene at a given size and returns an RGB ``PIL.Image``.  Rendering is a
  deterministic function of ``(scene, width, height, grain, grain_seed)``: backgrounds are numpy
  masks mapped through a two-tone palette, shapes come from ``ImageDraw`` and the film grain
  (which gives encoded files a web-realistic size) is a tile from a fixed bank, picked and
  shifted by ``grain_seed`` and repeated over the image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

RGB = tuple[int, int, int]
Point = tuple[float, float]

COLORS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "green": (30, 150, 55),
    "blue": (35, 85, 225),
    "yellow": (250, 210, 20),
    "orange": (245, 125, 15),
    "purple": (130, 45, 175),
    "pink": (245, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (115, 70, 30),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ellipse",
    "rectangle",
    "pentagon",
    "hexagon",
    "cross",
    "heart",
)
SIZES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
PATTERNS: tuple[str, ...] = ("plain", "gradient", "stripes", "noise", "checker")

# Object diameter as a fraction of the image's short side.
_SIZE_FRACTION: dict[str, float] = {"small": 0.17, "medium": 0.27, "large": 0.38}
# Anchor of each position as fractions of (width, height).
_ANCHORS: dict[str, tuple[float, float]] = {
    "left": (0.21, 0.5),
    "right": (0.79, 0.5),
    "top": (0.5, 0.21),
    "bottom": (0.5, 0.79),
    "center": (0.5, 0.5),
}
_OBJECT_COUNT_WEIGHTS: tuple[float, ...] = (0.3, 0.35, 0.22, 0.13)  # 1, 2, 3, 4 objects
_MIN_COLOR_DISTANCE = 120.0
_TONE_SHIFT = 0.22
_GRAIN_TILE = 256
_GRAIN_VARIANTS = 8


@dataclass(frozen=True)
class SceneObject:
    """One shape drawn in a scene."""

    shape: str
    color: str
    size: str
    position: str

    @property
    def concept(self) -> str:
        """Canonical English concept, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background (colour + pattern) and one to four objects."""

    background: str
    pattern: str
    objects: tuple[SceneObject, ...]

    @property
    def background_concept(self) -> str:
        """Canonical English background concept, e.g. ``"green background"``."""
        return f"{self.background} background"


def concepts(scene: Scene) -> list[str]:
    """Canonical English concepts of a scene: one per object, then the background."""
    return [obj.concept for obj in scene.objects] + [scene.background_concept]


def second_tone(color: RGB) -> RGB:
    """The pattern's second tone: the colour moved towards white (dark colours) or black."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    target = 255 if luminance < 110 else 0
    red, green, blue = (round(c + (target - c) * _TONE_SHIFT) for c in color)
    return (red, green, blue)


def _distance(a: RGB, b: RGB) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def object_colors(background: str) -> list[str]:
    """The colours an object may have on ``background``: far from it and from its second tone."""
    bg = COLORS[background]
    tone = second_tone(bg)
    return [
        name
        for name, rgb in COLORS.items()
        if name != background
        and _distance(rgb, bg) >= _MIN_COLOR_DISTANCE
        and _distance(rgb, tone) >= _MIN_COLOR_DISTANCE * 0.75
    ]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def random_scene(rng: np.random.Generator) -> Scene:
    """Draw a scene; objects get distinct positions and distinct (colour, shape) pairs."""
    background = _pick(rng, tuple(COLORS))
    pattern = _pick(rng, PATTERNS)
    count = int(rng.choice(len(_OBJECT_COUNT_WEIGHTS), p=_OBJECT_COUNT_WEIGHTS)) + 1
    positions = [POSITIONS[int(i)] for i in rng.permutation(len(POSITIONS))[:count]]
    palette = object_colors(background)
    objects: list[SceneObject] = []
    used: set[tuple[str, str]] = set()
    for position in positions:
        while True:
            color, shape = _pick(rng, palette), _pick(rng, SHAPES)
            if (color, shape) not in used:
                break
        used.add((color, shape))
        size = _pick(rng, SIZES) if count <= 2 else _pick(rng, SIZES[:2])
        objects.append(SceneObject(shape=shape, color=color, size=size, position=position))
    return Scene(background=background, pattern=pattern, objects=tuple(objects))


# --------------------------------------------------------------------------- background masks


def _pattern_mask(pattern: str, width: int, height: int, rng: np.random.Generator) -> Image.Image | None:
    """An ``L`` mask from 0 (base colour) to 255 (second tone), or ``None`` for a plain background."""
    if pattern in ("gradient", "stripes"):
        vertical = rng.random() < 0.5  # the pattern varies along x (vertical bands) or along y
        length = width if vertical else height
        if pattern == "gradient":
            line = np.linspace(0, 255, length).astype(np.uint8)
        else:
            period = max(4, int(min(width, height) / rng.uniform(6, 14)))
            line = ((np.arange(length) // period) % 2 * 255).astype(np.uint8)
        strip = Image.fromarray(line[None, :] if vertical else line[:, None], "L")
        return strip.resize((width, height), Image.Resampling.NEAREST)
    if pattern == "checker":
        cell = max(4, int(min(width, height) / rng.uniform(5, 10)))
        xs = ((np.arange(width) // cell) % 2).astype(np.uint8)
        ys = ((np.arange(height) // cell) % 2).astype(np.uint8)
        return Image.fromarray(np.bitwise_xor.outer(ys, xs) * np.uint8(255), "L")
    if pattern == "noise":
        grid = (rng.random((int(rng.integers(3, 7)), int(rng.integers(3, 7)))) * 255).astype(np.uint8)
        return Image.fromarray(grid, "L").resize((width, height), Image.Resampling.BILINEAR)
    return None


def _background(scene: Scene, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Base colour where the mask is 0, second tone where it is 255, blended in between."""
    base = COLORS[scene.background]
    mask = _pattern_mask(scene.pattern, width, height, rng)
    if mask is None:
        return Image.new("RGB", (width, height), base)
    ramp = np.linspace(base, second_tone(base), 256).round().astype(np.uint8)
    indexed = Image.frombytes("P", (width, height), mask.tobytes())
    indexed.putpalette(ramp.tobytes())
    return indexed.convert("RGB")


# --------------------------------------------------------------------------- shapes


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, phase: float = -90.0) -> list[Point]:
    return [
        (
            cx + radius * math.cos(math.radians(phase + 360.0 * k / sides)),
            cy + radius * math.sin(math.radians(phase + 360.0 * k / sides)),
        )
        for k in range(sides)
    ]


def _star(cx: float, cy: float, radius: float) -> list[Point]:
    outer = _regular_polygon(cx, cy, radius, 5)
    inner = _regular_polygon(cx, cy, radius * 0.45, 5, phase=-90.0 + 36.0)
    return [point for pair in zip(outer, inner, strict=True) for point in pair]


def _cross(cx: float, cy: float, radius: float) -> list[Point]:
    a, b = radius, radius * 0.32
    offsets = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b)]
    offsets += [(-a, -b), (-b, -b)]
    return [(cx + dx, cy + dy) for dx, dy in offsets]


def _heart(cx: float, cy: float, radius: float) -> list[Point]:
    scale = radius / 16.5
    points = []
    for k in range(48):
        t = 2.0 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((cx + x * scale, cy - (y + 2.5) * scale))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, width: int, height: int) -> None:
    fx, fy = _ANCHORS[obj.position]
    cx, cy = fx * width, fy * height
    r = _SIZE_FRACTION[obj.size] * min(width, height) / 2.0
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "ellipse":
        draw.ellipse((cx - r, cy - 0.58 * r, cx + r, cy + 0.58 * r), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif obj.shape == "rectangle":
        draw.rectangle((cx - r, cy - 0.52 * r, cx + r, cy + 0.52 * r), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + 0.15 * r, r * 1.05, 3), fill=fill)
    elif obj.shape == "pentagon":
        draw.polygon(_regular_polygon(cx, cy, r, 5), fill=fill)
    elif obj.shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, phase=0.0), fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.05), fill=fill)
    elif obj.shape == "cross":
        draw.polygon(_cross(cx, cy, r), fill=fill)
    elif obj.shape == "heart":
        draw.polygon(_heart(cx, cy, r), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


# --------------------------------------------------------------------------- grain


@functools.lru_cache(maxsize=64)
def _grain_tile(level: int, variant: int) -> Image.Image:
    """A grey RGB tile of Gaussian grain (sigma ``level / 2``), centred on 128; fixed per key."""
    rng = np.random.default_rng([0x6724, level, variant])
    values = np.clip(rng.normal(128.0, level / 2.0, (_GRAIN_TILE, _GRAIN_TILE)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(values[:, :, None], 3, axis=2), "RGB")


def _grain(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Add monochrome film grain of about ``sigma`` grey levels from a shifted, repeated tile."""
    level = max(1, round(sigma * 2))
    tile = _grain_tile(level, int(rng.integers(_GRAIN_VARIANTS)))
    dx, dy = (int(v) for v in rng.integers(0, _GRAIN_TILE, 2))
    width, height = image.size
    grain = Image.new("RGB", (width, height))
    for y in range(-dy, height, _GRAIN_TILE):
        for x in range(-dx, width, _GRAIN_TILE):
            grain.paste(tile, (x, y))
    return ImageChops.add(image, grain, 1.0, -128)


def render(scene: Scene, width: int, height: int, grain: float = 0.0, grain_seed: int = 0) -> Image.Image:
    """Render ``scene`` as an RGB image of ``width`` x ``height`` pixels.

    Larger objects are drawn first so smaller ones are never hidden.  ``grain`` is the standard
    deviation of the added film grain in grey levels (0 disables it); ``grain_seed`` seeds the
    pattern geometry and the grain so rendering is reproducible.
    """
    rng = np.random.default_rng(grain_seed)
    image = _background(scene, width, height, rng)
    draw = ImageDraw.Draw(image)
    for obj in sorted(scene.objects, key=lambda o: -_SIZE_FRACTION[o.size]):
        _draw_object(draw, obj, width, height)
    if grain > 0:
        image = _grain(image, grain, rng)
    return image
