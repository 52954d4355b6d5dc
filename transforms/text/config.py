"""The `text` section: caption and URL rules, presets of published recipes, and the resolved rules."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from transforms.common.checks import Check
from transforms.text.normalize import HostEntry, HostError, HostList, parse_host_entry

#: The 176 language codes of lid.176 (the bundled model's labels), for checking `text.languages`.
LID176_LANGUAGES = frozenset(
    """
    af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb
    co cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he
    hi hif hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez
    li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn
    no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq
    sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo
    yue zh
    """.split()  # noqa: SIM905 - 176 codes read better as words than as a 176-item literal
)


_RULE_KEYS = (
    "measure",
    "languages",
    "min_lang_score",
    "min_words",
    "max_words",
    "min_chars",
    "boilerplate_max_urls",
    "vocab_size",
)


Preset = Literal["none", "datacomp_basic", "align", "laion"]
Measure = Literal["winnow", "datacomp"]

#: DataComp's basic filter's image rules (`crawl` keys), applied with the datacomp_basic preset
#: unless the crawl section sets them: shorter side at least 200 px, aspect ratio at most 3.
DATACOMP_IMAGE_RULES: dict[str, Any] = {"min_image_size": 200, "max_aspect_ratio": 3.0}


#: Published recipes. Keys set in the config override these.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # DataComp "basic filtering" (Gadre et al., 2023): English by fastText, > 2 words, > 5 characters.
    # Measured as its `baselines/apply_filter.py` does (`measure: datacomp`); the preset's image
    # rules (shorter side >= 200 px, aspect ratio <= 3) are `DATACOMP_IMAGE_RULES`.
    "datacomp_basic": {"measure": "datacomp", "languages": ("en",), "min_words": 3, "min_chars": 6},
    # ALIGN (Jia et al., 2021, §3): 3–20 unigrams; alt-text shared by more than 10 images dropped;
    # alt-text with a token outside the 100 million most frequent unigrams and bigrams dropped.
    "align": {"min_words": 3, "max_words": 20, "boilerplate_max_urls": 10, "vocab_size": 100_000_000},
    # LAION-400M/5B: captions shorter than 5 characters dropped.
    "laion": {"min_chars": 5},
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The `text` section. Rule keys left unset (null) take the preset's value; 0 turns a rule off."""

    #: Named recipe: none, datacomp_basic, align, laion.
    preset: Preset = "none"
    #: What the word, character and language rules read: `winnow` (the cleaned caption, words or
    #: CJK characters, fastText with the script rule) or `datacomp` (the raw caption as DataComp's
    #: baselines read it: `len(text.split())`, `len(text)`, fastText's top label of the text with
    #: newlines as spaces). The datacomp_basic preset sets `datacomp`.
    measure: Measure | None = None
    #: Allowed caption languages (fastText codes, e.g. [en] or [en, fr, zh]); empty = any.
    languages: tuple[str, ...] | None = None
    #: Minimum fastText probability of the top language.
    min_lang_score: float | None = None
    #: Minimum / maximum tokens (words; characters for Chinese, Japanese, Korean).
    min_words: int | None = None
    max_words: int | None = None
    #: Minimum characters of the cleaned caption.
    min_chars: int | None = None
    #: Captions shared by more than this many distinct URLs are boilerplate.
    boilerplate_max_urls: int | None = None
    #: Captions with a word outside this many most frequent unigrams and bigrams are rare.
    vocab_size: int | None = None
    #: Cleaned captions are cut at this many characters (the raw caption is kept).
    max_caption_chars: int = 1000
    #: Collapse rows with the same canonical URL to one.
    dedupe_urls: bool = True
    #: URL schemes that may be fetched.
    allowed_schemes: tuple[str, ...] = ("http", "https")
    #: Hosts never fetched: `example.com` or `*.example.com` (the domain and its subdomains),
    #: `example.com:8080` (the same, on that port only), an IP address (that address only).
    blocked_domains: tuple[str, ...] = ()
    #: File extensions (without dot) never fetched, e.g. [svg, ico].
    blocked_extensions: tuple[str, ...] = ()
    #: fastText language-ID model (local, s3://, gs://); empty = the bundled lid.176.ftz.
    lid_model: str = ""
    #: Captions per fastText predict call.
    lid_batch_size: int = 1024
    #: Hash partitions of the global counts (URL duplicates, boilerplate, vocabulary); raise it
    #: for billions of rows so each partition's combine stays a few hundred MB.
    shuffle_partitions: int = 64
    #: Repeated URL keys (8 bytes each) held in each worker's memory to find the rows to group by
    #: URL; above it, every row with a URL is grouped by URL instead (a keyed join, no side input).
    repeated_urls_in_memory: int = 10_000_000
    #: Boilerplate caption keys (8 bytes each) held in each worker's memory; above it, each batch's
    #: captions are looked up by a keyed join on their hash partition instead.
    boilerplate_in_memory: int = 10_000_000

    def __post_init__(self) -> None:
        check = Check("text", self)
        check.at_least(1, "max_caption_chars", "lid_batch_size", "shuffle_partitions")
        check.at_least(0, "repeated_urls_in_memory", "boilerplate_in_memory")
        check.between(0, 1, "min_lang_score")
        check.at_least(0, "min_words", "max_words", "min_chars", "boilerplate_max_urls", "vocab_size")
        check.not_empty("languages", "blocked_domains", "blocked_extensions")
        check.some("allowed_schemes")
        fetchable = {"http", "https"}  # what the crawl's fetcher speaks
        if not {s.lower() for s in self.allowed_schemes} <= fetchable:
            raise ValueError(
                f"text.allowed_schemes ({list(self.allowed_schemes)}) may only hold http and https, "
                "the schemes the crawl can fetch"
            )
        unknown = sorted(set(self.languages or ()) - LID176_LANGUAGES)
        if unknown and not self.lid_model:  # another model may have other labels
            raise ValueError(
                f"text.languages: {unknown} are not language codes of the bundled lid.176 model "
                "(lower-case ISO codes such as en, fr, zh)"
            )
        rules = self.rules()  # the preset's values count too: 0 turns a rule off
        if rules.max_words:
            check.ordered("min_words", "max_words", rules.min_words, rules.max_words)
        check.ordered("min_chars", "max_caption_chars", rules.min_chars, rules.max_caption_chars)

    def rules(self) -> Rules:
        """The effective rules: the preset, overridden by every key that is set."""
        merged = dict(PRESETS[self.preset])
        for name in _RULE_KEYS:
            value = getattr(self, name)
            if value is not None:
                merged[name] = value
        return Rules(
            measure=str(merged.get("measure") or "winnow"),
            languages=frozenset(merged.get("languages") or ()),
            min_lang_score=float(merged.get("min_lang_score") or 0.0),
            min_words=int(merged.get("min_words") or 0),
            max_words=int(merged.get("max_words") or 0),
            min_chars=int(merged.get("min_chars") or 0),
            boilerplate_max_urls=int(merged.get("boilerplate_max_urls") or 0),
            vocab_size=int(merged.get("vocab_size") or 0),
            max_caption_chars=self.max_caption_chars,
            dedupe_urls=self.dedupe_urls,
            allowed_schemes=frozenset(s.lower() for s in self.allowed_schemes),
            blocked_domains=HostList.of(_host_entry(d) for d in self.blocked_domains),
            blocked_extensions=frozenset(e.lower().lstrip(".") for e in self.blocked_extensions),
        )


@dataclasses.dataclass(frozen=True)
class Rules:
    """Resolved rules; 0 or empty means off."""

    measure: str
    languages: frozenset[str]
    min_lang_score: float
    min_words: int
    max_words: int
    min_chars: int
    boilerplate_max_urls: int
    vocab_size: int
    max_caption_chars: int
    dedupe_urls: bool
    allowed_schemes: frozenset[str]
    blocked_domains: HostList
    blocked_extensions: frozenset[str]


def _host_entry(domain: str) -> HostEntry:
    """A configured domain as URL hosts are compared (`parse_host_entry`); one that could never
    match is a `ValueError` naming it."""
    try:
        return parse_host_entry(domain)
    except HostError as err:
        raise ValueError(f"text.blocked_domains: {domain!r} can never match: {err}") from None
