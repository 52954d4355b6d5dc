"""The audit as one self-contained HTML page, and `winnow audit`'s entry point.

In: one `Audit` (or two, to compare). Out: an HTML document with everything inlined — CSS,
inline SVG charts, thumbnails as `data:` URIs — and no script. A Content-Security-Policy meta tag
forbids every other source, so the page loads nothing from the network. Captions, URLs, errors,
reasons and config values come from the data and are untrusted: every one is escaped, and a URL
becomes a link only when it is http(s) (`rel="noopener noreferrer"`).

Text a user must be able to trust is shown as it is: a kept sample's caption as shipped (the tar's
`.txt`) and, where that differs, the caption it came from; invisible characters in URLs and hosts
(a zero-width space, a bidi override) as visible `U+XXXX` marks, and a non-ASCII host with its
punycode, so two hosts that look alike never read the same; a uid an error cites with that row.

Every count drawn from the Parquet carries `data-key` and `data-count` attributes
(`status:success`, `reason:crawl:http_404`, `stage:text:kept`, …; prefixed `a/` and `b/` when
comparing), so tools and tests read the numbers back without scraping text.
"""

from __future__ import annotations

import html
import math
import os
import unicodedata
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import yaml
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.output.audit import (
    KEPT,
    PENDING,
    STAGE_ORDER,
    UID,
    Audit,
    AuditError,
    FunnelStep,
    Histogram,
    audit_output,
    cited_uids,
    shipped_caption,
)
from transforms.common.files import write_atomically
from transforms.common.manifest import normalized, output_holding, record_files

REPORT_FILE = "report.html"
#: Marks a page as Winnow's, so that `winnow audit --out` replaces only its own reports.
GENERATOR = '<meta name="generator" content="winnow audit">'

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_KEPT, _DROP, _THRESHOLD, _A, _B = "#2f9e44", "#f59f00", "#c2255c", "#1c7ed6", "#e8590c"
_CHARTS = {  # histogram → title, x label format
    "clip_score": ("CLIP score", "{:.2f}"),
    "noise_prob": ("noise probability", "{:.2f}"),
    "num_tokens": ("caption length (tokens)", "{:.0f}"),
    "short_side": ("image short side (px, as downloaded)", "{:.0f}"),
    "aspect_ratio": ("aspect ratio (long / short side)", "{:.1f}"),
}
#: Fonts with Chinese, Japanese and Korean glyphs, named after the Latin ones so that a caption in
#: any of them renders as text, not boxes (`make setup` installs WenQuanYi Zen Hei on Debian).
CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "PingFang SC",
             "Hiragino Sans", "Microsoft YaHei", "Malgun Gothic")  # fmt: skip
_FONTS = ",".join(['system-ui', '-apple-system', '"Segoe UI"', "Roboto", '"Noto Sans"',
                   *(f'"{f}"' for f in CJK_FONTS), "sans-serif"])  # fmt: skip
_CSS = """
:root{--ink:#212529;--muted:#6c757d;--line:#e9ecef;--bg:#f4f5f7}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 FONTS;
color:var(--ink);background:var(--bg)}
main{max-width:1240px;margin:0 auto;padding:20px 28px 48px}
h1{margin:0 0 2px;font-size:22px}h2{font-size:16px;margin:0 0 12px}h3{font-size:14px;margin:14px 0 6px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:14px 0}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:12px}
.card{flex:1;min-width:130px;padding:10px 14px;border-radius:8px;background:#fff;border:1px solid var(--line)}
.card b{display:block;font-size:22px;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%}
td,th{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.stage td{font-weight:600;background:#fafbfc}td.reason{padding-left:26px}
.bar{height:10px;border-radius:3px;background:#2f9e44;min-width:1px}.bar.drop{background:#f59f00}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:18px}
figure{margin:0}figcaption{font-weight:600;margin-bottom:2px}svg{width:100%;height:auto;display:block}
.legend{font-size:12px;color:var(--muted)}.legend i{display:inline-block;width:10px;height:10px;
border-radius:2px;margin:0 4px 0 10px;vertical-align:-1px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:14px}
.thumb{width:128px;height:128px;object-fit:contain;background:var(--bg);border-radius:6px;display:block}
.noimg{width:128px;height:128px;border-radius:6px;background:repeating-linear-gradient(45deg,#f1f3f5,
#f1f3f5 8px,#e9ecef 8px,#e9ecef 16px);color:var(--muted);font-size:11px;display:flex;align-items:center;
justify-content:center;text-align:center}
.cap{font-size:12px;margin-top:4px;overflow-wrap:anywhere}.tile .cap{display:-webkit-box;
-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden}
.url{font:11px/1.3 ui-monospace,SFMono-Regular,Menlo,monospace;color:var(--muted);overflow-wrap:anywhere}
.url a{color:inherit}.err{font-size:12px;color:#c92a2a;overflow-wrap:anywhere}
.muted{color:var(--muted)}.nowrap{white-space:nowrap}.warn{background:#fff4e6;border-color:#ffd8a8}
.group{display:flex;gap:14px;padding:10px 0;border-bottom:1px solid var(--line)}.group ol{margin:0;
padding-left:18px;flex:1}.group li{margin-bottom:6px}
.rejs{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:10px;margin-bottom:8px}
.rej{display:flex;gap:10px;padding:8px;border:1px solid var(--line);border-radius:8px}
.rej .thumb{width:96px;height:96px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:18px}
pre{background:var(--bg);padding:10px;border-radius:6px;overflow:auto;font-size:12px;max-height:420px}
details>summary{cursor:pointer;font-weight:600;margin:6px 0}
.pos{color:#2f9e44}.neg{color:#c92a2a}
.inv{font:10px/1 ui-monospace,monospace;color:#c92a2a;border:1px solid #ffa8a8;border-radius:3px;
padding:0 2px}.cap.orig{color:var(--muted)}
.cited{font-size:12px;margin-top:6px;padding-top:6px;border-top:1px dashed var(--line)}
.cited .thumb{width:64px;height:64px}.cited .row{display:flex;gap:8px;margin-top:4px}
""".replace("FONTS", _FONTS)


