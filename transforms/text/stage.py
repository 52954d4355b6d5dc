"""Text stage: caption cleaning, URL hygiene, fastText language ID and caption rules, before any fetch.

In: row batches from the reader (`schemas.BATCH_SCHEMA`). Out: one `Sample` per row, with
`caption_clean`, `num_tokens`, `lang` and `lang_score` set; those that break a rule get status
`rejected`, stage `text` and one reason, checked in this order (the first that applies is recorded):

| reason | rule |
|---|---|
| `scheme_not_allowed`, `invalid_url`, `domain_blocked`, `extension_blocked` | URL hygiene (below) |
| `caption_not_text` | the caption is binary data or a broken decoding |
| `duplicate_url` | another row has the same canonical URL and a better caption (below) |
| `empty_caption` | no caption while a length rule is active |
| `boilerplate_caption` | the caption is shared by more than `boilerplate_max_urls` distinct URLs |
| `too_few_words`, `too_many_words`, `too_short` | `min_words`, `max_words`, `min_chars` |
| `rare_token` | a word outside the `vocab_size` most frequent unigrams and bigrams of the input |
| `lang_not_allowed`, `low_lang_score` | `languages`, `min_lang_score` |

URL hygiene: a scheme outside `allowed_schemes` is `scheme_not_allowed`; a URL that cannot be
fetched is `invalid_url`, with `error` saying why (no scheme or host; a host with spaces, zero-width
or control characters or percent-encoding; an invalid international name; a port outside
1–65535). URLs compare in the canonical form of `transforms/common/urls.py` (the form the URL
blocklist compares and the crawl fetches): hosts in their IDNA (UTS-46) ASCII form without a
trailing dot, so `bücher.example`, `BÜCHER.example.` and `xn--bcher-kva.example` are one host, and
`/img/../img/a.jpg`, `/img/./a.jpg` and `/img/%61.jpg` are all `/img/a.jpg`. `blocked_domains`
entries are read by `parse_host_entry` (a port limits one).

Duplicates: of the rows naming one canonical URL (the same url + caption included), one is kept,
the best by caption: one that passes the caption rules, then a non-empty one, then the most
tokens, then the smallest uid. The others are `duplicate_url` with `duplicate_of` = the kept uid,
so each URL is fetched once.

Rejected samples are never fetched: the crawl stage passes them through untouched.

The stage works on whole record batches, so per-caption cost is the cleaning, one URL parse and
fastText itself. It makes one pass over the rows (`Prepare`: cleaning, URL rules, language ID, the
rules that need only the row), and three global counts that reach the final `Judge` step as small
side inputs — never a join on all the rows:

- repeated canonical URLs: URL keys (64-bit hashes) per hash partition, combined into a count
  per key; only keys named more than once are kept. After the caption rules, each of those
  rows (few, usually) sends its rank, not the row, to its URL hash; each URL keeps its best row,
  and the verdicts go back to the rows' batches (`_KeepBestOfUrl`: two keyed joins, no key
  holding more than one URL's ranks or one batch's verdicts). Beyond
  `repeated_urls_in_memory` repeated keys the side input is not built: every row with a URL is
  grouped by URL instead (a keyed join; the same verdicts);
- boilerplate captions: (caption, URL) hash pairs per partition, combined with at most N + 1
  distinct URLs per caption (so a caption on millions of pages costs N + 1 entries) and the
  combine fanned out against hot partitions; only captions over N are kept. Beyond
  `boilerplate_in_memory` such captions the side input is not built: each batch sends its caption
  hashes to their partition's set of boilerplate captions and gets the hits back (a keyed join;
  the same verdicts);
- the n-gram vocabulary (only with `vocab_size`): unigram and bigram counts per partition, the
  count of the `vocab_size`-th most frequent n-gram from a histogram of counts, and the n-grams at
  or above it (8 bytes each: 800 MB at ALIGN's 100 million).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared
from xxhash import xxh3_64_intdigest

from schemas.sample import BATCH_SCHEMA, Status
from transforms.common.progress import StageCounter
from transforms.text.config import Rules, TextConfig
from transforms.text.counts import (
    CappedDistinctUrls,
    CappedKeys,
    UrlCounts,
    Vocabulary,
    by_partition,
    caption_entries,
    member,
    url_entries,
)
from transforms.text.langid import LanguageIdentifier
from transforms.text.normalize import (
    UrlFacts,
    caption_words,
    count_tokens,
    looks_binary,
    normalize_caption,
    simple_canonical,
    url_facts,
)

STAGE = "text"
#: Sub-keys each hot partition of the boilerplate count is spread over before the final combine.
HOT_KEY_FANOUT = 16


def hash64(text: str) -> int:
    """A stable 64-bit hash of a string (XXH3: the same in every process, version and platform)."""
    return xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


def url_reason(facts: UrlFacts, rules: Rules) -> str | None:
    """The URL hygiene rule a URL breaks, or None (pure)."""
    if facts.scheme and facts.scheme not in rules.allowed_schemes:
        return "scheme_not_allowed"
    if facts.canonical is None:
        return "invalid_url"
    if rules.blocked_domains and rules.blocked_domains.matches(facts.host, facts.port):
        return "domain_blocked"
    if rules.blocked_extensions and facts.extension in rules.blocked_extensions:
        return "extension_blocked"
    return None


def ngram_hashes(clean: str) -> tuple[list[int], list[int]]:
    """Hashes of the caption's unigrams and bigrams (case-folded words; CJK characters)."""
    words = caption_words(clean)
    unigrams = [hash64(word) for word in words]
    bigrams = [hash64(f"{a} {b}") for a, b in zip(words, words[1:], strict=False)]
    return unigrams, bigrams


