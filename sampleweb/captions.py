"""Alt-text captions for sample-web scenes, in several languages, plus typical web noise.

Contract:

* :func:`describe` writes a grammatical caption of a scene (or of a subset of its objects) in one
  of :data:`LANGUAGES`: English, French, German, Spanish, Italian, Portuguese and Chinese.  Each
  language has its own vocabulary with gender (and, for German, case) agreement and several
  templates; optional size, position and background-pattern words vary the wording.  Captions
  are long enough (a full sentence with language-specific function words) for a language
  identifier such as fastText ``lid.176`` to recognise the language.
* :func:`boilerplate`, :func:`too_short` and :func:`keyword_stuffing` produce the noisy alt
  texts found on the web: a fixed list of repeated phrases and file names, one or two
  characters, and keyword-stuffed text longer than 1000 characters.
* :func:`concepts` gives the canonical English concepts of a scene (``"red circle"`` per object
  and ``"green background"``), independent of the caption language.
* Every function is deterministic given the state of the ``numpy.random.Generator`` it is
  passed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sampleweb.scenes import COLORS, SHAPES, Scene, SceneObject, concepts

__all__ = [
    "LANGUAGES",
    "boilerplate",
    "concepts",
    "describe",
    "keyword_stuffing",
    "too_short",
]

LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es", "it", "pt", "zh")

_P_SIZE = 0.5
_P_POSITION = 0.35
_P_PATTERN = 0.4


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: Sequence[str], conjunction: str, separator: str = ", ") -> str:
    if len(items) == 1:
        return items[0]
    return separator.join(items[:-1]) + conjunction + items[-1]


@dataclass(frozen=True)
class _Style:
    """Which optional words a caption uses; drawn once per caption."""

    sizes: bool
    positions: bool
    pattern: bool

    @staticmethod
    def draw(rng: np.random.Generator) -> _Style:
        return _Style(
            sizes=bool(rng.random() < _P_SIZE),
            positions=bool(rng.random() < _P_POSITION),
            pattern=bool(rng.random() < _P_PATTERN),
        )


# --------------------------------------------------------------------------- English

_EN_POSITIONS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_EN_PATTERNS = {
    "plain": "plain",
    "gradient": "gradient",
    "stripes": "striped",
    "noise": "mottled",
    "checker": "checkered",
}
_EN_SIZES = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_EN_TEMPLATES = (
    "{objects} on {background}",
    "A picture of {objects} on {background}.",
    "Illustration of {objects} against {background}",
    "{objects}, drawn on {background}",
    "Simple graphic showing {objects} over {background}.",
    "This image shows {objects} on {background}.",
)


def _en_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _en_object(obj: SceneObject, style: _Style, rng: np.random.Generator) -> str:
    words = [obj.color, obj.shape]
    if style.sizes and obj.size in _EN_SIZES:
        words.insert(0, _choice(rng, _EN_SIZES[obj.size]))
    phrase = _en_article(" ".join(words))
    return f"{phrase} {_EN_POSITIONS[obj.position]}" if style.positions else phrase


def _en_caption(scene: Scene, objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
    style = _Style.draw(rng)
    parts = [_en_object(obj, style, rng) for obj in objects]
    words = [_EN_PATTERNS[scene.pattern], scene.background] if style.pattern else [scene.background]
    background = _en_article(" ".join(words)) + " background"
    template = _choice(rng, _EN_TEMPLATES)
    return _capitalise(template.format(objects=_join(parts, " and "), background=background))


# --------------------------------------------------------------------------- Romance languages


@dataclass(frozen=True)
class _Romance:
    """Vocabulary of a Romance language: nouns with gender, adjectives with both genders."""

    nouns: dict[str, tuple[str, str]]
    colors: dict[str, tuple[str, str]]
    sizes: dict[str, tuple[str, str]]
    articles: tuple[str, str]
    positions: dict[str, str]
    patterns: dict[str, str]
    background: str
    conjunction: str
    templates: tuple[str, ...]
    elide_feminine: bool = False

    def article(self, gender: str, next_word: str) -> str:
        masculine, feminine = self.articles
        if gender == "m":
            return masculine + " "
        if self.elide_feminine and next_word[:1].lower() in "aeiouàèéìòù":
            return "un'"
        return feminine + " "

    def object(self, obj: SceneObject, style: _Style) -> str:
        noun, gender = self.nouns[obj.shape]
        index = 0 if gender == "m" else 1
        words = [noun, self.colors[obj.color][index]]
        if style.sizes and obj.size in self.sizes:
            words.insert(0, self.sizes[obj.size][index])
        phrase = self.article(gender, words[0]) + " ".join(words)
        return f"{phrase} {self.positions[obj.position]}" if style.positions else phrase

    def caption(self, scene: Scene, objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
        style = _Style.draw(rng)
        parts = [self.object(obj, style) for obj in objects]
        background = f"{self.background} {self.colors[scene.background][0]}"
        if style.pattern:
            background = f"{background} {self.patterns[scene.pattern]}"
        template = _choice(rng, self.templates)
        return _capitalise(template.format(objects=_join(parts, self.conjunction), background=background))

    def keywords(self, obj: SceneObject) -> str:
        noun, gender = self.nouns[obj.shape]
        return f"{noun} {self.colors[obj.color][0 if gender == 'm' else 1]}"


_FRENCH = _Romance(
    nouns={
        "circle": ("cercle", "m"),
        "square": ("carré", "m"),
        "triangle": ("triangle", "m"),
        "star": ("étoile", "f"),
        "ellipse": ("ellipse", "f"),
        "rectangle": ("rectangle", "m"),
        "pentagon": ("pentagone", "m"),
        "hexagon": ("hexagone", "m"),
        "cross": ("croix", "f"),
        "heart": ("cœur", "m"),
    },
    colors={
        "red": ("rouge", "rouge"),
        "green": ("vert", "verte"),
        "blue": ("bleu", "bleue"),
        "yellow": ("jaune", "jaune"),
        "orange": ("orange", "orange"),
        "purple": ("violet", "violette"),
        "pink": ("rose", "rose"),
        "white": ("blanc", "blanche"),
        "black": ("noir", "noire"),
        "brown": ("marron", "marron"),
    },
    sizes={"small": ("petit", "petite"), "large": ("grand", "grande")},
    articles=("un", "une"),
    positions={
        "left": "à gauche",
        "right": "à droite",
        "top": "en haut",
        "bottom": "en bas",
        "center": "au centre",
    },
    patterns={
        "plain": "uni",
        "gradient": "dégradé",
        "stripes": "rayé",
        "noise": "marbré",
        "checker": "à damier",
    },
    background="un fond",
    conjunction=" et ",
    templates=(
        "{objects} sur {background}",
        "Une image avec {objects} sur {background}.",
        "Illustration représentant {objects} sur {background}",
        "Dessin simple : {objects} sur {background}.",
        "On voit {objects} sur {background}.",
    ),
)

_SPANISH = _Romance(
    nouns={
        "circle": ("círculo", "m"),
        "square": ("cuadrado", "m"),
        "triangle": ("triángulo", "m"),
        "star": ("estrella", "f"),
        "ellipse": ("elipse", "f"),
        "rectangle": ("rectángulo", "m"),
        "pentagon": ("pentágono", "m"),
        "hexagon": ("hexágono", "m"),
        "cross": ("cruz", "f"),
        "heart": ("corazón", "m"),
    },
    colors={
        "red": ("rojo", "roja"),
        "green": ("verde", "verde"),
        "blue": ("azul", "azul"),
        "yellow": ("amarillo", "amarilla"),
        "orange": ("naranja", "naranja"),
        "purple": ("morado", "morada"),
        "pink": ("rosa", "rosa"),
        "white": ("blanco", "blanca"),
        "black": ("negro", "negra"),
        "brown": ("marrón", "marrón"),
    },
    sizes={"small": ("pequeño", "pequeña"), "large": ("gran", "gran")},
    articles=("un", "una"),
    positions={
        "left": "a la izquierda",
        "right": "a la derecha",
        "top": "arriba",
        "bottom": "abajo",
        "center": "en el centro",
    },
    patterns={
        "plain": "liso",
        "gradient": "degradado",
        "stripes": "a rayas",
        "noise": "moteado",
        "checker": "a cuadros",
    },
    background="un fondo",
    conjunction=" y ",
    templates=(
        "{objects} sobre {background}",
        "Una imagen con {objects} sobre {background}.",
        "Ilustración de {objects} sobre {background}",
        "Dibujo sencillo: {objects} sobre {background}.",
        "En la imagen hay {objects} sobre {background}.",
    ),
)

_ITALIAN = _Romance(
    nouns={
        "circle": ("cerchio", "m"),
        "square": ("quadrato", "m"),
        "triangle": ("triangolo", "m"),
        "star": ("stella", "f"),
        "ellipse": ("ellisse", "f"),
        "rectangle": ("rettangolo", "m"),
        "pentagon": ("pentagono", "m"),
        "hexagon": ("esagono", "m"),
        "cross": ("croce", "f"),
        "heart": ("cuore", "m"),
    },
    colors={
        "red": ("rosso", "rossa"),
        "green": ("verde", "verde"),
        "blue": ("blu", "blu"),
        "yellow": ("giallo", "gialla"),
        "orange": ("arancione", "arancione"),
        "purple": ("viola", "viola"),
        "pink": ("rosa", "rosa"),
        "white": ("bianco", "bianca"),
        "black": ("nero", "nera"),
        "brown": ("marrone", "marrone"),
    },
    sizes={"small": ("piccolo", "piccola"), "large": ("grande", "grande")},
    articles=("un", "una"),
    positions={
        "left": "a sinistra",
        "right": "a destra",
        "top": "in alto",
        "bottom": "in basso",
        "center": "al centro",
    },
    patterns={
        "plain": "a tinta unita",
        "gradient": "sfumato",
        "stripes": "a righe",
        "noise": "maculato",
        "checker": "a scacchi",
    },
    background="uno sfondo",
    conjunction=" e ",
    templates=(
        "{objects} su {background}",
        "Un'immagine con {objects} su {background}.",
        "Illustrazione di {objects} su {background}",
        "Disegno semplice: {objects} su {background}.",
        "Nella foto: {objects} su {background}.",
    ),
    elide_feminine=True,
)

_PORTUGUESE = _Romance(
    nouns={
        "circle": ("círculo", "m"),
        "square": ("quadrado", "m"),
        "triangle": ("triângulo", "m"),
        "star": ("estrela", "f"),
        "ellipse": ("elipse", "f"),
        "rectangle": ("retângulo", "m"),
        "pentagon": ("pentágono", "m"),
        "hexagon": ("hexágono", "m"),
        "cross": ("cruz", "f"),
        "heart": ("coração", "m"),
    },
    colors={
        "red": ("vermelho", "vermelha"),
        "green": ("verde", "verde"),
        "blue": ("azul", "azul"),
        "yellow": ("amarelo", "amarela"),
        "orange": ("laranja", "laranja"),
        "purple": ("roxo", "roxa"),
        "pink": ("rosa", "rosa"),
        "white": ("branco", "branca"),
        "black": ("preto", "preta"),
        "brown": ("marrom", "marrom"),
    },
    sizes={"small": ("pequeno", "pequena"), "large": ("grande", "grande")},
    articles=("um", "uma"),
    positions={
        "left": "à esquerda",
        "right": "à direita",
        "top": "em cima",
        "bottom": "embaixo",
        "center": "no centro",
    },
    patterns={
        "plain": "liso",
        "gradient": "degradê",
        "stripes": "listrado",
        "noise": "manchado",
        "checker": "xadrez",
    },
    background="um fundo",
    conjunction=" e ",
    templates=(
        "{objects} sobre {background}",
        "Uma imagem com {objects} sobre {background}.",
        "Ilustração de {objects} em {background}",
        "Desenho simples: {objects} sobre {background}.",
        "Na imagem há {objects} sobre {background}.",
    ),
)

_ROMANCE = {"fr": _FRENCH, "es": _SPANISH, "it": _ITALIAN, "pt": _PORTUGUESE}


# --------------------------------------------------------------------------- German

_DE_NOUNS = {
    "circle": ("Kreis", "m"),
    "square": ("Quadrat", "n"),
    "triangle": ("Dreieck", "n"),
    "star": ("Stern", "m"),
    "ellipse": ("Ellipse", "f"),
    "rectangle": ("Rechteck", "n"),
    "pentagon": ("Fünfeck", "n"),
    "hexagon": ("Sechseck", "n"),
    "cross": ("Kreuz", "n"),
    "heart": ("Herz", "n"),
}
_DE_COLORS = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "yellow": "gelb",
    "orange": "orangefarben",
    "purple": "violett",
    "pink": "rosafarben",
    "white": "weiß",
    "black": "schwarz",
    "brown": "braun",
}
_DE_SIZES = {"small": "klein", "large": "groß"}
_DE_PATTERNS = {
    "plain": "einfarbig",
    "gradient": "verlaufend",
    "stripes": "gestreift",
    "noise": "gesprenkelt",
    "checker": "kariert",
}
_DE_POSITIONS = {
    "left": "links",
    "right": "rechts",
    "top": "oben",
    "bottom": "unten",
    "center": "in der Mitte",
}
# Adjective endings after an indefinite article (mixed declension) and without article (strong).
_DE_NOMINATIVE = {"m": ("ein", "er"), "f": ("eine", "e"), "n": ("ein", "es")}
_DE_DATIVE = {"m": ("einem", "en"), "f": ("einer", "en"), "n": ("einem", "en")}
_DE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("nom", "{objects} auf einem {background} Hintergrund"),
    ("dat", "Ein Bild mit {objects} auf einem {background} Hintergrund."),
    ("dat", "Illustration mit {objects} vor einem {background} Hintergrund"),
    ("nom", "Einfache Zeichnung: {objects} auf einem {background} Hintergrund."),
    ("dat", "Eine Grafik mit {objects} auf einem {background} Hintergrund."),
)


def _de_object(obj: SceneObject, case: str, style: _Style) -> str:
    noun, gender = _DE_NOUNS[obj.shape]
    article, ending = (_DE_NOMINATIVE if case == "nom" else _DE_DATIVE)[gender]
    adjectives = [_DE_COLORS[obj.color] + ending]
    if style.sizes and obj.size in _DE_SIZES:
        adjectives.insert(0, _DE_SIZES[obj.size] + ending)
    phrase = " ".join([article, *adjectives, noun])
    return f"{phrase} {_DE_POSITIONS[obj.position]}" if style.positions else phrase


def _de_caption(scene: Scene, objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
    style = _Style.draw(rng)
    case, template = _DE_TEMPLATES[int(rng.integers(len(_DE_TEMPLATES)))]
    parts = [_de_object(obj, case, style) for obj in objects]
    adjectives = [_DE_COLORS[scene.background] + "en"]  # "Hintergrund" is masculine dative here
    if style.pattern:
        adjectives.insert(0, _DE_PATTERNS[scene.pattern] + "en")
    text = template.format(objects=_join(parts, " und "), background=" ".join(adjectives))
    return _capitalise(text)


def _de_keywords(obj: SceneObject) -> str:
    noun, gender = _DE_NOUNS[obj.shape]
    return f"{_DE_COLORS[obj.color]}{_DE_NOMINATIVE[gender][1]} {noun}"


# --------------------------------------------------------------------------- Chinese

_ZH_SHAPES = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星形",
    "ellipse": "椭圆形",
    "rectangle": "长方形",
    "pentagon": "五边形",
    "hexagon": "六边形",
    "cross": "十字形",
    "heart": "心形",
}
_ZH_COLORS = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "orange": "橙色",
    "purple": "紫色",
    "pink": "粉色",
    "white": "白色",
    "black": "黑色",
    "brown": "棕色",
}
_ZH_SIZES = {"small": "小", "large": "大"}
_ZH_POSITIONS = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "center": "中间"}
_ZH_PATTERNS = {"plain": "纯色", "gradient": "渐变", "stripes": "条纹", "noise": "斑驳", "checker": "格子"}
_ZH_TEMPLATES = (
    "{background}上有{objects}。",
    "一张图片，{background}上画着{objects}",
    "简单的插图：{objects}，{background}。",
    "在{background}上画着{objects}。",
    "这张图片里，{background}上有{objects}",
)


def _zh_object(obj: SceneObject, style: _Style) -> str:
    size = _ZH_SIZES.get(obj.size, "") if style.sizes else ""
    return f"一个{_ZH_COLORS[obj.color]}的{size}{_ZH_SHAPES[obj.shape]}"


def _zh_caption(scene: Scene, objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
    style = _Style.draw(rng)
    pattern = _ZH_PATTERNS[scene.pattern] if style.pattern and scene.pattern != "plain" else ""
    background = f"{_ZH_COLORS[scene.background]}{pattern}背景"
    if style.positions:
        parts = [f"{_ZH_POSITIONS[obj.position]}是{_zh_object(obj, style)}" for obj in objects]
        return f"{background}，" + "，".join(parts) + "。"
    listed = _join([_zh_object(obj, style) for obj in objects], "和", separator="、")
    return _choice(rng, _ZH_TEMPLATES).format(objects=listed, background=background)


def _zh_keywords(obj: SceneObject) -> str:
    return f"{_ZH_COLORS[obj.color]}{_ZH_SHAPES[obj.shape]}"


# --------------------------------------------------------------------------- public API

_Describer = Callable[[Scene, Sequence[SceneObject], np.random.Generator], str]
_DESCRIBERS: dict[str, _Describer] = {
    "en": _en_caption,
    "de": _de_caption,
    "zh": _zh_caption,
    **{lang: grammar.caption for lang, grammar in _ROMANCE.items()},
}


def describe(
    scene: Scene,
    lang: str,
    rng: np.random.Generator,
    objects: Sequence[SceneObject] | None = None,
) -> str:
    """Caption ``scene`` in ``lang``; ``objects`` (default: all) limits which objects are named."""
    if lang not in _DESCRIBERS:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    named = scene.objects if objects is None else tuple(objects)
    if not named:
        raise ValueError("a caption names at least one object")
    return _DESCRIBERS[lang](scene, named, rng)


# Boilerplate repeated across many images: per-language phrases and language-neutral file names.
BOILERPLATE: dict[str, tuple[str, ...]] = {
    "en": (
        "click to enlarge",
        "image",
        "photo",
        "untitled",
        "thumbnail",
        "no description available",
        "placeholder image",
        "view larger image",
    ),
    "fr": ("cliquez pour agrandir", "sans titre", "miniature", "aucune description disponible"),
    "de": ("zum Vergrößern klicken", "ohne Titel", "Vorschaubild", "keine Beschreibung verfügbar"),
    "es": ("haz clic para ampliar", "sin título", "miniatura", "no hay descripción disponible"),
    "it": ("clicca per ingrandire", "senza titolo", "anteprima", "nessuna descrizione disponibile"),
    "pt": ("clique para ampliar", "sem título", "imagem em miniatura", "nenhuma descrição disponível"),
    "zh": ("点击查看大图", "图片", "无标题", "缩略图", "暂无描述"),
}
FILE_NAMES: tuple[str, ...] = (
    "IMG_2041.JPG",
    "DSC_0042.jpg",
    "image001.png",
    "photo-1.jpeg",
    "Untitled-1.png",
    "IMG_20190304_102133.jpg",
    "banner_final_v2.gif",
    "P1000873.JPG",
)
_P_FILE_NAME = 0.3
TOO_SHORT: tuple[str, ...] = ("a", "x", "-", "..", "ok", "1", "?", "::", "图", "jp")


def boilerplate(lang: str, rng: np.random.Generator) -> tuple[str, str | None]:
    """A boilerplate alt text and its language (``None`` for language-neutral file names)."""
    phrases = BOILERPLATE.get(lang, ())
    if not phrases or rng.random() < _P_FILE_NAME:
        return _choice(rng, FILE_NAMES), None
    return _choice(rng, phrases), lang


def too_short(rng: np.random.Generator) -> str:
    """An alt text of one or two characters."""
    return _choice(rng, TOO_SHORT)


_SEO_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("free", "download", "hd", "wallpaper", "image", "picture", "stock photo", "best", "4k", "clipart"),
    "fr": ("gratuit", "télécharger", "fond d'écran", "image", "photo", "meilleur", "haute qualité", "dessin"),
    "de": (
        "kostenlos",
        "herunterladen",
        "Hintergrundbild",
        "Bild",
        "Foto",
        "beste",
        "hochwertig",
        "Zeichnung",
    ),
    "es": ("gratis", "descargar", "fondo de pantalla", "imagen", "foto", "mejor", "alta calidad", "dibujo"),
    "it": ("gratis", "scaricare", "sfondo", "immagine", "foto", "migliore", "alta qualità", "disegno"),
    "pt": ("grátis", "baixar", "papel de parede", "imagem", "foto", "melhor", "alta qualidade", "desenho"),
    "zh": ("免费", "下载", "高清", "壁纸", "图片", "素材", "最好", "高质量", "插图"),
}


def _keywords(obj: SceneObject, lang: str) -> str:
    if lang == "en":
        return obj.concept
    if lang == "de":
        return _de_keywords(obj)
    if lang == "zh":
        return _zh_keywords(obj)
    return _ROMANCE[lang].keywords(obj)


@functools.cache
def _concept_patterns() -> dict[str, re.Pattern[str]]:
    """One regular expression per canonical concept matching its phrase in any caption language:
    a colour word next to a shape (or background) word, in each language's order and inflection."""
    patterns: dict[str, list[str]] = {}
    nouns = [*SHAPES, "background"]
    for color in COLORS:
        for noun in nouns:
            forms = patterns.setdefault(f"{color} {noun}", [])
            forms.append(rf"\b{color}\s+{noun}\b")  # en
            for grammar in _ROMANCE.values():
                word = grammar.background.split(" ", 1)[1] if noun == "background" else grammar.nouns[noun][0]
                colors = "|".join(sorted(set(grammar.colors[color])))
                forms.append(rf"\b{word}\s+(?:{colors})\b")
            word = "Hintergrund" if noun == "background" else _DE_NOUNS[noun][0]
            forms.append(rf"\b{_DE_COLORS[color]}(?:e|er|es|en|em)?\s+{word}\b")
            if noun == "background":
                patterns_zh = "|".join(_ZH_PATTERNS.values())
                forms.append(rf"{_ZH_COLORS[color]}(?:{patterns_zh})?背景")
            else:
                sizes = "|".join(_ZH_SIZES.values())
                forms.append(rf"{_ZH_COLORS[color]}的?(?:{sizes})?{_ZH_SHAPES[noun]}")
    return {concept: re.compile("|".join(forms), re.IGNORECASE) for concept, forms in patterns.items()}


def mentioned_concepts(text: str | None) -> set[str]:
    """The canonical concepts (``"red circle"``, ``"green background"``) a caption names, in any of
    the sample web's languages; ground truth for scoring completed and replaced captions."""
    if not text:
        return set()
    return {concept for concept, pattern in _concept_patterns().items() if pattern.search(text)}


def keyword_stuffing(scene: Scene, lang: str, rng: np.random.Generator, min_chars: int = 1001) -> str:
    """Keyword-stuffed alt text in ``lang`` of at least ``min_chars`` characters."""
    if lang not in _SEO_WORDS:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    vocabulary = [_keywords(obj, lang) for obj in scene.objects] + list(_SEO_WORDS[lang])
    words: list[str] = []
    length = -1  # the joined text has one separator fewer than it has words
    while length < min_chars:
        word = _choice(rng, vocabulary)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)