def write_report(
    output: str, out: str | None = None, compare: str | None = None, options: PipelineOptions | None = None
) -> str:
    """Audits `output` (against `compare` if given), writes the HTML and returns its path.
    `options`: Beam's (filesystem keys), for an output whose aggregates are computed again."""
    audit = audit_output(output, options=options)
    other = audit_output(compare, options=options) if compare else None
    own = f"{output.rstrip('/')}/{REPORT_FILE}"
    path = out or own
    _check_report_target(path, own)
    if FileSystems.get_scheme(path) in (None, "file") and os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, render_report(audit, other).encode("utf-8", "replace"))
    if normalized(path) == normalized(f"{output.rstrip('/')}/{REPORT_FILE}"):
        record_files(output, [REPORT_FILE])
    return path


def _check_report_target(path: str, own: str) -> None:
    """`AuditError` unless `path` is free or holds a report Winnow wrote: an existing folder or
    any other file is never replaced. Inside a Winnow folder only its own report (`own`) is
    written: another file there, not on its manifest, would make the next run refuse the folder."""
    local = FileSystems.get_scheme(path) in (None, "file")
    if local and os.path.isdir(path):
        raise AuditError(f"--out {path} is a folder; give the path of the HTML file to write")
    holder = output_holding(path)
    if holder is not None and normalized(path) != normalized(own):
        raise AuditError(
            f"--out {path} is inside the Winnow output {holder}; write the report elsewhere "
            f"(or leave --out out: the output's own {REPORT_FILE})"
        )
    if not FileSystems.exists(path):
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        head = handle.read(4096)
    if GENERATOR.encode() not in head:
        raise AuditError(f"--out {path} exists and is not a report Winnow wrote; it is left as it is")


