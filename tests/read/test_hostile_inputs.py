"""Hostile URL lists: every reader format, malformed on purpose, read by `winnow run --stages text`.

The promise: every input record ends in exactly one output row, read or failed with a reason, and
a file that cannot be opened at all is an exit-2 error naming it. How each format counts a record:

- Parquet: a row; damage after the footer is one more record (`unreadable_file`), in place of
  the rows of the damaged row group and after it;
- CSV: a non-blank line after the header, except that a properly quoted field may span lines
  (the record is then those lines); an unclosed quote is a record of its own line;
- TSV: a non-blank line after the header (no quote processing);
- JSONL, txt: a non-blank line;
- a `.gz`/`.bz2` file: the records of its text, and compressed data that ends early is one more
  record (`truncated_file`) after the complete lines before it;
- an empty file, or a header without rows, has no record.

One run reads a folder of such files (with a subfolder); each test checks its files' rows.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import os
import tarfile
import zlib
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import Sample, Status, make_uid
from tests.conftest import read_output_rows
from tests.pipeline.test_cli import assert_user_error, winnow
from transforms.common.errors import InputError
from transforms.read.config import InputConfig
from transforms.read.lists import check_input, rows_to_samples
from transforms.write.shards import tar_bytes, tar_members

HOST = "http://h.example"


def url(name: str, n: int) -> str:
    return f"{HOST}/{name.split('.')[0]}/{n}.jpg"


def lines(name: str, *rows: str, header: str = "url,caption", encoding: str = "utf-8") -> bytes:
    """A text list: `header`, then `rows` with `{u1}`, `{u2}`… standing for the file's URLs."""
    urls = {f"u{n}": url(name, n) for n in range(1, 40)}
    return "".join(line.format(**urls) + "\n" for line in (header, *rows)).encode(encoding)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def many(name: str, count: int, sep: str = ",") -> bytes:
    rows = "".join(f"{url(name, n)}{sep}caption number {n} of a long list\n" for n in range(count))
    return f"url{sep}caption\n{rows}".encode()


def complete_lines(compressed: bytes, decompress: Callable[[bytes], bytes]) -> int:
    """Lines of a truncated stream that can be read in full (what a reader may keep)."""
    return decompress(compressed).count(b"\n")


