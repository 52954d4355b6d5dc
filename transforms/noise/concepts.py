"""Visual concepts: a per-language vocabulary, zero-shot scoring of images against it, BoW captions.

ViCHA (Shukor et al., 2022) tags each image with the vocabulary words CLIP finds most similar to
it; the bag-of-words work (Tejankar et al., 2021, "A Fistful of Words") trains on captions made of
such words, with very frequent words down-weighted. Winnow does both per language:

* **Terms** (`caption_terms`): a caption's content words (stop words of its language removed,
  from stopwords-iso) and pairs of content words that stand next to each other ("red circle",
  "cercle rouge"). Chinese and Japanese are cut into words with jieba, and a pair there may span
  up to two stop words (the particle 的 and a measure word sit between adjective and noun).
* **Vocabulary** (`choose_vocabulary`): the `vocabulary_size` most frequent terms per language that
  occur in at least `vocabulary_min_count` captions, or the terms of a word-list file. The caption
  frequency of every term is kept for word balancing.
* **Zero-shot scores** (`embed_vocabulary`, `score_concepts`): each term is put in every prompt
  template, embedded with the run's CLIP text tower, averaged over templates and normalised
  (CLIP's prompt ensembling); an image's concepts are the terms of its caption's language by
  cosine to the image embedding.
* **Classifier labels** (`label_bank`, `label_concepts`): with an image classifier as the source
  (`noise.concept_model`), its class names are the vocabulary of one language and its class
  probabilities the scores; captions in another language get no visual concepts from it.
* **BoW captions** (`bow_caption`): the visual concepts ordered by score times the subsampling
  weight of word2vec (Mikolov et al., 2013), min(1, sqrt(t / f)) for a term in a share f of the
  captions, so that a term on every caption ("background") sinks below the specific ones.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from transforms.common.words import WORD, jieba, stop_words

log = logging.getLogger(__name__)

#: Languages cut into words with jieba rather than at spaces.
SEGMENTED = ("zh", "ja")
#: Stop words a pair of content words may span, by language (default 0).
_PAIR_GAPS = {"zh": 2, "ja": 2}
_FINAL_PUNCTUATION = ".!?;:,。！？；：，、 \t"


def words(text: str, lang: str | None) -> list[str]:
    """Lower-cased words of `text`: jieba's cut for Chinese and Japanese, letters runs otherwise."""
    if lang in SEGMENTED:
        return [w.lower() for w in jieba().lcut(text) if WORD.fullmatch(w)]
    return [w.lower() for w in WORD.findall(text)]


def _join(parts: Sequence[str], lang: str | None) -> str:
    return ("" if lang in SEGMENTED else " ").join(parts)


def _content(tokens: Sequence[str], lang: str | None) -> list[tuple[int, str]]:
    """(position, word) of the content words: not a stop word, and more than one letter unless
    the language is segmented (a single Chinese character can be a word)."""
    stops = stop_words(lang or "")
    min_len = 1 if lang in SEGMENTED else 2
    return [(i, w) for i, w in enumerate(tokens) if w not in stops and len(w) >= min_len]


def caption_terms(text: str | None, lang: str | None) -> set[str]:
    """The terms of a caption: content words, and pairs of content words close enough to be a phrase."""
    if not text:
        return set()
    content = _content(words(text, lang), lang)
    gap = _PAIR_GAPS.get(lang or "", 0)
    terms = {w for _, w in content}
    for (i, first), (j, second) in zip(content, content[1:], strict=False):
        if j - i - 1 <= gap and first != second:
            terms.add(_join((first, second), lang))
    return terms


def term_words(term: str, lang: str | None) -> tuple[str, ...]:
    """The words of a vocabulary term (a term of a segmented language is cut again with jieba)."""
    return tuple(words(term, lang))


def mentioned(caption_words: Sequence[str], term: tuple[str, ...], lang: str | None) -> bool:
    """Whether a caption (its `words`) names a term: the term's words in order, at most the
    language's pair gap of other words apart (0: consecutive)."""
    if not term:
        return False
    gap = _PAIR_GAPS.get(lang or "", 0)
    for start, word in enumerate(caption_words):
        if word != term[0]:
            continue
        position, matched = start, 1
        while matched < len(term):
            window = caption_words[position + 1 : position + 2 + gap]
            if term[matched] not in window:
                break
            position += 1 + window.index(term[matched])
            matched += 1
        if matched == len(term):
            return True
    return False


def append_concepts(caption: str, missing: Sequence[str], lang: str | None) -> str:
    """`caption` followed by the concepts it misses: "A red circle, blue square, green star"."""
    comma = "，" if lang in SEGMENTED else ", "
    stem = caption.rstrip(_FINAL_PUNCTUATION)
    return comma.join([stem, *missing]) if stem else comma.join(missing)