def render_report(audit: Audit, compare: Audit | None = None) -> str:
    """The whole page for one output, or two side by side."""
    if compare is None:
        title = f"Winnow audit · {audit.output}"
        body = [
            _header(audit, "", "Winnow audit"),
            _warnings(audit),
            _section("Funnel", _funnel(audit, "")),
            _section("Distributions", _distributions(audit)),
            _safety(audit),
            _balance(audit),
            _section("Domains", _domains(audit, "")),
            _section("Kept samples", _gallery(audit)),
            _section("Rejected and failed samples", _rejections(audit)),
            _pending(audit),
            _section("Largest duplicate groups", _groups(audit)),
            _section("Config and models", _run(audit)),
        ]  # fmt: skip
    else:
        title = f"Winnow audit · {audit.output} vs {compare.output}"
        body = [
            _pair(_header(audit, "a/", "A"), _header(compare, "b/", "B")),
            _section("Counts", _count_deltas(audit, compare)),
            _section("Funnel", _compare_funnel(audit, compare)),
            _section("Distributions of kept samples", _overlays(audit, compare)),
            _section("Domains", _pair(_domains(audit, "a/"), _domains(compare, "b/"))),
            _section("Kept samples", _pair(_gallery(audit), _gallery(compare))),
            _section("Config and models", _pair(_run(audit), _run(compare))),
        ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _cut(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    """`1 shard`, `2 shards`, `1,000 samples`."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


#: Characters that show nothing (or only blank space) where they stand, other than a plain space.
_INVISIBLE = {"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp", "Zs"}
_BLANK_LOOKING = {"\u115f", "\u1160", "\u2800", "\u3164", "\uffa0"}


def _shown(text: str) -> str:
    """`text` escaped, with every invisible or blank-looking character but a plain space shown as
    a visible `U+XXXX` mark, so `exa\u200bmple.com` never reads as `example.com`."""
    out = []
    for ch in text:
        if ch != " " and (unicodedata.category(ch) in _INVISIBLE or ch in _BLANK_LOOKING):
            name = unicodedata.name(ch, "unassigned or control character")
            out.append(f'<span class="inv" title="{_e(name)}">U+{ord(ch):04X}</span>')
        else:
            out.append(_e(ch))
    return "".join(out)


def _host(name: str) -> str:
    """A host as shown: invisible characters marked, and a non-ASCII one followed by its punycode
    (`раураl.com` is not `paypal.com`)."""
    shown = _shown(_cut(name, 60))
    if not name.isascii():
        try:
            ascii_form = name.encode("idna").decode("ascii")
        except UnicodeError:
            return shown
        if "xn--" in ascii_form:
            shown += f' <span class="muted">({_e(_cut(ascii_form, 60))})</span>'
    return shown


def _uid(uid: str) -> str:
    return f'<code class="muted" title="{_e(uid)}">{_e(uid[:12])}</code>'


def _error(text: str | None, limit: int = 300) -> str:
    """An error message, escaped, with the uids it cites shortened as the page shows them."""
    cut = _cut(text, limit)
    parts, last = [], 0
    for match in UID.finditer(cut):
        parts += [_e(cut[last : match.start()]), _uid(match.group())]
        last = match.end()
    return "".join([*parts, _e(cut[last:])])


def _count(key: str, n: int, text: str | None = None) -> str:
    shown = _e(text if text is not None else f"{n:,}")
    return f'<span data-key="{_e(key)}" data-count="{int(n)}">{shown}</span>'


def _pct(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "–"


def _section(title: str, content: str, kind: str = "") -> str:
    return f'<section class="{kind}"><h2>{_e(title)}</h2>{content}</section>'


def _pair(left: str, right: str) -> str:
    return f'<div class="pair"><div>{left}</div><div>{right}</div></div>'


def _url(url: str | None) -> str:
    if not url:
        return '<span class="url">(no URL)</span>'
    shown = _shown(_cut(url, 140))
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # an unbalanced IPv6 bracket: shown, never linked
        scheme = ""
    if scheme in ("http", "https"):
        return f'<span class="url"><a href="{_e(url)}" rel="noopener noreferrer nofollow">{shown}</a></span>'
    return f'<span class="url">{shown}</span>'


def _header(audit: Audit, side: str, label: str) -> str:
    stats, counts = audit.stats, audit.status_counts()
    facts = [f"{stats['duration_s']:.1f} s" if stats.get("duration_s") else None]
    shards = stats.get("shards") or {}
    if shards:
        count = _plural(shards.get("count", 0), "shard")
        facts.append(f"{count}, {shards.get('tar_bytes', 0) / 1e6:.1f} MB of tar")
    if stats.get("index"):
        index = stats["index"]
        facts.append(f"index: {index.get('type')} of {_plural(index.get('count', 0), 'sample')}")
    cards = [f'<div class="card">samples<b>{_count(side + "samples", audit.total)}</b></div>']
    for status in ("success", "rejected", "failed", *(["pending"] if "pending" in counts else [])):
        n = counts.get(status, 0)
        cards.append(
            f'<div class="card">{status}<b>{_count(f"{side}status:{status}", n)}</b>'
            f'<span class="muted">{_pct(n, audit.total)}</span></div>'
        )
    return (
        f"<header><h1>{_e(label)}</h1><div class='url'>{_e(audit.output)}</div>"
        f"<div class='muted'>{_e(' · '.join(f for f in facts if f))}</div>"
        f"<div class='cards'>{''.join(cards)}</div></header>"
    )


def _warnings(audit: Audit) -> str:
    if not audit.warnings:
        return ""
    return _section("Warnings", "".join(f"<p>{_e(w)}</p>" for w in audit.warnings), "warn")


def _passed(audit: Audit, step: FunnelStep, key: str) -> str:
    """How many samples passed a stage; at the last one, how many of them no stage decided."""
    pending = audit.status_counts().get(PENDING, 0) if step is audit.funnel[-1] else 0
    note = f' <span class="muted">({_plural(pending, "sample")} pending)</span>' if pending else ""
    return f"{_count(key, step.kept)} passed{note}"


def _funnel(audit: Audit, side: str) -> str:
    rows = ['<tr><th>stage / reason</th><th class="n">samples</th><th class="n">of input</th>'
            '<th class="n">of stage</th><th style="width:30%"></th></tr>']  # fmt: skip
    for step in audit.funnel:
        width = step.kept / audit.total if audit.total else 0
        rows.append(
            f'<tr class="stage"><td>{_e(step.stage)} <span class="muted">in '
            f"{_count(f'{side}stage:{step.stage}:in', step.entering)}</span></td>"
            f'<td class="n">{_passed(audit, step, f"{side}stage:{step.stage}:kept")}</td>'
            f'<td class="n">{_pct(step.kept, audit.total)}</td>'
            f'<td class="n">{_pct(step.kept, step.entering)}</td>'
            f'<td><div class="bar" style="width:{width:.1%}"></div></td></tr>'
        )
        for reason, n in step.dropped.items():
            rows.append(
                f'<tr><td class="reason">{_e(reason)}</td>'
                f'<td class="n">{_count(f"{side}reason:{step.stage}:{reason}", n)}</td>'
                f'<td class="n">{_pct(n, audit.total)}</td><td class="n">{_pct(n, step.entering)}</td>'
                f'<td><div class="bar drop" style="width:{n / max(audit.total, 1):.1%}"></div></td></tr>'
            )
    return f"<table>{''.join(rows)}</table>"


def _compare_funnel(a: Audit, b: Audit) -> str:
    """Both funnels in one table, rows aligned by stage and reason: a stage only one run ran shows
    `not run` on the other side, never another stage's numbers."""
    steps = {"a/": {s.stage: s for s in a.funnel}, "b/": {s.stage: s for s in b.funnel}}
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    stages = sorted(steps["a/"].keys() | steps["b/"].keys(), key=lambda s: (order.get(s, len(order)), s))
    totals = {"a/": a.total, "b/": b.total}
    rows = ['<tr><th>stage / reason</th><th class="n">A</th><th class="n">of A input</th>'
            '<th class="n">B</th><th class="n">of B input</th><th class="n">B − A</th></tr>']  # fmt: skip

    audits = {"a/": a, "b/": b}

    def cells(side: str, step: FunnelStep | None, reason: str | None) -> tuple[str, int | None]:
        if step is None:
            return '<td class="n muted">not run</td><td></td>', None
        if reason is None:
            n = step.kept
            entering = _count(f"{side}stage:{step.stage}:in", step.entering)
            passed = _passed(audits[side], step, f"{side}stage:{step.stage}:kept")
            shown = f"{passed} <span class='muted'>of {entering}</span>"
        else:
            n = step.dropped.get(reason, 0)
            shown = _count(f"{side}reason:{step.stage}:{reason}", n)
        return f'<td class="n">{shown}</td><td class="n">{_pct(n, totals[side])}</td>', n

    for stage in stages:
        sa, sb = steps["a/"].get(stage), steps["b/"].get(stage)
        reasons = {**(sa.dropped if sa else {}), **(sb.dropped if sb else {})}
        ranked = sorted(
            reasons, key=lambda r: (-max((s.dropped.get(r, 0) for s in (sa, sb) if s), default=0), r)
        )
        for reason in [None, *ranked]:
            (left, na), (right, nb) = cells("a/", sa, reason), cells("b/", sb, reason)
            delta = "" if na is None or nb is None else f"{nb - na:+,}"
            css = "muted" if not delta or nb == na else "pos" if (nb or 0) > (na or 0) else "neg"
            label = f"<td>{_e(stage)}</td>" if reason is None else f'<td class="reason">{_e(reason)}</td>'
            rows.append(
                f'<tr class="{"stage" if reason is None else ""}" data-stage="{_e(stage)}">'
                f'{label}{left}{right}<td class="n {css}">{delta}</td></tr>'
            )
    return f"<table>{''.join(rows)}</table>"


def _distributions(audit: Audit) -> str:
    figures = []
    for name, (title, fmt) in _CHARTS.items():
        hist = audit.histograms.get(name)
        if hist is None:
            continue
        marks = [(v, label, _THRESHOLD) for v, label in audit.thresholds.get(name, [])]
        series = [("kept", _KEPT, hist.kept), ("not kept", _DROP, hist.other)]
        figures.append(
            _figure(title, hist.total, _histogram_svg(hist, series, marks, fmt, stacked=True), series)
        )
    languages = list(audit.languages.items())[:12]
    figures.append(
        _figure(
            "caption language", None, _bars_svg(languages), [("kept", _KEPT, []), ("not kept", _DROP, [])]
        )
    )
    figures.append(_group_sizes(audit))
    return f'<div class="charts">{"".join(figures)}</div>'


def _safety(audit: Audit) -> str:
    """Counts per blocklist and reason, the NSFW histogram with its threshold, faces and blurring.
    Never a row, caption, host or picture of a blocked sample."""
    safety = audit.safety
    if safety is None:
        return ""
    lists = "".join(
        f'<tr><td class="url">{_e(name)}</td><td class="n">{_count(f"blocklist:{name}", n)}</td></tr>'
        for name, n in safety.blocklists.items()
    )
    reasons = "".join(
        f'<tr><td class="url">{_e(reason)}</td><td class="n">{_count(f"safety:{reason}", n)}</td></tr>'
        for reason, n in safety.reasons.items()
    )
    blurred = "not recorded" if safety.blurred is None else f"{safety.blurred:,}"
    faces = (
        f"<p>{_count('faces', safety.faces)} face boxes on "
        f"{_count('with_faces', safety.with_faces, _plural(safety.with_faces, 'sample'))}; "
        f"images blurred: {_count('blurred', safety.blurred or 0, blurred)}.</p>"
    )
    parts = [
        '<p class="muted">A blocked sample is counted here and nowhere else: the report shows no '
        "row, caption, host or picture of it.</p>",
        "<h3>blocklists</h3>"
        + (f"<table>{lists}</table>" if lists else "<p class=muted>nothing blocked</p>"),
        "<h3>rejected by the safety stage</h3>"
        + (f"<table>{reasons}</table>" if reasons else "<p class=muted>none</p>"),
        f"<h3>faces</h3>{faces}",
    ]
    if safety.nsfw is not None:
        marks = (
            [(safety.max_nsfw, f"safety.max_nsfw = {safety.max_nsfw}", _THRESHOLD)] if safety.max_nsfw else []
        )
        series = [("kept", _KEPT, safety.nsfw.kept), ("not kept", _DROP, safety.nsfw.other)]
        svg = _histogram_svg(safety.nsfw, series, marks, "{:.2f}", stacked=True)
        parts.append(f'<div class="charts">{_figure("NSFW score", safety.nsfw.total, svg, series)}</div>')
    return _section("Safety", "".join(parts))


def _balance(audit: Audit) -> str:
    """MetaCLIP's figure: metadata entries by how many captions matched them, before and after
    balancing (log2 bins), with each t drawn, and the head entries."""
    found = audit.stats.get("balance")
    if not isinstance(found, dict) or "count_bins_before" not in found:
        return ""
    before, after = found["count_bins_before"], found["count_bins_after"]
    hist = Histogram(0.0, 1.0, list(before), list(after))
    marks = [
        (math.log2(t), f"t = {t:,} ({lang})", _THRESHOLD) for lang, t in sorted(found["t"].items()) if t > 0
    ]
    series = [("before", _A, list(before)), ("after", _B, list(after))]
    svg = _histogram_svg(hist, series, marks, "2^{:.0f}", stacked=False)
    figure = _figure("metadata entries by captions matched (log2 bins: 2^k to 2^(k+1))", None, svg, series)
    head = "".join(
        f'<tr><td class="url">{_e(row["entry"])}</td><td>{_e(row["lang"])}</td>'
        f'<td class="n">{row["count"]:,}</td><td class="n">{row["kept"]:,}</td></tr>'
        for row in found.get("head", [])
    )
    note = (
        f"<p>{_count('balance:entries_matched', found['entries_matched'])} of {found['entries']:,} entries "
        f"matched; {_count('balance:entries_over_t', found['entries_over_t'])} over their t. Matches: "
        f"{found['matches_before']:,} before, {found['matches_after']:,} after.</p>"
    )
    columns = "<tr><th>entry</th><th>lang</th><th>matched</th><th>kept</th></tr>"
    table = f"<h3>head entries</h3><table>{columns}{head}</table>"
    return _section("Balance", f'{note}<div class="charts">{figure}</div>{table}')


def _overlays(a: Audit, b: Audit) -> str:
    figures = []
    for name, (title, fmt) in _CHARTS.items():
        ha, hb = a.histograms.get(name), b.histograms.get(name)
        if ha is None or hb is None:
            continue
        marks = [(v, f"A {label}", _A) for v, label in a.thresholds.get(name, [])]
        marks += [(v, f"B {label}", _B) for v, label in b.thresholds.get(name, [])]
        series = [("A", _A, ha.kept), ("B", _B, hb.kept)]
        figures.append(_figure(title, None, _histogram_svg(ha, series, marks, fmt, stacked=False), series))
    return f'<div class="charts">{"".join(figures)}</div>'


def _figure(
    title: str, n: int | None, svg: str, series: list[tuple[str, str, list[int]]], unit: str = "value"
) -> str:
    legend = "".join(f'<i style="background:{color}"></i>{_e(label)}' for label, color, _ in series)
    count = f' <span class="muted">({_e(_plural(n, unit))})</span>' if n is not None else ""
    return (
        f'<figure><figcaption>{_e(title)}{count}</figcaption>{svg}<div class="legend">{legend}</div></figure>'
    )


def _histogram_svg(
    hist: Histogram, series: list[tuple[str, str, list[int]]], marks: list[tuple[float, str, str]],
    fmt: str, stacked: bool,
) -> str:  # fmt: skip
    """Bars over the bins that hold data (and the thresholds), stacked or overlaid, with marked thresholds."""
    bins = len(hist.kept)
    used = [i for i in range(bins) if any(s[2][i] for s in series)]
    at = [min(bins - 1, max(0, int((v - hist.lo) / hist.width))) for v, _, _ in marks]
    if not used:
        return '<p class="muted">no values</p>'
    first, last = max(0, min(used + at) - 1), min(bins - 1, max(used + at) + 1)
    shown = range(first, last + 1)
    heights = [sum(s[2][i] for s in series) if stacked else max(s[2][i] for s in series) for i in shown]
    top = max(heights) or 1
    w, h, left, bottom, pad = 560, 190, 46, 26, 18
    step = (w - left - 8) / len(shown)
    parts = [f'<svg viewBox="0 0 {w} {h}" role="img">']
    for frac in (0.5, 1.0):
        y = h - bottom - frac * (h - bottom - pad)
        parts.append(f'<line x1="{left}" x2="{w - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e9ecef"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#6c757d">'
                     f"{round(top * frac):,}</text>")  # fmt: skip
    for j, i in enumerate(shown):
        base = 0.0
        x = left + j * step
        for label, color, counts in series:
            n = counts[i]
            if not n:
                continue
            bar = n / top * (h - bottom - pad)
            y = h - bottom - (base if stacked else 0) - bar
            opacity = "" if stacked else ' fill-opacity="0.55"'
            edge = hist.lo + i * hist.width
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(step - 1, 0.5):.1f}" height="{bar:.1f}" '
                f'fill="{color}"{opacity}><title>{_e(label)} {_e(fmt.format(edge))}: {n:,}</title></rect>'
            )
            base += bar if stacked else 0
    centred = hist.width == 1  # integer bins: label the bar, not its left edge
    open_end = last == bins - 1 and any(s[2][last] for s in series)
    for value, text in _ticks(hist, first, last, open_end):
        x = left + ((value - hist.lo) / hist.width - first + 0.5 * centred) * step
        anchor = "middle"
        if text.startswith("≥"):  # the last bin also holds everything above
            x, anchor = left + len(shown) * step, "end"
        parts.append(
            f'<text x="{x:.1f}" y="{h - 8}" font-size="10" text-anchor="{anchor}" fill="#6c757d">'
            f"{_e(text)}</text>"
        )
    parts.append(f'<line x1="{left}" x2="{w - 8}" y1="{h - bottom}" y2="{h - bottom}" stroke="#adb5bd"/>')
    for k, (value, label, color) in enumerate(marks):
        x = left + ((value - hist.lo) / hist.width - first) * step
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad - 6}" y2="{h - bottom}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{pad + 2 + 12 * k}" '
            f'font-size="10" fill="{color}">{_e(label)}</text>'
        )
    return "".join(parts) + "</svg>"