def gunzip_partial(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def bunzip_partial(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def damaged_parquet(path: str, name: str) -> None:
    """Ten rows in two row groups; the second group's page header overwritten."""
    rows = [{"url": url(name, n), "caption": f"caption number {n}"} for n in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=5, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 16)


LATIN1 = "url,caption\n{u1},Café crème au lait\n{u2},Une forêt près de la rivière\n{u3},Été à Genève\n"
CSV_TRUNCATED = gzip.compress(many("csv_truncated", 3000), mtime=0)
# bz2 blocks of 100 kB: half of the file holds complete blocks.
TXT_TRUNCATED = bz2.compress("".join(f"{url('txt_truncated', n)}\n" for n in range(9000)).encode(), 1)
JSONL_TRUNCATED = gzip.compress(
    "".join(
        json.dumps({"url": url("jsonl_truncated", n), "caption": f"c {n}"}) + "\n" for n in range(3000)
    ).encode(),
    mtime=0,
)

#: name → (bytes, the read-stage reasons of its records; None: read fine).
FILES: dict[str, tuple[bytes, list[str | None]]] = {
    "csv_quotes.csv": (
        lines(
            "csv_quotes",
            "{u1},a plain caption",
            '{u2},"a quote that is never closed',
            "{u3},the next row",
            '{u4},"a quoted caption, with a comma"',
            '{u5},"a caption on',
            'two lines"',
            "{u6},the last row",
        ),
        [None, "unparseable_row", None, None, None, None],
    ),
    "csv_eof_quote.csv": (
        lines("csv_eof_quote", "{u1},fine", '{u2},"open to the end', "and some text"),
        [None, "unparseable_row", "unparseable_row"],
    ),
    "csv_bom.csv": (codecs.BOM_UTF8 + lines("csv_bom", "{u1},one\r", "{u2},two\r"), [None, None]),
    "csv_latin1.csv": (
        LATIN1.format(**{f"u{n}": url("csv_latin1", n) for n in (1, 2, 3)}).encode("latin-1"),
        [None, None, None],
    ),
    "csv_mixed.csv": (
        lines("csv_mixed", "{u1},Café in UTF-8") + f"{url('csv_mixed', 2)},Über\n".encode("latin-1"),
        [None, "undecodable_row"],
    ),
    "csv_fields.csv": (
        lines("csv_fields", "{u1},too,many", "{u2}", ",no url", "{u4},fine"),
        ["unparseable_row", "unparseable_row", "missing_url", None],
    ),
    "csv_big.csv": (lines("csv_big", "{u1}," + "x" * 140_000, "{u2},fine"), ["field_too_large", None]),
    "csv_empty.csv": (b"", []),
    "csv_header_only.csv": (b"url,caption\n", []),
    "csv_truncated.csv.gz": (
        truncated(CSV_TRUNCATED),
        [None] * (complete_lines(truncated(CSV_TRUNCATED), gunzip_partial) - 1) + ["truncated_file"],
    ),
    "tsv_quotes.tsv": (
        lines(
            "tsv_quotes",
            '{u1}\t"Quoted start of a caption',
            '{u2}\tsays "hi',
            "{u3}\tplain",
            header="url\tcaption",
        ),
        [None, None, None],
    ),
    "tsv_fields.tsv.gz": (
        gzip.compress(lines("tsv_fields", "{u1}\tone\textra", "{u2}\ttwo", header="url\tcaption"), mtime=0),
        ["unparseable_row", None],
    ),
    "jsonl_bad.jsonl": (
        b"".join(
            json.dumps(row).encode() + b"\n"
            for row in [
                {"url": url("jsonl_bad", 1), "caption": "fine"},
                {"url": url("jsonl_bad", 2), "caption": {"en": "an object"}},
                {"url": url("jsonl_bad", 3), "caption": ["a", "list"]},
                {"caption": "no url"},
                [1, 2],
            ]
        )
        + b'{"url": broken\n\n',
        [None, "caption_not_text", "caption_not_text", "missing_url", "unparseable_row", "unparseable_row"],
    ),
    "jsonl_latin1.jsonl": (
        f'{{"url": "{url("jsonl_latin1", 1)}", "caption": "ok"}}\n'.encode()
        + f'{{"url": "{url("jsonl_latin1", 2)}", "caption": "Café"}}\n'.encode("latin-1"),
        [None, "undecodable_row"],
    ),
    "jsonl_truncated.jsonl.gz": (
        truncated(JSONL_TRUNCATED),
        [None] * complete_lines(truncated(JSONL_TRUNCATED), gunzip_partial) + ["truncated_file"],
    ),
    "jsonl_empty.jsonl.gz": (gzip.compress(b"", mtime=0), []),
    "txt_list.txt": (
        codecs.BOM_UTF8 + f"{url('txt_list', 1)}\n\n  \n{url('txt_list', 2)}\r\n".encode(),
        [None, None],
    ),
    "txt_truncated.txt.bz2": (
        truncated(TXT_TRUNCATED),
        [None] * complete_lines(truncated(TXT_TRUNCATED), bunzip_partial) + ["truncated_file"],
    ),
    "sub/deeper/jsonl_nested.jsonl": (
        json.dumps({"url": url("jsonl_nested", 1), "caption": {"text": "nested"}}).encode() + b"\n",
        ["caption_not_text"],
    ),
}
PARQUET: dict[str, list[str | None]] = {
    "parquet_damaged.parquet": [None] * 5 + ["unreadable_file"],
    "parquet_empty.parquet": [],
    "parquet_nested.parquet": ["caption_not_text", None],
}
#: Never read: skipped names (each lacks the url column, so reading it would fail the run).
SKIPPED = ["_drafts/list.csv", ".hidden.csv", "sub/_tmp.csv"]


def write_inputs(folder: str) -> None:
    for name, (data, _) in FILES.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
    damaged_parquet(os.path.join(folder, "parquet_damaged.parquet"), "parquet_damaged")
    empty = pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())})
    pq.write_table(empty, os.path.join(folder, "parquet_empty.parquet"))
    # A caption column of lists: a list is no caption.
    nested = pa.table(
        {
            "url": [url("parquet_nested", 1), url("parquet_nested", 2)],
            "caption": pa.array([["two", "words"], None], pa.list_(pa.string())),
        }
    )
    pq.write_table(nested, os.path.join(folder, "parquet_nested.parquet"))
    for name in SKIPPED:
        os.makedirs(os.path.dirname(os.path.join(folder, name)) or folder, exist_ok=True)
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("link\nhttp://x/skipped.jpg\n")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    """The folder of hostile files, read by one `winnow run --stages text`; its output rows."""
    folder = str(tmp_path_factory.mktemp("hostile"))
    write_inputs(folder)
    output = str(tmp_path_factory.mktemp("hostile-out"))
    result = winnow("run", "--input", folder, "--output", output, "--stages", "text")
    assert result.returncode == 0, result.stderr
    return folder, read_output_rows(output)


