"""MetaCLIP's substring matching at MetaCLIP's scale: 500,000 entries, one core.

Entries: 400,000 made-up words and 100,000 two-word phrases of them (MetaCLIP's list is WordNet
synsets, Wikipedia unigrams, bigrams and titles: the same shapes). Captions: 8-16 words, about
half of them entries drawn from a Zipf law, the rest filler, with punctuation. Three ways to
find every entry a caption holds, side by side on the same captions:

1. Winnow's `EntryMatcher.match`: MetaCLIP's spacing of the caption, one Aho-Corasick automaton,
   the sorted distinct ids;
2. `pyahocorasick` alone: the automaton's `iter` over captions spaced beforehand (the floor);
3. a pure-Python loop over the entries with `str.find` (on a few captions: it is that slow).

    .venv/bin/python benchmarks/balance_matching.py --entries 500000 --captions 50000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.balance.matching import EntryMatcher, spaced_entry, spacing  # noqa: E402

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def words(n: int, rng: np.random.Generator) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        lengths = rng.integers(4, 11, n)
        for length in lengths:
            out.add("".join(rng.choice(_LETTERS, length)))
            if len(out) == n:
                break
    return sorted(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--captions", type=int, default=50_000)
    parser.add_argument("--loop-captions", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    unigrams = words(args.entries * 4 // 5, rng)
    pairs = rng.integers(0, len(unigrams), (args.entries - len(unigrams), 2))
    entries = unigrams + [f"{unigrams[a]} {unigrams[b]}" for a, b in pairs]
    filler = words(2_000, np.random.default_rng(1))
    zipf = 1.0 / np.arange(1, len(entries) + 1) ** 1.05
    zipf /= zipf.sum()
    captions = []
    for _ in range(args.captions):
        n = int(rng.integers(8, 17))
        chosen = [entries[i] if rng.random() < 0.5 else filler[int(rng.integers(len(filler)))]
                  for i in rng.choice(len(entries), n, p=zipf)]  # fmt: skip
        captions.append(" ".join(chosen[:-1]) + ", " + chosen[-1] + ".")
    print(
        f"{len(entries):,} entries, {len(captions):,} captions of "
        f"{np.mean([len(c) for c in captions]):.0f} chars"
    )

    started = time.perf_counter()
    matcher = EntryMatcher([("*", e) for e in entries])
    build = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"automaton built in {build:.1f} s (process max RSS {rss:,.0f} MB)")

    started = time.perf_counter()
    found = [matcher.match(c, "en") for c in captions]
    winnow = time.perf_counter() - started
    automaton = matcher._automata["*"]  # the same automaton, used bare
    spaced = [spacing(c) for c in captions]
    started = time.perf_counter()
    for text in spaced:
        for _ in automaton.iter(text):
            pass
    bare = time.perf_counter() - started
    padded = [spaced_entry(e) for e in entries]
    loop_captions = spaced[: args.loop_captions]
    started = time.perf_counter()
    looped = [[i for i, e in enumerate(padded) if text.find(e) >= 0] for text in loop_captions]
    loop = time.perf_counter() - started
    assert looped == found[: args.loop_captions], "the loop and the automaton disagree"
    rates = {
        "Winnow EntryMatcher.match": len(captions) / winnow,
        "pyahocorasick iter alone (spaced beforehand)": len(captions) / bare,
        "Python loop over entries with str.find": len(loop_captions) / loop,
    }
    for name, rate in rates.items():
        print(f"  {name:46s} {rate:12,.1f} captions/s")
    print(f"  matches per caption: {np.mean([len(f) for f in found]):.2f}")
    winnow_rate, bare_rate, loop_rate = rates.values()
    print(
        f"Winnow / bare automaton: {winnow_rate / bare_rate:.2f}; "
        f"Winnow / loop: {winnow_rate / loop_rate:,.0f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