# Columns the prepare step adds to the row batch for the global counts (null where a row takes
# no part: decided already, no caption, or the rule is off).
_PREPARED_SCHEMA = pa.schema(
    [
        *BATCH_SCHEMA,
        pa.field("url_hash", pa.uint64()),
        pa.field("num_chars", pa.int32()),
        pa.field("caption_hash", pa.uint64()),
        pa.field("unigrams", pa.list_(pa.uint64())),
        pa.field("bigrams", pa.list_(pa.uint64())),
    ]
)

Identify = Callable[[list[str]], tuple[list[str], np.ndarray]]


def prepare_batch(batch: pa.RecordBatch, rules: Rules, identify: Identify) -> pa.RecordBatch:
    """Cleans captions, identifies languages (`identify` gets the non-empty cleaned captions,
    returns their codes and probabilities), decides the URL rules and `caption_not_text`, and
    hashes what the global counts need (pure but for `identify`)."""
    n = batch.num_rows
    captions = batch.column("caption").to_pylist()
    limit = rules.max_caption_chars
    clean = [normalize_caption(c, limit) if c else "" for c in captions]
    if rules.measure == "datacomp":  # DataComp's baselines read the raw caption, even an empty one
        measured = [c.replace("\n", " ") if c is not None else None for c in captions]
        tokens = [len(c.split()) if c else 0 for c in captions]
        chars = [len(c) if c else 0 for c in captions]
    else:
        measured = [c or None for c in clean]
        tokens = [count_tokens(c) if c else 0 for c in clean]
        chars = [len(c) for c in clean]
    texts = [c for c in measured if c is not None]
    codes, probabilities = identify(texts) if texts else ([], np.empty(0, np.float32))
    if len(texts) == n:
        lang: list[str | None] = list(codes)
        score = np.asarray(probabilities, dtype=np.float32)
    else:
        where = np.flatnonzero(np.fromiter((c is not None for c in measured), bool, n))
        lang = [None] * n
        for i, code in zip(where.tolist(), codes, strict=True):
            lang[i] = code
        score = np.zeros(n, np.float32)
        score[where] = probabilities

    urls = batch.column("url").to_pylist()
    status = batch.column("status").to_pylist()
    reason, stage, error = (batch.column(name).to_pylist() for name in ("reason", "stage", "error"))
    url_hash: list[int | None] = [None] * n
    caption_hash: list[int | None] = [None] * n
    # Most URLs are plain http(s) and already canonical: one regex match instead of a parse.
    plain_ok = {"http", "https"} <= rules.allowed_schemes
    plain_ok = plain_ok and not rules.blocked_domains and not rules.blocked_extensions
    need_caption_hash = bool(rules.boilerplate_max_urls)
    pending, simple = Status.PENDING, simple_canonical if plain_ok else None
    rejected = False
    for i, url in enumerate(urls):
        if status[i] != pending or url is None:
            continue
        if simple is not None and simple(url):
            key = url
        else:
            facts = url_facts(url)
            why = url_reason(facts, rules)
            if why is not None:
                detail = (
                    f"invalid URL ({facts.problem}): {url[:200]!r}" if why == "invalid_url" else url[:200]
                )
                status[i], reason[i], stage[i], error[i] = Status.REJECTED, why, STAGE, detail
                rejected = True
                continue
            key = facts.canonical or url
        caption = captions[i]
        if caption and not (caption.isascii() and "\x00" not in caption) and looks_binary(caption):
            status[i], reason[i], stage[i] = Status.REJECTED, "caption_not_text", STAGE
            error[i] = "text rule: caption_not_text"
            rejected = True
            continue
        url_hash[i] = xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"))
        if need_caption_hash and clean[i]:
            # The same caption for the boilerplate rule: equal after case folding.
            caption_hash[i] = xxh3_64_intdigest(clean[i].casefold().encode("utf-8", "surrogatepass"))

    columns: dict[str, Any] = {name: batch.column(name) for name in BATCH_SCHEMA.names}
    columns.update(caption_clean=clean, num_tokens=tokens, lang=lang, lang_score=score, url_hash=url_hash)
    columns["num_chars"] = chars
    if rejected:
        columns.update(status=status, reason=reason, stage=stage, error=error)
    if need_caption_hash:
        columns["caption_hash"] = caption_hash
    if rules.vocab_size:
        ngrams = [ngram_hashes(text) if text else (None, None) for text in clean]
        columns["unigrams"] = [unigrams for unigrams, _ in ngrams]
        columns["bigrams"] = [bigrams for _, bigrams in ngrams]
    arrays = [_column(columns.get(field.name), field.type, n) for field in _PREPARED_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=_PREPARED_SCHEMA)