def rows_of(run: tuple[str, list[dict]], name: str) -> list[dict]:
    """The output rows of one input file: its URLs, or an error that names it."""
    folder, rows = run
    path = os.path.join(folder, name)
    prefix = f"{HOST}/{os.path.basename(name).split('.')[0]}/"
    return [
        r for r in rows if (r["url"] or "").startswith(prefix) or (r["error"] or "").startswith(path + ":")
    ]


def read_reason(row: dict) -> str | None:
    return row["reason"] if row["stage"] == "read" else None


def expected_reasons(name: str) -> list[str | None]:
    return FILES[name][1] if name in FILES else PARQUET[name]


@pytest.mark.parametrize("name", [*FILES, *PARQUET])
def test_every_record_is_one_row_with_its_reason(hostile_run, name):
    rows = rows_of(hostile_run, name)
    assert sorted(map(str, map(read_reason, rows))) == sorted(map(str, expected_reasons(name)))
    folder = hostile_run[0]
    for row in rows:
        if row["stage"] == "read":
            assert row["status"] == "failed"
            assert row["error"].startswith(os.path.join(folder, name) + ": ")
            assert " line " in row["error"] or " row " in row["error"], row["error"]


def test_output_rows_equal_input_records(hostile_run):
    _, rows = hostile_run
    assert len(rows) == sum(len(expected_reasons(name)) for name in [*FILES, *PARQUET])
    assert len({row["uid"] for row in rows}) == len(rows)
    assert not any("\ufffd" in (row["caption"] or "") for row in rows)


def by_url(rows: list[dict]) -> dict[str, dict]:
    return {row["url"]: row for row in rows if row["url"]}


def test_item04_tsv_quote_never_merges_rows(hostile_run):
    tsv = by_url(rows_of(hostile_run, "tsv_quotes.tsv"))
    assert [tsv[url("tsv_quotes", n)]["caption"] for n in (1, 2, 3)] == [
        '"Quoted start of a caption',
        'says "hi',
        "plain",
    ]
    rows = rows_of(hostile_run, "csv_quotes.csv")
    csv_rows = by_url(rows)
    assert csv_rows[url("csv_quotes", 3)]["caption"] == "the next row"
    assert csv_rows[url("csv_quotes", 4)]["caption"] == "a quoted caption, with a comma"
    assert csv_rows[url("csv_quotes", 5)]["caption"] == "a caption on\ntwo lines"
    assert url("csv_quotes", 2) not in csv_rows
    [bad] = [row for row in rows if row["reason"] == "unparseable_row"]
    assert bad["error"].endswith("csv_quotes.csv: line 3 has a quote that is not closed")


def test_item07_latin1_csv_is_decoded_not_replaced(hostile_run, tmp_path):
    latin = by_url(rows_of(hostile_run, "csv_latin1.csv"))
    assert latin[url("csv_latin1", 1)]["caption"] == "Café crème au lait"
    assert latin[url("csv_latin1", 3)]["caption"] == "Été à Genève"
    [undecodable] = [r for r in rows_of(hostile_run, "csv_mixed.csv") if r["reason"] == "undecodable_row"]
    assert "line 3 is not UTF-8" in undecodable["error"] and "input.encoding" in undecodable["error"]
    # The charset a user names is used as named.
    path = tmp_path / "list.csv"
    path.write_bytes("url,caption\nhttp://x/1.jpg,Über\n".encode("latin-1"))
    [sample] = rows_to_samples(str(path), InputConfig(encoding="latin-1"))
    assert (sample.status, sample.caption) == (Status.PENDING, "Über")
    with pytest.raises(ValueError, match="input.encoding"):
        InputConfig(encoding="no-such-charset")


def test_item14_extra_columns_never_vanish_from_the_tar_json(hostile_run):
    extra = {"status": "cc-by", "uid": "theirs", "key": 7, "width": "wide", "license": "cc0"}
    sample = Sample(uid=make_uid("http://x/1.jpg", "c"), url="http://x/1.jpg", caption="c", extra=extra)
    sample.status, sample.image, sample.image_ext, sample.width = Status.SUCCESS, b"\xff\xd8", "jpg", 32
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(tar_members([sample])))) as archive:
        meta = json.loads(archive.extractfile(f"{sample.uid}.json").read())
    assert meta["extra"] == extra
    assert (meta["status"], meta["uid"], meta["width"]) == ("success", sample.uid, 32)
    assert meta["license"] == "cc0"  # img2dataset's top-level key where it collides with nothing
    # A folder is read with its subfolders (names starting with . or _ skipped, as at the top),
    # and a JSON object as a caption is a failed row, never its Python repr.
    [nested] = rows_of(hostile_run, "sub/deeper/jsonl_nested.jsonl")
    assert (nested["reason"], nested["caption"]) == ("caption_not_text", None)
    assert "'caption' is an object, not text" in nested["error"]
    assert not any("skipped" in (row["url"] or "") for row in hostile_run[1])