# ---------------------------------------------------------------- the vocabulary


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Terms per language with their caption frequencies, and the caption count per language."""

    terms: dict[str, tuple[str, ...]]
    counts: dict[str, tuple[int, ...]]
    captions: dict[str, int]

    def size(self) -> int:
        return sum(len(terms) for terms in self.terms.values())


def read_word_list(path: str) -> dict[str, list[str]]:
    """A word-list file: one term per line, `lang<TAB>term` for one language or `term` for all
    (key `*`); blank lines and lines starting with `#` are skipped. Local or any Beam filesystem."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        text = handle.read().decode("utf-8")
    found: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        lang, _, term = line.partition("\t") if "\t" in line else ("*", "", line)
        if not term.strip():
            raise ValueError(f"{path}, line {number}: empty term")
        found.setdefault(lang.strip(), []).append(term.strip())
    if not found:
        raise ValueError(f"{path}: the word list holds no terms")
    return found


def choose_vocabulary(
    term_counts: Iterable[tuple[tuple[str, str], int]],
    caption_counts: Iterable[tuple[str, int]],
    size: int,
    min_count: int,
    word_list: dict[str, list[str]] | None = None,
) -> Vocabulary:
    """The vocabulary from ((lang, term), captions) counts: the most frequent `size` terms per
    language seen in at least `min_count` captions (ties by term), or the word list's terms."""
    counts: dict[str, dict[str, int]] = {}
    for (lang, term), count in term_counts:
        counts.setdefault(lang, {})[term] = count
    captions = dict(sorted(caption_counts))
    terms: dict[str, tuple[str, ...]] = {}
    if word_list is not None:
        for lang in sorted(set(captions) | (set(word_list) - {"*"})):
            listed = dict.fromkeys([*word_list.get(lang, []), *word_list.get("*", [])])
            terms[lang] = tuple(listed)
    else:
        for lang, found in sorted(counts.items()):
            frequent = sorted((t for t, c in found.items() if c >= min_count), key=lambda t: (-found[t], t))
            if frequent:
                terms[lang] = tuple(frequent[:size])
    return Vocabulary(
        terms={lang: t for lang, t in terms.items() if t},
        counts={
            lang: tuple(counts.get(lang, {}).get(term, 0) for term in t) for lang, t in terms.items() if t
        },
        captions=captions,
    )


# ---------------------------------------------------------------- zero-shot scores


@dataclasses.dataclass(frozen=True)
class ConceptBank:
    """Per language: the terms, their prompt-ensembled text embeddings (n, d) and their words."""

    terms: dict[str, tuple[str, ...]]
    embeddings: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    words: dict[str, tuple[tuple[str, ...], ...]]


def balancing_weights(counts: Sequence[int], captions: int, subsample: float) -> np.ndarray:
    """word2vec's subsampling weight min(1, sqrt(t / f)) of each term, f its share of the captions."""
    share = np.asarray(counts, dtype=np.float64) / max(1, captions)
    with np.errstate(divide="ignore"):
        weights = np.sqrt(subsample / share)
    return np.minimum(1.0, np.nan_to_num(weights, nan=1.0, posinf=1.0))


def embed_vocabulary(
    vocabulary: Vocabulary,
    encode_text: Any,
    templates: Sequence[str],
    subsample: float,
    batch_size: int = 1024,
) -> ConceptBank:
    """Every term in every template through `encode_text(list[str]) -> (n, d) normalised array`,
    averaged over templates and normalised again."""
    encoded = {
        key: encode_prompts(encode_text, prompts, batch_size)
        for key, prompts in vocabulary_prompts(vocabulary, templates)
    }
    return bank_from_encoded(vocabulary, encoded, templates, subsample)


PromptKey = tuple[str, int]  # (language, template index)


def vocabulary_prompts(
    vocabulary: Vocabulary, templates: Sequence[str]
) -> Iterator[tuple[PromptKey, tuple[str, ...]]]:
    """Per language and template, every term put in the template."""
    for lang, terms in vocabulary.terms.items():
        for index, template in enumerate(templates):
            yield (lang, index), tuple(template.format(term) for term in terms)