def _ticks(hist: Histogram, first: int, last: int, open_end: bool) -> list[tuple[float, str]]:
    """About five round values across the bins shown, and `≥x` under an open last bin that holds data."""
    lo, hi = hist.lo + first * hist.width, hist.lo + (last + 1) * hist.width
    magnitude = 10 ** math.floor(math.log10((hi - lo) / 5))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= (hi - lo) / 5)
    decimals = 0 if step >= 1 else len(f"{step:g}".split(".")[1])
    values = [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
    ticks = [(v, f"{v:.{decimals}f}") for v in values]
    if open_end:
        edge = hist.lo + last * hist.width
        ticks = [(v, t) for v, t in ticks if v < edge - step / 2] + [(edge, f"≥{edge:.{decimals}f}")]
    return ticks


def _bars_svg(rows: list[tuple[str, tuple[int, int]]]) -> str:
    """Horizontal stacked bars (kept, not kept) for a categorical distribution."""
    if not rows:
        return '<p class="muted">no values</p>'
    w, line, left = 560, 18, 70
    top = max(sum(counts) for _, counts in rows) or 1
    parts = [f'<svg viewBox="0 0 {w} {line * len(rows) + 4}" role="img">']
    for k, (name, (kept, other)) in enumerate(rows):
        y, scale = k * line + 2, (w - left - 60) / top
        bar = f'y="{y}" height="{line - 4}"'
        parts.append(
            f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{_e(_cut(name, 10))}</text>'
            f'<rect x="{left}" {bar} width="{kept * scale:.1f}" fill="{_KEPT}"/>'
            f'<rect x="{left + kept * scale:.1f}" {bar} width="{other * scale:.1f}" fill="{_DROP}"/>'
            f'<text x="{left + (kept + other) * scale + 4:.1f}" y="{y + 12}" font-size="10" fill="#6c757d">'
            f"{kept + other:,}</text>"
        )
    return "".join(parts) + "</svg>"


def _group_sizes(audit: Audit) -> str:
    if not audit.group_sizes:
        return _figure("duplicate-group sizes", None, '<p class="muted">no duplicate groups</p>', [])
    biggest = min(max(audit.group_sizes), 20)
    counts = [0] * (biggest + 1)
    for size, n in audit.group_sizes.items():
        counts[min(size, biggest)] += n
    hist = Histogram(0, 1, counts, [0] * len(counts))
    series = [("groups", _A, counts)]
    figure = _figure(
        "duplicate-group sizes (samples per group)",
        sum(counts),
        _histogram_svg(hist, series, [], "{:.0f}", True),
        series,
        "group",
    )
    keys = "".join(_count(f"groups:{size}", n, "") for size, n in audit.group_sizes.items())
    return figure.replace("</figure>", f"{keys}</figure>")


def _domains(audit: Audit, side: str) -> str:
    domains = audit.domains

    def table(title: str, names: Iterable[str]) -> str:
        rows = [
            '<tr><th>domain</th><th class="n">samples</th><th class="n">kept</th><th>top reasons</th></tr>'
        ]
        for name in names:
            outcomes = domains[name]
            reasons = ", ".join(f"{r} {n:,}" for r, n in outcomes.most_common() if r not in (KEPT, PENDING))
            rows.append(
                f'<tr><td class="url nowrap">{_host(name)}</td>'
                f'<td class="n">{_count(f"{side}domain:{name}", outcomes.total())}</td>'
                f'<td class="n">{_pct(outcomes[KEPT], outcomes.total())}</td>'
                f'<td class="cap">{_e(_cut(reasons, 400))}</td></tr>'
            )
        return f"<h3>{_e(title)}</h3><table>{''.join(rows)}</table>"

    by_rows = sorted(domains, key=lambda d: (-domains[d].total(), d))[:10]
    dropped = sorted(
        domains, key=lambda d: (-(domains[d].total() - domains[d][KEPT] - domains[d][PENDING]), d)
    )[:10]
    tables = table("most samples", by_rows)
    tables += table("most rejected or failed", dropped) if dropped != by_rows else ""
    if audit.domains_approximate:
        tables += '<p class="muted">Counts are approximate: the rarest domains were pruned.</p>'
    return tables


def _thumb(audit: Audit, uid: str | None, label: str = "no stored image") -> str:
    uri = audit.thumbnails.get(uid or "")
    if uri and uri.startswith("data:image/jpeg;base64,"):
        return f'<img class="thumb" src="{uri}" alt="">'
    return f'<div class="noimg">{_e(label)}</div>'


def _caption_of(row: dict[str, Any]) -> str | None:
    """What a row's caption is on this page: as shipped for a kept row, as given otherwise."""
    return shipped_caption(row) if row.get("status") == "success" else row.get("caption")


def _shipped(row: dict[str, Any], limit: int) -> str:
    """A kept row's caption as shipped (the tar's `.txt`) and, where it differs, the one it came from."""
    shipped, original = shipped_caption(row), row.get("caption")
    text = _e(_cut(shipped, limit)) if (shipped or "").strip() else '<i class="muted">(no caption)</i>'
    html_ = f'<div class="cap shipped">{text}</div>'
    if shipped != original:
        source = row.get("caption_source")
        how = f"caption {source} from" if source not in (None, "original") else "cleaned from"
        given = _e(_cut(original, limit)) if (original or "").strip() else "(no caption)"
        html_ += f'<div class="cap orig">{_e(how)}: {given}</div>'
    return html_


def _gallery(audit: Audit) -> str:
    tiles = []
    for row in audit.samples.get(KEPT, []):
        score = f"clip {row['clip_score']:.2f} · " if row.get("clip_score") is not None else ""
        tiles.append(
            f'<div class="tile" data-uid="{_e(row["uid"])}">{_thumb(audit, row["uid"])}'
            f"{_shipped(row, 240)}"
            f'<div class="url">{_e(score)}{_e(row["uid"][:12])}</div></div>'
        )
    note = (
        '<p class="muted">A fixed random sample (by uid hash) of the kept pairs, each with the caption '
        "it was shipped with (the tar's .txt) and, where that differs, the caption it came from.</p>"
    )
    return note + (f'<div class="gallery">{"".join(tiles)}</div>' if tiles else '<p class="muted">none</p>')


def _rejections(audit: Audit) -> str:
    blocks = []
    for reason, rows in audit.samples.items():
        if reason in (KEPT, PENDING):
            continue
        cards = "".join(_rejected_card(audit, row) for row in rows)
        count = sum(
            n
            for (s, _, r), n in audit.outcomes.items()
            if s not in ("success", PENDING) and (r or s) == reason
        )
        blocks.append(
            f"<details open><summary>{_e(reason)} <span class='muted'>({count:,})</span></summary>"
            f'<div class="rejs">{cards}</div></details>'
        )
    note = (
        '<p class="muted">Per reason, a fixed random sample (by uid hash); rejected pairs keep no image.</p>'
    )
    return note + "".join(blocks) if blocks else '<p class="muted">none was rejected or failed</p>'


def _pending(audit: Audit) -> str:
    """Rows no stage decided (the crawl did not run, or a run was cut short): neither kept nor rejected."""
    rows = audit.samples.get(PENDING, [])
    count = audit.status_counts().get(PENDING, 0)
    if not count:
        return ""
    note = (
        f'<p class="muted">{_count("pending", count, _plural(count, "sample"))} passed every stage that ran '
        "but were not decided: the stages that keep a sample (the crawl) did not run on them. They are "
        "neither kept nor rejected. A fixed random sample:</p>"
    )
    cards = "".join(_rejected_card(audit, row) for row in rows)
    return _section("Pending samples (not decided)", f'{note}<div class="rejs">{cards}</div>')


def _rejected_card(audit: Audit, row: dict[str, Any]) -> str:
    """URL, caption (and its cleaned form when different) and error; a removed copy shows the rows
    its error cites, its kept copy first."""
    caption, cleaned = row.get("caption"), row.get("caption_clean")
    text = _e(_cut(caption, 300)) if (caption or "").strip() else '<i class="muted">(no caption)</i>'
    if cleaned not in (None, caption):
        text += f'<div class="muted">cleaned: {_e(_cut(cleaned, 300)) or "(empty)"}</div>'
    return (
        f'<div class="rej" data-uid="{_e(row["uid"])}"><div>{_uid(row["uid"])} {_url(row.get("url"))}'
        f'<div class="cap">{text}</div><div class="err">{_error(row.get("error"))}</div>'
        f"{_cited(audit, row)}</div></div>"
    )


def _cited(audit: Audit, row: dict[str, Any]) -> str:
    """The rows a removed sample points to (`duplicate_of`, its group, the uids its error names),
    each with its thumbnail, URL and caption: a uid the page cites is a uid the page shows."""
    kept = row.get("duplicate_of") or row.get("dup_group") if row.get("stage") == "dedup" else None
    uids = dict.fromkeys([*([kept] if kept else []), *cited_uids(row.get("error"))])
    items = []
    for uid in uids:
        if uid == row["uid"]:
            continue
        label = "kept copy" if uid == kept else "cited"
        cited = audit.rows.get(uid)
        if cited is None:
            items.append(f'<div class="row"><div><b>{label}</b> {_uid(uid)} '
                         '<span class="muted">(not a sample of this output)</span></div></div>')  # fmt: skip
            continue
        items.append(
            f'<div class="row">{_thumb(audit, uid)}<div><b>{label}</b> {_uid(uid)} {_url(cited.get("url"))}'
            f'<div class="cap">{_e(_cut(_caption_of(cited), 200))}</div></div></div>'
        )
    return f'<div class="cited">{"".join(items)}</div>' if items else ""


def _groups(audit: Audit) -> str:
    blocks = []
    for i, rows in enumerate(audit.groups):
        kept = rows[0]
        members = "".join(
            f"<li>{_uid(r['uid'])} {_url(r.get('url'))}"
            f"<div class='cap'>{_e(_cut(_caption_of(r), 200))}</div>"
            f"<div class='muted cap'>{_e(r['status'] if r['status'] == 'success' else r.get('reason'))}"
            f"{' · ' + _error(r.get('error'), 160) if r.get('error') else ''}</div></li>"
            for r in rows
        )
        more = (audit.group_members[i] if i < len(audit.group_members) else len(rows)) - len(rows)
        if more > 0:  # the audit keeps a bounded number of members per group
            members += f'<li class="muted">and {_plural(more, "more member")}</li>'
        blocks.append(f'<div class="group">{_thumb(audit, kept["uid"])}<ol>{members}</ol></div>')
    if not blocks:
        return '<p class="muted">no duplicate groups</p>'
    return (
        '<p class="muted">The kept sample first (with the caption it was shipped with); removed copies '
        "keep no image. Errors cite members by the uid shown before each.</p>" + "".join(blocks)
    )


def _run(audit: Audit) -> str:
    models = "".join(
        f'<tr><td class="url">{_e(m)}</td><td class="n">{_count(f"model:{m}", n)}</td></tr>'
        for m, n in audit.models.items()
    )
    config = (f"<pre>{_e(yaml.safe_dump(audit.config, sort_keys=False, allow_unicode=True))}</pre>"
              if audit.config else '<p class="muted">config: not recorded</p>')  # fmt: skip
    metrics = "".join(
        f'<tr><td class="url">{_e(k)}</td><td class="n">{_e(v)}</td></tr>'
        for k, v in (audit.stats.get("metrics") or {}).items()
    )
    return (
        f"<h3>models</h3>{f'<table>{models}</table>' if models else '<p class=muted>no model scores</p>'}"
        f"{_term_guard(audit)}"
        f"<h3>config</h3>{config}"
        f"<details><summary>Beam counters</summary><table>{metrics}</table></details>"
    )


def _term_guard(audit: Audit) -> str:
    """The noise stage's precision guard: which visual concepts it trusted, with the measured
    precision of the best ones (empty when the run had no noise stage)."""
    guard = (audit.stats.get("noise") or {}).get("term_guard")
    if not isinstance(guard, dict):
        return ""
    verdict = (
        f"{guard['terms_trusted']:,} of {guard['terms_measured']:,} measured concepts trusted "
        f"(named by the clean captions in at least {guard['min_term_precision']:.0%} of "
        f"{guard['min_term_support']}+ pairs where the model found them)"
    )
    if guard.get("repair"):
        verdict += f"; repair {guard['repair']}"
    rows = "".join(
        f'<tr><td>{_e(t["lang"])}</td><td class="url">{_e(t["term"])}</td>'
        f'<td class="n">{t["precision"]:.2f}</td><td class="n">{t["support"]:,}</td></tr>'
        for t in guard.get("best_terms", [])
    )
    head = '<tr><th>lang</th><th>concept</th><th class="n">precision</th><th class="n">clean pairs</th></tr>'
    return f"<h3>caption repair guard</h3><p>{_e(verdict)}</p><table>{head}{rows}</table>"


def _count_deltas(a: Audit, b: Audit) -> str:
    def keyed(audit: Audit) -> dict[str, int]:
        counts = {f"status:{s}": n for s, n in audit.status_counts().items()}
        for (status, stage, reason), n in audit.outcomes.items():
            if status not in ("success", PENDING):
                counts[f"reason:{stage}:{reason}"] = counts.get(f"reason:{stage}:{reason}", 0) + n
        return counts

    ca, cb = keyed(a), keyed(b)
    rows = [
        '<tr><th>status / reason</th><th class="n">A</th><th class="n">B</th><th class="n">B − A</th></tr>'
    ]
    for key in sorted(ca.keys() | cb.keys(), key=lambda k: (not k.startswith("status"), k)):
        na, nb = ca.get(key, 0), cb.get(key, 0)
        delta = nb - na
        css = "pos" if delta > 0 else "neg" if delta < 0 else "muted"
        rows.append(
            f'<tr><td>{_e(key.split(":", 1)[1])}</td><td class="n">{_count("a/" + key, na)}</td>'
            f'<td class="n">{_count("b/" + key, nb)}</td><td class="n {css}">{delta:+,}</td></tr>'
        )
    return f"<table>{''.join(rows)}</table>"