def _column(values: Any, type_: pa.DataType, n: int) -> pa.Array:
    """An Arrow column from an existing column, a list or numpy array, or None (all null)."""
    if values is None:
        return pa.nulls(n, type_)
    return values if isinstance(values, pa.Array) else pa.array(values, type=type_)


class _PrepareFn(beam.DoFn):
    def __init__(self, config: TextConfig):
        self._config = config
        self._rules = config.rules()
        self._shared = Shared()

    def setup(self) -> None:
        path = self._config.lid_model or None
        self._model = self._shared.acquire(lambda: LanguageIdentifier(path))

    def _identify(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        size, codes, scores = self._config.lid_batch_size, [], []
        plain = self._rules.measure == "datacomp"  # fastText's own top label, as DataComp reads it
        predict = self._model.predict_plain if plain else self._model.predict_clean
        for start in range(0, len(texts), size):
            batch_codes, batch_scores = predict(texts[start : start + size])
            codes.extend(batch_codes)
            scores.append(batch_scores)
        return codes, np.concatenate(scores)

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        yield prepare_batch(batch, self._rules, self._identify)


# Reasons the judge step decides, in the documented order (index 0: none).
_JUDGED = (
    None,
    "duplicate_url",
    "empty_caption",
    "boilerplate_caption",
    "too_few_words",
    "too_many_words",
    "too_short",
    "rare_token",
    "lang_not_allowed",
    "low_lang_score",
)
_CODE = {reason: code for code, reason in enumerate(_JUDGED)}
_JUDGED_REASONS = pa.array(_JUDGED[1:], pa.string())


#: Tagged output of the judge step: rows whose canonical URL is named more than once.
REPEATED = "repeated"


def keeper_rank(code: int, clean: str | None, tokens: int, uid: str, extra: str | None) -> tuple:
    """Where a row of a repeated URL ranks, smallest best (pure): a caption that passes the caption
    rules, then a non-empty one, then the most tokens, then the smallest uid (then the extra
    columns, so that even rows differing only there are ordered the same way on every run)."""
    return (code != 0, not clean, -int(tokens), uid, extra or "")


def keeper_order(
    codes: np.ndarray, clean: list[str | None], tokens: np.ndarray, uids: list[str], extras: list
):
    """Row indices of one URL's rows, best first (`keeper_rank`)."""
    return sorted(
        range(len(uids)),
        key=lambda i: keeper_rank(int(codes[i]), clean[i], int(tokens[i]), uids[i], extras[i]),
    )


def decide(
    batch: pa.RecordBatch, codes: np.ndarray, duplicate_of: list[str | None] | None, counter: StageCounter
) -> pa.RecordBatch:
    """The row batch (`BATCH_SCHEMA`) with each row's judged reason (`codes`, index into
    `_JUDGED`; 0: none) recorded, counted in `counter`."""
    judged = pa.array(codes > 0)
    why = pa.DictionaryArray.from_arrays(
        pa.array(codes - 1, pa.int8(), mask=codes == 0), _JUDGED_REASONS
    ).dictionary_decode()
    columns = {name: batch.column(name) for name in BATCH_SCHEMA.names}
    columns["status"] = pc.if_else(judged, Status.REJECTED, columns["status"])
    columns["reason"] = pc.if_else(judged, why, columns["reason"])
    columns["stage"] = pc.if_else(judged, STAGE, columns["stage"])
    detail = pc.binary_join_element_wise("text rule: ", why, "")
    if duplicate_of is not None:
        kept = pa.array(duplicate_of, pa.string())
        columns["duplicate_of"] = pc.if_else(pc.is_valid(kept), kept, columns["duplicate_of"])
        detail = pc.if_else(
            pc.is_valid(kept), pc.binary_join_element_wise("text rule: duplicate_url of ", kept, ""), detail
        )
    columns["error"] = pc.if_else(judged, detail, columns["error"])
    here = pc.equal(columns["stage"], STAGE).fill_null(False)
    dropped = pc.value_counts(columns["reason"].filter(here)).to_pylist()
    kept_rows = pc.sum(pc.equal(columns["status"], Status.PENDING)).as_py() or 0
    decided = sum(item["counts"] for item in dropped)
    counter.add_many(
        kept=kept_rows,
        dropped={item["values"]: item["counts"] for item in dropped},
        passed=batch.num_rows - kept_rows - decided,
    )
    return pa.RecordBatch.from_arrays([columns[name] for name in BATCH_SCHEMA.names], schema=BATCH_SCHEMA)


class _SortedCounts:
    """The run-wide counts as sorted hash arrays: repeated URLs, boilerplate captions, vocabulary."""

    def __init__(self, duplicates: np.ndarray | None, frequent: np.ndarray | None, vocab: list):
        self.repeated = duplicates  # None: too many to hold, every row with a URL is grouped by URL
        self.frequent = frequent  # None: too many to hold, batches come marked (`BOILERPLATE`)
        self.vocab = np.sort(np.concatenate(vocab)) if vocab else np.empty(0, "<u8")


class _JudgeFn(beam.DoFn):
    """Applies the row rules and those that need the global counts, vectorised over the batch.
    Rows of a URL named more than once go to the `repeated` output, undecided, with their code."""

    def __init__(self, config: TextConfig, progress_dir: str | None):
        self._rules = config.rules()
        self._progress_dir = progress_dir
        self._shared = Shared()  # the sorted side-input arrays, built once per process

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def _load(self, duplicates: np.ndarray | None, frequent: np.ndarray | None, vocab: list) -> None:
        """The side inputs as sorted arrays, built by the first DoFn instance of the process that
        needs them and shared by the others (`apache_beam.utils.shared`; a batch run has one window)."""
        arrays = self._shared.acquire(lambda: _SortedCounts(duplicates, frequent, vocab))
        self._arrays = arrays  # keeps the shared arrays alive while this instance uses them
        self._repeated, self._frequent, self._vocab = arrays.repeated, arrays.frequent, arrays.vocab

    def _rare(self, batch: pa.RecordBatch) -> np.ndarray:
        """Per row: does the caption have a unigram outside the vocabulary?"""
        column = batch.column("unigrams")
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
        flat = pc.list_flatten(column).to_numpy()
        rows = np.repeat(np.arange(batch.num_rows), lengths)
        return np.bincount(rows, weights=~member(self._vocab, flat), minlength=batch.num_rows) > 0

    def _boilerplate(self, batch: pa.RecordBatch, empty: np.ndarray) -> np.ndarray | None:
        """Per row: is its caption on too many pages? From the batch's own mark (the keyed join)
        when the run's boilerplate captions were too many to hold, else from the held set."""
        if BOILERPLATE in batch.schema.names:
            return batch.column(BOILERPLATE).to_numpy(zero_copy_only=False) & ~empty
        if self._frequent is None or not len(self._frequent):
            return None
        return member(self._frequent, pc.fill_null(batch.column("caption_hash"), 0).to_numpy()) & ~empty

    def reasons(self, batch: pa.RecordBatch) -> np.ndarray:
        """Per row, the index in `_JUDGED` of the first caption rule it breaks (0: none);
        `duplicate_url` is decided among a URL's rows, later."""
        rules, n = self._rules, batch.num_rows
        pending = pc.equal(batch.column("status"), Status.PENDING).to_numpy(zero_copy_only=False)
        clean = batch.column("caption_clean")
        empty = pc.equal(pc.utf8_length(clean), 0).to_numpy(zero_copy_only=False)
        tokens = batch.column("num_tokens").to_numpy(zero_copy_only=False)
        checks: list[tuple[str, np.ndarray | None]] = [
            # DataComp has no such rule: its word, character and language rules judge empty captions.
            (
                "empty_caption",
                empty
                if (rules.min_words or rules.min_chars or rules.languages) and rules.measure != "datacomp"
                else None,
            ),
            ("boilerplate_caption", self._boilerplate(batch, empty)),
            ("too_few_words", tokens < rules.min_words if rules.min_words else None),
            ("too_many_words", tokens > rules.max_words if rules.max_words else None),
            (
                "too_short",
                pc.less(batch.column("num_chars"), rules.min_chars).to_numpy(zero_copy_only=False)
                if rules.min_chars
                else None,
            ),
            ("rare_token", self._rare(batch) if rules.vocab_size else None),
            (
                "lang_not_allowed",
                ~pc.is_in(batch.column("lang"), pa.array(sorted(rules.languages), pa.string()))
                .fill_null(False)
                .to_numpy(zero_copy_only=False)
                if rules.languages
                else None,
            ),
            (
                "low_lang_score",
                batch.column("lang_score").to_numpy(zero_copy_only=False) < rules.min_lang_score
                if rules.min_lang_score
                else None,
            ),
        ]
        codes = np.zeros(n, np.int8)
        for reason, broken in reversed(checks):  # the first rule in the order wins
            if broken is not None:
                codes[broken] = _CODE[reason]
        codes[~pending] = 0
        return codes

    def process(
        self, batch: pa.RecordBatch, duplicates: np.ndarray | None, frequent: np.ndarray | None, vocab: list
    ) -> Iterator[Any]:
        self._load(duplicates, frequent, vocab)
        codes = self.reasons(batch)
        url_hash = batch.column("url_hash")
        repeated = url_hash.is_valid().to_numpy(zero_copy_only=False)
        if self._repeated is not None:
            repeated &= member(self._repeated, pc.fill_null(url_hash, 0).to_numpy())
        if repeated.any():
            rows = batch.filter(pa.array(repeated))
            rows = rows.append_column("code", pa.array(codes[repeated]))
            yield beam.pvalue.TaggedOutput(REPEATED, (_rows_key(rows), rows))
            batch, codes = batch.filter(pa.array(~repeated)), codes[~repeated]
        if batch.num_rows:
            yield decide(batch, codes, None, self._counter)

    def finish_bundle(self) -> None:
        self._counter.flush()


def _rows_key(rows: pa.RecordBatch) -> int:
    """A key naming a batch of repeated-URL rows by what ranks them: batches with the same key
    hold, position by position, rows that rank the same (`_ApplyVerdictsFn` relies on it)."""
    parts = zip(
        rows.column("uid").to_pylist(),
        rows.column("extra").to_pylist(),
        rows.column("code").to_pylist(),
        strict=True,
    )
    return xxh3_64_intdigest("\n".join(f"{uid}\t{extra}\t{code}" for uid, extra, code in parts).encode())


def _light_rows(element: tuple[int, pa.RecordBatch]) -> Iterator[tuple[int, tuple]]:
    """(url hash, (`keeper_rank`, batch key, position)) for each row of a keyed batch: all a URL's
    verdict needs, without the row itself."""
    key, rows = element
    columns = [
        rows.column(name).to_pylist()
        for name in ("url_hash", "code", "caption_clean", "num_tokens", "uid", "extra")
    ]
    for position, (url, *ranked) in enumerate(zip(*columns, strict=True)):
        yield url, (keeper_rank(*ranked), key, position)


class _UrlVerdictsFn(beam.DoFn):
    """The light rows of one canonical URL named more than once → per row (batch key, (position,
    `duplicate_of`)): the best row (`keeper_rank`) keeps its own verdict (None); every other is a
    duplicate of its uid. Two passes over the grouped rows, none held."""

    def process(self, element: tuple[int, Iterable[tuple]]) -> Iterator[tuple[int, tuple[int, str | None]]]:
        _, rows = element
        best = min(rows)
        kept_uid = best[0][3]
        count, kept = 0, False
        for rank, key, position in rows:
            count += 1
            if not kept and (rank, key, position) == best:  # equal twins: the first one is kept
                kept = True
                yield key, (position, None)
            else:
                yield key, (position, kept_uid)
        _ROWS_PER_URL.update(count)


#: Rows grouped per repeated URL, and elements per batch in the verdicts' join: the most any key groups.
_ROWS_PER_URL = Metrics.distribution(STAGE, "rows_per_repeated_url")
_VERDICT_JOIN = Metrics.distribution(STAGE, "verdict_join_elements")


class _ApplyVerdictsFn(beam.DoFn):
    """A batch of repeated-URL rows meets its rows' verdicts (keyed by the batch): each row marked
    `duplicate_url` of the kept uid, or left with its own verdict, and decided (`decide`). Batches
    sharing a key hold rows that rank the same, position by position: each takes one of the
    position's verdicts, in order."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, element: tuple[int, dict[str, list[Any]]]) -> Iterator[pa.RecordBatch]:
        _, joined = element
        batches, verdicts = joined["rows"], joined["verdicts"]
        _VERDICT_JOIN.update(len(batches) + len(verdicts))
        by_position: dict[int, list[str | None]] = {}
        for position, duplicate_of in verdicts:
            by_position.setdefault(position, []).append(duplicate_of)
        for choices in by_position.values():
            choices.sort(key=lambda uid: (uid is not None, uid or ""))
        for copy, rows in enumerate(batches):
            duplicate_of = [by_position[i][copy] for i in range(rows.num_rows)]
            codes = rows.column("code").to_numpy().astype(np.int8)
            codes[[i for i, uid in enumerate(duplicate_of) if uid is not None]] = _CODE["duplicate_url"]
            yield decide(rows, codes, duplicate_of, self._counter)

    def finish_bundle(self) -> None:
        self._counter.flush()


class _KeepBestOfUrl(beam.PTransform):
    """Keyed batches of the rows whose canonical URL is named more than once → the same rows
    decided: per URL the best row (`keeper_rank`) keeps its own verdict; every other row is
    `duplicate_url`, with `duplicate_of` the kept uid. Each URL is then fetched once.

    A keyed join on the URL hash: each row's light form (its rank, batch key and position) is
    grouped by URL hash, the best found, and the verdicts go back to their batch by its key. The
    rows themselves stay in their Arrow batch; no key holds more than one URL's light rows or one
    batch's verdicts."""

    def __init__(self, progress_dir: str | None):
        super().__init__()
        self._progress_dir = progress_dir

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        verdicts = (
            keyed
            | "LightRows" >> beam.FlatMap(_light_rows)
            | "GroupByUrl" >> beam.GroupByKey()
            | "Verdicts" >> beam.ParDo(_UrlVerdictsFn())
        )
        return (
            {"rows": keyed, "verdicts": verdicts}
            | "JoinVerdicts" >> beam.CoGroupByKey()
            | "Decide" >> beam.ParDo(_ApplyVerdictsFn(self._progress_dir))
        )


#: The column a batch carries when its boilerplate captions were found by the keyed join.
BOILERPLATE = "boilerplate"


def _batch_key(batch: pa.RecordBatch) -> int:
    """A key naming a batch by its rows (batches with the same rows get the same marks)."""
    return xxh3_64_intdigest("\n".join(batch.column("uid").to_pylist()).encode())


def _wanted(element: tuple[int, pa.RecordBatch], partitions: int) -> Iterator[tuple[int, Any]]:
    """(partition, (batch key, the batch's distinct caption hashes of that partition))."""
    key, batch = element
    hashes = np.unique(batch.column("caption_hash").drop_null().to_numpy())
    if not len(hashes):
        return
    for part, (chunk,) in by_partition(hashes, partitions, hashes):
        yield part, (key, chunk)


def _found(element: tuple[int, dict[str, list[Any]]]) -> Iterator[tuple[int, np.ndarray]]:
    """(batch key, its caption hashes that are boilerplate) for one partition."""
    _, joined = element
    frequent = np.sort(joined["frequent"][0]) if joined["frequent"] else np.empty(0, "<u8")
    for key, hashes in joined["wanted"]:
        yield key, hashes[member(frequent, hashes)]


def _marked(element: tuple[int, dict[str, list[Any]]]) -> Iterator[pa.RecordBatch]:
    """Each batch with its `BOILERPLATE` column: is the row's caption hash among those found."""
    _, joined = element
    found = np.sort(np.concatenate(joined["found"])) if joined["found"] else np.empty(0, "<u8")
    for batch in joined["batch"]:
        hashes = batch.column("caption_hash")
        marks = member(found, pc.fill_null(hashes, 0).to_numpy()) & hashes.is_valid().to_numpy(
            zero_copy_only=False
        )
        yield batch.append_column(BOILERPLATE, pa.array(marks))


class _MarkBoilerplate(beam.PTransform):
    """Prepared batches → the same batches. When the run's boilerplate captions are too many to
    hold (`boilerplate_in_memory`; `frequent` is None), each batch is marked by a keyed join
    instead: its caption hashes go to their partition's set of boilerplate captions, and the hits
    come back to the batch. The batches otherwise pass untouched, to the side-input test."""

    def __init__(self, frequent_parts: beam.PCollection, frequent: beam.PCollection, partitions: int):
        super().__init__()
        self._parts = frequent_parts
        self._frequent = frequent
        self._partitions = partitions

    def expand(self, prepared: beam.PCollection) -> beam.PCollection:
        def route(batch: pa.RecordBatch, frequent: np.ndarray | None) -> Iterator[Any]:
            yield batch if frequent is not None else beam.pvalue.TaggedOutput("keyed", batch)

        routed = prepared | "Route" >> beam.FlatMap(
            route, beam.pvalue.AsSingleton(self._frequent)
        ).with_outputs("keyed", main="held")
        keyed = routed.keyed | "KeyBatches" >> beam.Map(lambda b: (_batch_key(b), b))
        found = (
            {"frequent": self._parts, "wanted": keyed | "Wanted" >> beam.FlatMap(_wanted, self._partitions)}
            | "JoinCaptions" >> beam.CoGroupByKey()
            | "Found" >> beam.FlatMap(_found)
        )
        marked = (
            {"batch": keyed, "found": found}
            | "JoinBatches" >> beam.CoGroupByKey()
            | "Mark" >> beam.FlatMap(_marked)
        )
        return (routed.held, marked) | "Batches" >> beam.Flatten()


class FilterText(beam.PTransform):
    """Cleans captions, identifies their language and rejects pairs not worth fetching.

    In and out: row batches (`schemas.BATCH_SCHEMA`; from `ReadUrlBatches`, or
    `schemas.batch_from_samples`), every row kept, with the text columns set."""

    def __init__(self, config: TextConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        rules = self._config.rules()
        partitions = self._config.shuffle_partitions
        prepared = batches | "Prepare" >> beam.ParDo(_PrepareFn(self._config))
        empty = batches.pipeline | "Nothing" >> beam.Create([])
        vocab = empty
        duplicates = batches.pipeline | "NoRepeatedUrls" >> beam.Create([np.empty(0, "<u8")])
        frequent = batches.pipeline | "NoBoilerplate" >> beam.Create([np.empty(0, "<u8")])
        if rules.dedupe_urls:
            duplicates = (
                prepared
                | "UrlKeys" >> beam.FlatMap(url_entries, partitions)
                | "CountUrls" >> beam.CombinePerKey(UrlCounts())
                | "RepeatedUrls" >> beam.Values()
                | "AtMost" >> beam.CombineGlobally(CappedKeys(self._config.repeated_urls_in_memory))
            )
        if rules.boilerplate_max_urls:
            frequent_parts = (
                prepared
                | "CaptionUrls" >> beam.FlatMap(caption_entries, partitions)
                | "DistinctUrls"
                >> beam.CombinePerKey(CappedDistinctUrls(rules.boilerplate_max_urls + 1)).with_hot_key_fanout(
                    HOT_KEY_FANOUT
                )
            )
            frequent = (
                frequent_parts
                | "FrequentCaptions" >> beam.Values()
                | "AtMostCaptions" >> beam.CombineGlobally(CappedKeys(self._config.boilerplate_in_memory))
            )
            prepared = prepared | "MarkBoilerplate" >> _MarkBoilerplate(frequent_parts, frequent, partitions)
        if rules.vocab_size:
            vocab = prepared | "Vocabulary" >> Vocabulary(rules.vocab_size, partitions)
        judged = prepared | "Judge" >> beam.ParDo(
            _JudgeFn(self._config, self._progress_dir),
            duplicates=beam.pvalue.AsSingleton(duplicates),
            frequent=beam.pvalue.AsSingleton(frequent),
            vocab=beam.pvalue.AsList(vocab),
        ).with_outputs(REPEATED, main="single")
        kept_of_url = judged[REPEATED] | "KeepBestOfUrl" >> _KeepBestOfUrl(self._progress_dir)
        return (judged.single, kept_of_url) | "Decided" >> beam.Flatten()
