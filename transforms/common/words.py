"""Words of a caption for the stages that count them (the noise stage's vocabulary, the balance
stage's `entries: auto`): the word pattern, stop-word lists and the Chinese segmenter, loaded once."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

#: A run of letters, with inner apostrophes or hyphens ("don't", "bien-être").
WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)


@functools.cache
def stop_words(lang: str) -> frozenset[str]:
    """stopwords-iso's list for `lang` (lower-cased); empty for a language it lacks."""
    import stopwordsiso

    words = stopwordsiso.stopwords(lang) if stopwordsiso.has_lang(lang) else set()
    return frozenset(word.lower() for word in words)


@functools.cache
def jieba() -> Any:
    """jieba, initialised once, quiet."""
    import jieba as segmenter

    segmenter.setLogLevel(logging.WARNING)
    segmenter.initialize()
    return segmenter
