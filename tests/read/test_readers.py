"""URL-list readers: every format, folders and globs, bad rows kept with a reason."""

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import BATCH_SCHEMA, Status, make_uid
from transforms.read.config import InputConfig
from transforms.read.lists import InputError, check_input, expand_inputs, file_batches, rows_to_samples

ROWS = [
    {"url": "http://a.example/1.jpg", "caption": "a red circle", "license": "cc-by"},
    {"url": "http://a.example/2.jpg", "caption": "ein blauer Stern", "license": None},
    {"url": "", "caption": "no url here", "license": "x"},
]
CONFIG = InputConfig(save_additional_columns=("license",))


def write_rows(path, fmt):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif fmt in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(
                handle, ["url", "caption", "license"], delimiter="," if fmt == "csv" else "\t"
            )
            writer.writeheader()
            writer.writerows({k: (v if v is not None else "") for k, v in row.items()} for row in ROWS)
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in ROWS)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in ROWS)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "jsonl.gz"])
def test_every_format_gives_the_same_samples(tmp_path, fmt):
    path = tmp_path / f"list.{fmt}"
    write_rows(path, fmt)
    samples = list(rows_to_samples(str(path), CONFIG))
    assert [s.url for s in samples] == ["http://a.example/1.jpg", "http://a.example/2.jpg", None]
    assert samples[0].uid == make_uid("http://a.example/1.jpg", "a red circle")
    assert samples[0].extra == {"license": "cc-by"}
    assert samples[0].status == Status.PENDING
    missing = samples[2]
    assert (missing.status, missing.reason, missing.stage) == (Status.FAILED, "missing_url", "read")
    assert missing.caption == "no url here"
    # Counted from 1: the Parquet row, the line of a text file (a CSV/TSV header is line 1).
    where = {"parquet": "row 3", "csv": "line 4", "tsv": "line 4"}.get(fmt, "line 3")
    assert f"{where} has no value in 'url'" in missing.error


def test_uid_is_stable_and_depends_on_url_and_caption():
    assert make_uid("u", "c") == make_uid("u", "c")
    assert len(make_uid("u", "c")) == 32
    assert len({make_uid("u", "c"), make_uid("u", "d"), make_uid("v", "c"), make_uid("uc", "")}) == 4


def test_plain_text_list(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("http://a.example/1.jpg\n\nhttp://a.example/2.png\n")
    samples = list(rows_to_samples(str(path), InputConfig(caption_col="")))
    assert [s.url for s in samples] == ["http://a.example/1.jpg", "http://a.example/2.png"]
    assert all(s.caption is None for s in samples)


def test_custom_columns(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"link": ["http://x/1.jpg"], "alt": ["hello"]}), path)
    [sample] = rows_to_samples(str(path), InputConfig(url_col="link", caption_col="alt"))
    assert (sample.url, sample.caption) == ("http://x/1.jpg", "hello")


def test_bad_json_line_is_kept_as_a_failed_row(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"url": "http://x/1.jpg", "caption": "ok"}\n{"url": broken\n[1, 2]\n')
    samples = list(rows_to_samples(str(path), InputConfig()))
    assert [s.reason for s in samples] == [None, "unparseable_row", "unparseable_row"]
    assert "line 2 is not valid JSON" in samples[1].error
    assert "line 3 is not a JSON object" in samples[2].error
    assert len({s.uid for s in samples}) == 3


def test_folder_glob_and_hidden_files(tmp_path):
    for name in ("b.parquet", "a.parquet", "_SUCCESS", ".hidden.parquet"):
        write_rows(tmp_path / name, "parquet")
    expected = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert expand_inputs([str(tmp_path)]) == expected
    assert expand_inputs([str(tmp_path / "*.parquet")]) == expected
    assert expand_inputs([str(tmp_path / "a.parquet"), str(tmp_path / "*.parquet")]) == expected


def test_nothing_matches(tmp_path):
    with pytest.raises(InputError, match="no input files match"):
        expand_inputs([str(tmp_path / "none-*.csv")])


def test_missing_url_column_names_file_and_columns(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("link,caption\nhttp://x/1.jpg,hi\n")
    with pytest.raises(InputError) as err:
        check_input(str(path), InputConfig())
    assert str(path) in str(err.value) and "['url']" in str(err.value) and "link" in str(err.value)


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "list.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="list.parquet: cannot read input file"):
        check_input(str(path), InputConfig())


def test_unknown_suffix_asks_for_input_format(tmp_path):
    path = tmp_path / "list.dat"
    path.write_text("x")
    with pytest.raises(InputError, match="input.input_format"):
        check_input(str(path), InputConfig())


def test_rows_come_in_batches_of_the_set_size_and_keep_their_order(tmp_path):
    path = tmp_path / "list.jsonl"
    rows = [{"url": f"http://x/{i}.jpg", "caption": f"c{i}"} for i in range(10)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    batches = list(file_batches(str(path), InputConfig(), batch_rows=4))
    assert [b.num_rows for b in batches] == [4, 4, 2]
    assert [u for b in batches for u in b.column("url").to_pylist()] == [r["url"] for r in rows]
    assert all(b.schema == BATCH_SCHEMA for b in batches)


def test_text_that_is_not_valid_unicode_is_a_failed_row_never_replaced(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"url": "http://x/1.jpg", "caption": "bad \\ud800 half"}\n')
    [sample] = rows_to_samples(str(path), InputConfig())
    assert (sample.status, sample.reason, sample.caption) == (Status.FAILED, "undecodable_row", None)
    assert "line 1: 'caption' is text with an unpaired surrogate" in sample.error