def encode_prompts(encode_text: Any, prompts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
    """(n, d) float32 embeddings of `prompts`, encoded `batch_size` at a time (a fixed cut, so the
    numbers do not depend on who calls)."""
    parts = [encode_text(list(prompts[i : i + batch_size])) for i in range(0, len(prompts), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def bank_from_encoded(
    vocabulary: Vocabulary,
    encoded: dict[PromptKey, np.ndarray],
    templates: Sequence[str],
    subsample: float,
) -> ConceptBank:
    """The bank from each (language, template)'s encoded prompts: averaged over the templates (in
    their order) and normalised again."""
    embeddings = {}
    for lang in vocabulary.terms:
        total = None
        for index in range(len(templates)):
            part = encoded[(lang, index)]
            total = part if total is None else total + part
        assert total is not None
        embeddings[lang] = total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)
    return dataclasses.replace(label_bank(vocabulary, subsample), embeddings=embeddings)


def label_bank(vocabulary: Vocabulary, subsample: float) -> ConceptBank:
    """The bank of a vocabulary scored by something other than text embeddings (a classifier's
    class names, in class order): its terms, balancing weights and words, no embeddings."""
    weights = {
        lang: balancing_weights(vocabulary.counts[lang], vocabulary.captions.get(lang, 0), subsample)
        for lang in vocabulary.terms
    }
    term_words_by_lang = {
        lang: tuple(term_words(term, lang) for term in terms) for lang, terms in vocabulary.terms.items()
    }
    return ConceptBank(dict(vocabulary.terms), {}, weights, term_words_by_lang)


@dataclasses.dataclass(frozen=True)
class Concepts:
    """An image's top terms with their cosines, and which of them are its visual concepts."""

    lang: str | None
    scored: list[tuple[str, float]]
    visual: list[str]
    balanced: list[tuple[str, float]]


def bank_language(bank: ConceptBank, lang: str | None, fallback: str, min_terms: int = 1) -> str | None:
    """The bank language for a caption language: itself when its vocabulary has at least
    `min_terms` terms, else `fallback`, else none."""
    if lang in bank.terms and len(bank.terms[lang]) >= min_terms:
        return lang
    return fallback if fallback in bank.terms else None


def score_concepts(
    image_embeddings: np.ndarray,
    langs: Sequence[str | None],
    bank: ConceptBank,
    top_k: int,
    min_score: float,
    relative: float,
    fallback: str,
) -> list[Concepts]:
    """Zero-shot concepts of a batch of images (rows of `image_embeddings`), from the vocabulary of
    each caption's language, or of `fallback` when that one has fewer than `top_k` terms; the
    scores are cosines (`select_concepts` says which terms are kept)."""
    out: list[Concepts] = []
    images = np.asarray(image_embeddings, dtype=np.float32)
    for row, caption_lang in zip(images, langs, strict=True):
        lang = bank_language(bank, caption_lang, fallback, min_terms=top_k)
        if lang is None:
            out.append(Concepts(None, [], [], []))
            continue
        cosines = bank.embeddings[lang] @ row
        k = min(top_k, len(cosines))
        best_k = np.argpartition(-cosines, k - 1)[:k] if k < len(cosines) else np.arange(len(cosines))
        top = [(i, float(cosines[i])) for i in best_k.tolist()]
        out.append(select_concepts(top, lang, bank, min_score, relative))
    return out


def select_concepts(
    top: Sequence[tuple[int, float]], lang: str, bank: ConceptBank, min_score: float, relative: float
) -> Concepts:
    """An image's concepts from its best terms of `lang`'s vocabulary, (term index, score) pairs.

    `scored`: those terms by score (ties by term). `visual`: those scoring >= `min_score` and
    within `relative` of the best one, less any word another of them contains ("circle" beside
    "red circle"). `balanced`: the visual concepts by score times balancing weight.
    """
    terms = bank.terms[lang]
    ranked = sorted(top, key=lambda item: (-item[1], terms[item[0]]))
    scored = [(terms[i], round(score, 4)) for i, score in ranked]
    best = ranked[0][1] if ranked else 0.0
    close = [(i, score) for i, score in ranked if score >= min_score and score >= best - relative]
    term_words_ = bank.words[lang]
    chosen = [
        (i, score)
        for i, score in close
        if not any(j != i and _contains(term_words_[j], term_words_[i]) for j, _ in close)
    ]
    balanced = sorted(
        ((terms[i], score * float(bank.weights[lang][i])) for i, score in chosen),
        key=lambda item: (-item[1], item[0]),
    )
    visual = [terms[i] for i, _ in chosen]
    return Concepts(lang, scored, visual, [(t, round(s, 4)) for t, s in balanced])


def label_concepts(
    classes: Sequence[tuple[int, float]],
    caption_lang: str | None,
    bank: ConceptBank,
    min_score: float,
    relative: float,
) -> Concepts:
    """An image's concepts from a classifier's best classes, (class index, probability) pairs; the
    bank holds the class names of one language, in class order (`label_bank`).

    A caption in that language, or in none (no language identification ran), gets its visual
    concepts as `select_concepts` chooses them. A caption in another language gets the classes in
    `scored` only: names of one language are neither added to a caption of another nor judged
    against it (they would count as missing from every such caption).
    """
    (lang,) = bank.terms
    found = select_concepts(classes, lang, bank, min_score, relative)
    if caption_lang in (lang, None, "und"):
        return found
    return dataclasses.replace(found, visual=[], balanced=[])


def _contains(phrase: tuple[str, ...], part: tuple[str, ...]) -> bool:
    """Whether `part`'s words occur in `phrase` in order (a phrase contains its own words)."""
    if len(part) > len(phrase):
        return False
    return any(phrase[i : i + len(part)] == part for i in range(len(phrase) - len(part) + 1))


def bow_caption(concepts: Concepts, max_terms: int) -> str | None:
    """The bag-of-words caption: up to `max_terms` visual concepts, most salient first."""
    terms = [term for term, _ in concepts.balanced[:max_terms]]
    if not terms:
        return None
    return ("，" if concepts.lang in SEGMENTED else ", ").join(terms)


def missing_concepts(caption: str | None, concepts: Concepts) -> tuple[list[str], float]:
    """The visual concepts a caption does not name, and the share it names (its coverage)."""
    if not concepts.visual:
        return [], 1.0
    caption_words = words(caption or "", concepts.lang)
    missing = [
        t
        for t in concepts.visual
        if not mentioned(caption_words, term_words(t, concepts.lang), concepts.lang)
    ]
    return missing, 1.0 - len(missing) / len(concepts.visual)


def only_terms(concepts: Concepts, allowed: frozenset[tuple[str, str]]) -> Concepts:
    """`concepts` with its visual and balanced terms cut to the `allowed` (lang, term) pairs."""
    lang = concepts.lang or "und"
    return dataclasses.replace(
        concepts,
        visual=[t for t in concepts.visual if (lang, t) in allowed],
        balanced=[(t, s) for t, s in concepts.balanced if (lang, t) in allowed],
    )


@dataclasses.dataclass(frozen=True)
class TrustedTerms:
    """The precision guard's verdict: the (lang, term) pairs a caption may gain, and the evidence.

    `evidence` maps (lang, term) to (shown, named): in how many clean pairs the term was a visual
    concept, and in how many of those the caption named it. Its precision is named / shown."""

    terms: frozenset[tuple[str, str]]
    evidence: dict[tuple[str, str], tuple[int, int]]
    min_precision: float
    min_support: int

    def summary(self, top: int = 10) -> dict[str, Any]:
        """What stats.json and the report say: how many terms passed, and the best measured ones."""
        ranked = sorted(
            ((lang, term, shown, named) for (lang, term), (shown, named) in self.evidence.items()),
            key=lambda r: (-(r[3] / r[2]) if r[2] >= self.min_support else 1.0, -r[2], r[0], r[1]),
        )
        best = [
            {"lang": lang, "term": term, "support": shown, "precision": round(named / shown, 4)}
            for lang, term, shown, named in ranked[:top]
        ]
        measured = sum(1 for shown, _ in self.evidence.values() if shown >= self.min_support)
        out: dict[str, Any] = {
            "min_term_precision": self.min_precision,
            "min_term_support": self.min_support,
            "terms_measured": measured,
            "terms_trusted": len(self.terms),
            "best_terms": best,
        }
        if not self.terms:
            out["repair"] = (
                f"off: no visual concept was named by the clean captions in at least "
                f"{self.min_precision:.0%} of {self.min_support}+ pairs, so no caption is completed "
                "and no BoW caption is made"
            )
        return out


def trust_terms(
    evidence: Iterable[tuple[tuple[str, str], tuple[int, int]]], min_precision: float, min_support: int
) -> TrustedTerms:
    """The terms whose measured precision is at least `min_precision` over `min_support`+ pairs."""
    table = dict(evidence)
    passed = (
        key
        for key, (shown, named) in table.items()
        if shown >= min_support and named >= min_precision * shown
    )
    trusted = frozenset(passed)
    return TrustedTerms(trusted, table, min_precision, min_support)


def iter_terms(captions: Iterable[tuple[str | None, str | None]]) -> Iterator[tuple[tuple[str, str], int]]:
    """((lang, term), 1) for each distinct term of each (caption, lang)."""
    for caption, lang in captions:
        for term in caption_terms(caption, lang):
            yield (lang or "und", term), 1


def log_bank(bank: ConceptBank) -> None:
    sizes = ", ".join(f"{lang} {len(terms)}" for lang, terms in sorted(bank.terms.items()))
    log.info("concept vocabulary: %s", sizes or "empty")
