"""URLs judged and fetched in one canonical form; block entries that can never match; empty entries.

Every test drives `winnow run` as a user does, against loopback sites that log each request, so a
test can prove that a blocked URL was never asked for in any spelling.
"""

from __future__ import annotations

import csv
import random
from urllib.parse import urlsplit

from urllib3.util import parse_url

from pipeline.cli import main
from tests.conftest import TEST_OVERRIDES, read_output_rows
from tests.hostile import HostileSite
from tests.pipeline.test_cli import winnow
from transforms.common.urls import canonical_url

LISTED_PATH = "/photos/img/000000.jpg"
IDN_URL = "http://bücher.example/img/000001.jpg"  # never resolved: the screen blocks it first
NAMED_URL = "https://cdn.blocked.example/img/000002.jpg"


def _run(tmp_path, name: str, rows: list[tuple[str, str]], *settings: str, stages: str = "text,crawl,safety"):
    """`winnow run` on a CSV of (url, caption) rows: the completed process and the rows by caption."""
    listing = tmp_path / f"{name}.csv"
    with open(listing, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("url", "caption"), *rows])
    output = tmp_path / f"{name}-out"
    args = [arg for item in [*TEST_OVERRIDES, *settings] for arg in ("--set", item)]
    result = winnow("run", "--input", str(listing), "--output", str(output), "--stages", stages, *args)
    return result, (
        {row["caption"]: row for row in read_output_rows(str(output))} if result.returncode == 0 else {}
    )


def _blocklist(tmp_path, *lines: str) -> str:
    path = tmp_path / "urls.txt"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return f"safety.url_blocklist={path}"