def test_item17_damaged_files_keep_their_rows_and_name_the_file(hostile_run):
    parquet = rows_of(hostile_run, "parquet_damaged.parquet")
    assert sorted(r["url"] for r in parquet if r["url"]) == [url("parquet_damaged", n) for n in range(5)]
    [damage] = [r for r in parquet if r["reason"] == "unreadable_file"]
    assert "parquet_damaged.parquet: cannot read from row 6 on" in damage["error"]
    [big] = [r for r in rows_of(hostile_run, "csv_big.csv") if r["reason"] == "field_too_large"]
    assert "csv_big.csv: line 2" in big["error"]
    gz = rows_of(hostile_run, "csv_truncated.csv.gz")
    [cut] = [r for r in gz if r["reason"] == "truncated_file"]
    assert "csv_truncated.csv.gz: the compressed data ends early" in cut["error"]
    kept = sorted(int(r["url"].rsplit("/", 1)[1].split(".")[0]) for r in gz if r["url"])
    assert kept == list(range(len(kept))) and 0 < len(kept) < 3000


def test_item18_bom_and_line_numbers_from_one(hostile_run):
    bom = by_url(rows_of(hostile_run, "csv_bom.csv"))
    assert [bom[url("csv_bom", n)]["caption"] for n in (1, 2)] == ["one", "two"]
    failed = [r for r in rows_of(hostile_run, "csv_fields.csv") if r["stage"] == "read"]
    errors = sorted(r["error"].rsplit(": ", 1)[1] for r in failed)
    assert errors == [
        "line 2 has 3 fields, the header has 2",
        "line 3 has 1 fields, the header has 2",
        "line 4 has no value in 'url'",
    ]


def test_item06_missing_caption_column_is_an_error(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,text\nhttp://x/a.jpg,hello\n")
    result = winnow("run", "--input", str(path), "--output", str(tmp_path / "out"), "--stages", "text")
    assert_user_error(
        result, "list.csv", "missing column(s) ['caption']", "['url', 'text']", "input.caption_col"
    )
    assert not (tmp_path / "out" / "00000.parquet").exists()
    # An empty caption_col is the way to read a list without captions.
    [sample] = rows_to_samples(str(path), InputConfig(caption_col=""))
    assert (sample.url, sample.caption, sample.status) == ("http://x/a.jpg", None, Status.PENDING)


def test_item18_missing_extra_column_names_save_additional_columns(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,caption\nhttp://x/a.jpg,hello\n")
    result = winnow(
        "run", "--input", str(path), "--output", str(tmp_path / "out"), "--stages", "text",
        "--set", "input.save_additional_columns=[license]",
    )  # fmt: skip
    assert_user_error(result, "list.csv", "['license']", "(see input.save_additional_columns)")
    assert "input.url_col" not in result.stderr


def test_a_file_that_cannot_be_opened_is_exit_2_naming_it(tmp_path):
    path = tmp_path / "list.csv.gz"
    path.write_bytes(b"url,caption\nthis is not gzip\n")
    result = winnow("run", "--input", str(path), "--output", str(tmp_path / "out"), "--stages", "text")
    assert_user_error(result, "list.csv.gz", "cannot read", "Not a gzipped file")


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("utf16.csv", "url,caption\n".encode("utf-16"), "UTF-16"),
        ("header.csv", b'url,"caption\n', "cannot read the header"),
        ("cut.jsonl.gz", gzip.compress(b'{"url": "http://x/1.jpg"}\n')[:15], "cannot read input file"),
    ],
)
def test_unreadable_starts_name_the_file(tmp_path, name, data, fragment):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError, match=fragment) as err:
        check_input(str(path), InputConfig())
    assert str(err.value).startswith(str(path) + ": ")


def test_a_file_damaged_before_its_first_line_is_one_row_when_the_run_reads_it(tmp_path):
    # Past the files checked before the run, such a file is read by the pipeline: one row says so.
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(gzip.compress(b"http://x/1.jpg\n" * 100, mtime=0)[:15])
    [sample] = rows_to_samples(str(path), InputConfig())
    assert (sample.status, sample.stage, sample.reason) == (Status.FAILED, "read", "truncated_file")
    assert sample.error.startswith(f"{path}: cannot read input file: the compressed data ends early")
    with pytest.raises(InputError, match="cut.txt.gz: cannot read input file"):
        check_input(str(path), InputConfig())