def _refused(capsys, *args: str) -> str:
    """The one error line of a `winnow` command that must exit 2 (run in this process: no start-up)."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("winnow: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _assert_blocked(row: dict, listed: str) -> None:
    """Rejected by the URL screen before any fetch, naming the list that matched."""
    got = (row["status"], row["stage"], row["reason"], row["blocklist"], row["http_status"])
    assert got == ("rejected", "safety", "blocklisted", listed, None), row
    assert "on the URL blocklist" in row["error"], row


def test_t2_item06_dot_segment_spellings_of_a_listed_url_are_blocked(tmp_path):
    with HostileSite(robots="missing") as site:
        listed = site.url(LISTED_PATH)
        spellings = {
            "parent segment": site.url("/photos/img/../img/000000.jpg"),
            "current segment": site.url("/photos/img/./000000.jpg"),
            "escaped dots": site.url("/photos/img/%2e%2E/img/%2E/000000.jpg"),
            "above the root": site.url("/../../photos/img/000000.jpg"),
        }
        rows = [(listed, "the listed url"), *((url, how) for how, url in spellings.items())]
        rows += [(site.url("/free/a/../b/./1.jpg"), "a control"), (site.url("/free/%62/%7e2.jpg"), "another")]
        result, out = _run(tmp_path, "dots", rows, _blocklist(tmp_path, listed), "text.dedupe_urls=false")
        requested = list(site.requests)
    assert result.returncode == 0, result.stderr
    assert len(out) == len(rows)
    for caption in ["the listed url", *spellings]:
        _assert_blocked(out[caption], "url")
    assert not [path for path in requested if "000000" in path]  # never asked for, in any spelling
    # The fetch uses the same form: the server is asked for the canonical path, nothing else.
    assert out["a control"]["status"] == out["another"]["status"] == "success"
    assert sorted(path for path in requested if path.startswith("/free/")) == [
        "/free/b/1.jpg",
        "/free/b/~2.jpg",
    ]

    # The text stage's duplicate key is the same form: the spellings collapse onto one row.
    result, out = _run(tmp_path, "dedup", rows[:5], stages="text")
    assert result.returncode == 0, result.stderr
    keepers = [row for row in out.values() if row["reason"] is None]
    assert len(keepers) == 1
    assert all(
        row["reason"] == "duplicate_url" and row["duplicate_of"] == keepers[0]["uid"]
        for row in out.values()
        if row is not keepers[0]
    )


# Ways to spell a URL that every HTTP client sends as the same request (RFC 3986 section 6).
def _dot_segments(parts, rng):
    directory, name = parts["path"].rsplit("/", 1)
    detours = [
        f"{directory}/./{name}",
        f"{directory}/x/../{name}",
        f"{directory}/%2e/{name}",
        f"/..{parts['path']}",
    ]
    if directory:  # up one level and down again, the dots escaped
        detours.append(f"{directory}/%2E%2e/{directory.rsplit('/', 1)[1]}/{name}")
    parts["path"] = rng.choice(detours)


def _empty_path(parts, rng):
    if parts["path"] == "/":
        parts["path"] = ""


def _escape_unreserved(parts, rng):
    path = parts["path"]
    spots = [i for i, ch in enumerate(path) if ch.isalnum()]
    if not spots:
        return
    i = rng.choice(spots)
    code = f"%{ord(path[i]):02x}"
    parts["path"] = path[:i] + (code if rng.random() < 0.5 else code.upper()) + path[i + 1 :]


def _scheme_case(parts, rng):
    parts["scheme"] = "".join(ch.upper() if rng.random() < 0.5 else ch for ch in parts["scheme"])


def _host_case(parts, rng):
    parts["host"] = parts["host"].upper()


def _trailing_dot(parts, rng):
    if not parts["host"][-1].isdigit():
        parts["host"] += "."


def _default_port(parts, rng):
    if parts["port"] is None:
        parts["port"] = "80" if parts["scheme"].lower() == "http" else "443"
    else:
        parts["port"] = "0" + parts["port"]  # a leading zero: the same port


def _user_info(parts, rng):
    parts["user"] = rng.choice(["user@", "user:secret@", "@"])


def _fragment(parts, rng):
    parts["tail"] = rng.choice(["#", "#top", "#a/../b"])


def _empty_query(parts, rng):
    parts["tail"] = "?" + parts["tail"]


def _ipv4_spelling(parts, rng):
    if parts["host"] == "127.0.0.1":
        parts["host"] = rng.choice(["127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.01", "127.0.1"])


def _idna(parts, rng):
    if parts["host"] == "xn--bcher-kva.example":
        parts["host"] = rng.choice(["bücher.example", "BÜCHER.example", "XN--BCHER-KVA.example"])


SPELLINGS = [
    _dot_segments,
    _empty_path,
    _escape_unreserved,
    _scheme_case,
    _host_case,
    _trailing_dot,
    _default_port,
    _user_info,
    _fragment,
    _empty_query,
    _ipv4_spelling,
    _idna,
]


def spell(url: str, rng: random.Random) -> str:
    """`url` spelled with a random two to five of `SPELLINGS`."""
    split = urlsplit(url)
    parts = {
        "scheme": split.scheme,
        "user": "",
        "host": split.hostname,
        "port": str(split.port) if split.port else None,
        "path": split.path,
        "tail": "",
    }
    for change in rng.sample(SPELLINGS, rng.randint(2, 5)):
        change(parts, rng)
    port = f":{parts['port']}" if parts["port"] else ""
    return f"{parts['scheme']}://{parts['user']}{parts['host']}{port}{parts['path']}{parts['tail']}"


def test_t2_item06_generated_url_spellings_are_all_blocked_and_accounted_for(tmp_path):
    rng = random.Random(36)
    with HostileSite(robots="missing") as site:
        listed = [site.url(LISTED_PATH), canonical_url(IDN_URL), NAMED_URL, site.url("/")]
        rows = [(spell(url, rng), f"spelling {i} of {url}") for i, url in enumerate(listed * 12)]
        assert len({url for url, _ in rows}) > 40  # mostly distinct spellings
        for url, caption in rows:  # each spelling is the listed URL, and its canonical form is what is sent
            canonical = canonical_url(url)
            assert canonical == canonical_url(caption.rsplit(" of ", 1)[1]), (url, caption)
            sent = parse_url(canonical)
            assert canonical == f"{sent.scheme}://{sent.netloc}{sent.request_uri}", canonical
        controls = [(site.url(f"/free/{n}/../{n}.jpg"), f"control {n}") for n in range(3)]
        result, out = _run(
            tmp_path, "spellings", rows + controls, _blocklist(tmp_path, *listed), "text.dedupe_urls=false"
        )
        requested = list(site.requests)
    assert result.returncode == 0, result.stderr
    every = read_output_rows(str(tmp_path / "spellings-out"))
    assert len(every) == len(rows) + len(controls) and set(out) == {c for _, c in rows + controls}
    for _, caption in rows:
        _assert_blocked(out[caption], "url")
    assert [out[c]["status"] for _, c in controls] == ["success"] * len(controls)
    # Nothing but the controls (and the site's rules) was asked for.
    assert {path for path in requested if not path.startswith("/free/")} <= {
        "/robots.txt",
        "/.well-known/tdmrep.json",
    }
    assert sorted(path for path in requested if path.startswith("/free/")) == [
        f"/free/{n}.jpg" for n in range(3)
    ]

    # Without the per-row view, the text stage collapses each URL's spellings onto one row.
    result, out = _run(tmp_path, "spellings-text", rows, stages="text")
    assert result.returncode == 0, result.stderr
    kept = [row for row in out.values() if row["reason"] is None]
    assert sorted(row["caption"].rsplit(" of ", 1)[1] for row in kept) == sorted(listed)


def test_t2_item07_block_entries_match_what_they_mean_or_exit_2(tmp_path, capsys):
    # Entries that could never match are refused, naming the key and the entry.
    refused = {
        "http://blocked.example/": "write 'blocked.example'",
        "*.0.0.1": "IP address",
        "not a domain!!": "can never match",
        "ex*mple.com": "wildcard",
        "blocked.example:99999": "port '99999'",
        "blocked.example/img": "no path",
    }
    listing = tmp_path / "list.csv"
    listing.write_text("url,caption\nhttp://a.example/1.jpg,a caption\n", encoding="utf-8")
    hosts = tmp_path / "hosts.txt"
    command = ("run", "--input", str(listing), "--output", str(tmp_path / "out"))
    for entry, why in refused.items():
        error = _refused(capsys, *command, "--stages", "text", "--set", f"text.blocked_domains=[{entry!r}]")
        assert "text.blocked_domains" in error and repr(entry) in error and why in error, error
        if "://" in entry:
            continue  # in the URL blocklist, a line with a scheme is an exact URL
        hosts.write_text(f"fine.example\n{entry}\n", encoding="utf-8")
        error = _refused(
            capsys, *command, "--stages", "crawl,safety", "--set", f"safety.url_blocklist={hosts}"
        )
        assert "hosts.txt:2" in error and repr(entry) in error, error

    # Ports, wildcards and IP addresses mean what they say, in both lists.
    with HostileSite(robots="missing") as site, HostileSite(robots="missing") as other:
        port = site.base.rsplit(":", 1)[1]
        rows = [
            (site.url("/free/1.jpg"), "host on the listed port"),
            (other.url("/free/2.jpg"), "host on another port"),
            (f"http://cdn.wild.example:{port}/3.jpg", "subdomain of a wildcard"),
            ("http://wild.example/4.jpg", "the wildcard's own domain"),
        ]
        result, out = _run(
            tmp_path, "ports", rows, _blocklist(tmp_path, f"127.0.0.1:{port}", "*.wild.example")
        )
        assert result.returncode == 0, result.stderr
        _assert_blocked(out["host on the listed port"], "domain")
        assert out["host on another port"]["status"] == "success"
        _assert_blocked(out["subdomain of a wildcard"], "domain")
        _assert_blocked(out["the wildcard's own domain"], "domain")
        assert other.requests and not [p for p in site.requests if p.startswith("/free/")]

        text_rows = [(url, f"text {caption}") for url, caption in rows]
        result, out = _run(
            tmp_path, "text-ports", text_rows,
            f"text.blocked_domains=['127.1:{port}', '*.wild.example']",
            stages="text",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        reasons = {caption: row["reason"] for caption, row in out.items()}
        assert reasons == {
            "text host on the listed port": "domain_blocked",
            "text host on another port": None,
            "text subdomain of a wildcard": "domain_blocked",
            "text the wildcard's own domain": "domain_blocked",
        }


def test_t2_item08_an_empty_entries_list_is_exit_2_naming_the_key(tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("url,caption\nhttp://a.example/1.jpg,a photo of a cat\n", encoding="utf-8")
    empty = tmp_path / "metadata.json"
    command = ("run", "--input", str(listing), "--output", str(tmp_path / "out"))
    for text in ("[]", "  [ ]\n"):
        empty.write_text(text, encoding="utf-8")
        error = _refused(capsys, *command, "--stages", "text,balance", "--set", f"balance.entries={empty}")
        assert "balance.entries" in error and "metadata.json" in error and "no entries" in error, error
    error = _refused(capsys, *command, "--stages", "text,balance", "--set", "balance.entries=[]")
    assert "balance.entries" in error, error
    assert not (tmp_path / "out").exists()
    # One entry is enough: the row is matched, not rejected as unmatched.
    empty.write_text('["cat"]', encoding="utf-8")
    result, out = _run(tmp_path, "one", [("http://a.example/1.jpg", "a photo of a cat")],
                       f"balance.entries={empty}", stages="text,balance")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out["a photo of a cat"]["reason"] is None
