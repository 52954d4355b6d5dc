"""Input and output on S3, through Beam's S3 filesystem, against a real S3 API server on loopback."""

from __future__ import annotations

import ast
import io
import os
import tarfile

import boto3
import moto.settings
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.jobs import run_job
from tests.conftest import TEST_OVERRIDES, shard_bytes
from transforms.common.errors import InputError
from transforms.common.manifest import MANIFEST_FILE, Manifest, read_manifest

BUCKET = "winnow-test"


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_run_reads_and_writes_s3(sample_web, s3, reference_run):
    endpoint, client = s3
    with open(sample_web.urls, "rb") as handle:
        client.put_object(Bucket=BUCKET, Key="lists/urls.parquet", Body=handle.read())
    beam_args = [
        f"--s3_endpoint_url={endpoint}",
        "--s3_access_key_id=testing",
        "--s3_secret_access_key=testing",
        "--s3_region_name=us-east-1",
    ]
    config = load_config(overrides=TEST_OVERRIDES)
    stats = run_job(config, [f"s3://{BUCKET}/lists/*.parquet"], f"s3://{BUCKET}/out", beam_args=beam_args)

    expected = shard_bytes(reference_run.dir)

    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"]
    names = sorted(obj["Key"].removeprefix("out/") for obj in listed)
    # Everything but the stats (timings), the report (which shows them) and the audit's aggregates
    # (audit.json, tested in tests/scale/test_scale_audit.py) is byte-identical.
    assert sorted(set(names) - {"stats.json", "report.html", "audit.json", MANIFEST_FILE}) == sorted(expected)
    # The manifest names every file the run wrote, and nothing else.
    assert read_manifest(f"s3://{BUCKET}/out") == Manifest(
        "complete", tuple(sorted(set(names) - {MANIFEST_FILE}))
    )
    assert "stats.json" in names and any(name.startswith("index/") for name in expected)
    for name, data in expected.items():
        body = client.get_object(Bucket=BUCKET, Key=f"out/{name}")["Body"].read()
        assert body == data, name
    first_tar = next(n for n in names if n.endswith(".tar"))
    body = client.get_object(Bucket=BUCKET, Key=f"out/{first_tar}")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        assert archive.getnames()
    parquet = client.get_object(Bucket=BUCKET, Key="out/00000.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(parquet)).num_rows > 0
    assert stats["samples"] == sum(
        pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=f"out/{n}")["Body"].read())).num_rows
        for n in names
        if n.endswith(".parquet") and "/" not in n  # shard metadata, not the embedding metadata
    )


def _s3_args(endpoint: str, key: str = "testing", secret: str = "testing") -> list[str]:
    return [
        f"--s3_endpoint_url={endpoint}",
        f"--s3_access_key_id={key}",
        f"--s3_secret_access_key={secret}",
        "--s3_region_name=us-east-1",
    ]


def test_a_missing_bucket_is_named_before_anything_runs(sample_web, s3, capsys):
    endpoint, _ = s3
    config = load_config(overrides=TEST_OVERRIDES)
    with pytest.raises(InputError, match="S3 bucket 'no-such-bucket' does not exist"):
        run_job(config, [sample_web.urls], "s3://no-such-bucket/out", beam_args=_s3_args(endpoint))
    with pytest.raises(
        InputError, match="S3 bucket 'missing-input' does not exist .*s3://missing-input/a.parquet"
    ):
        run_job(config, ["s3://missing-input/a.parquet"], "s3://winnow-test/x", beam_args=_s3_args(endpoint))
    # The CLI says it in one line, with the usage-error exit code.
    code = main(
        ["run", "--input", sample_web.urls, "--output", "s3://no-such-bucket/out", *_s3_args(endpoint)]
    )
    assert code == 2
    assert "S3 bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_denied_credentials_are_named(sample_web, s3, monkeypatch):
    endpoint, _ = s3
    # A real IAM user with no permissions, then the server enforces IAM (moto's switch for it).
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader-without-rights")
    key = iam.create_access_key(UserName="reader-without-rights")["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    config = load_config(overrides=TEST_OVERRIDES)
    args = _s3_args(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    with pytest.raises(InputError, match=f"access to S3 bucket '{BUCKET}' denied"):
        run_job(config, [sample_web.urls], f"s3://{BUCKET}/denied", beam_args=args)
    # Unknown keys are refused the same way.
    with pytest.raises(InputError, match=f"access to S3 bucket '{BUCKET}' denied"):
        run_job(
            config, [sample_web.urls], f"s3://{BUCKET}/denied", beam_args=_s3_args(endpoint, "AKIAUNKNOWN")
        )


def test_a_wat_archive_on_s3_is_harvested(sample_web, s3, tmp_path):
    from sampleweb.pages import write_pages
    from tests.conftest import read_output_rows

    endpoint, client = s3
    archives = write_pages(sample_web.dir, sample_web.base_url)
    with open(archives["wat"], "rb") as handle:
        client.put_object(Bucket=BUCKET, Key="crawl/segment/wat/pages.warc.wat.gz", Body=handle.read())
    code = main(
        ["run", "--input", f"s3://{BUCKET}/crawl/*/wat/*.warc.wat.gz", "--input-format", "wat",
         "--output", str(tmp_path), "--set", "run.stages=[]", *_s3_args(endpoint)]
    )  # fmt: skip
    assert code == 0
    planted = pq.read_table(archives["planted"]).to_pylist()
    want = sorted((r["url"], r["caption"]) for r in planted if r["mode"] == "wat")
    assert sorted((r["url"], r["caption"]) for r in read_output_rows(str(tmp_path))) == want


def test_a_model_folder_on_s3_is_copied_once_per_process_and_removed_at_exit(s3, tmp_path):
    """The model, its preprocessing and its tokenizer read one local copy, gone when the process ends."""
    import subprocess
    import sys
    from pathlib import Path

    from transforms.embed.clip import SHIPPED_MODELS_DIR

    endpoint, client = s3
    for path in (SHIPPED_MODELS_DIR / "winnow-tiny-clip").iterdir():
        client.put_object(Bucket=BUCKET, Key=f"models/tiny/{path.name}", Body=path.read_bytes())
    code = f"""
import glob, os
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
FileSystems.set_options(PipelineOptions({_s3_args(endpoint)!r}))
from transforms.embed.clip import load_clip, model_config, preprocessing
from transforms.embed.config import EmbedConfig
config = EmbedConfig(model="s3://{BUCKET}/models/tiny")
model, _, tokenizer = load_clip(config)
preprocessing(config)
model_config(config)
load_clip(config)
print(sorted(glob.glob(os.path.join(os.environ["TMPDIR"], "winnow-model-*"))))
print(sum(p.numel() for p in model.parameters()))
"""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    copies, parameters = done.stdout.strip().splitlines()[-2:]
    copies = ast.literal_eval(copies)  # a list printed by the child
    assert len(copies) == 1, copies  # four loads, one copy
    assert int(parameters) > 10_000_000  # the real weights were read from the copy
    assert not Path(copies[0]).exists()  # removed when the process exited
    assert list(tmp_path.glob("winnow-model-*")) == []


def test_a_pool_on_s3_is_curated_as_the_same_pool_on_disk(sample_web, s3, tmp_path):
    """A DataComp-shaped pool's tars, Parquet and `.npz` read from S3: the same selection, the
    embeddings reused from the `.npz` on S3, as from the same files on disk."""
    from pathlib import Path

    from sampleweb.pool import write_datacomp_pool

    endpoint, client = s3
    pool = tmp_path / "pool"
    write_datacomp_pool(sample_web.dir, str(pool), shards=2, seed=5)
    for path in sorted(pool.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"pool/{path.name}", Body=path.read_bytes())
    config = str(Path(__file__).parents[2] / "deploy" / "configs" / "datacomp-clip-filter.yaml")
    s3_args = [
        f"--s3_endpoint_url={endpoint}",
        "--s3_access_key_id=testing",
        "--s3_secret_access_key=testing",
        "--s3_region_name=us-east-1",
    ]
    outcome = {}
    for name, pattern, extra in (("s3", f"s3://{BUCKET}/pool/*.tar", s3_args), ("disk", f"{pool}/*.tar", [])):
        output = tmp_path / name
        args = [
            "run",
            "--config",
            config,
            "--input",
            pattern,
            "--output",
            str(output),
            "--set",
            "output.index=false",
        ]
        assert main([*args, *extra]) == 0
        rows = [row for p in sorted(output.glob("[0-9]*.parquet")) for row in pq.read_table(p).to_pylist()]
        outcome[name] = {
            r["uid"]: (r["status"], r["reason"], r["clip_score"], r["embedding_source"]) for r in rows
        }
    assert outcome["s3"] == outcome["disk"]
    kept = [v for v in outcome["s3"].values() if v[0] == "success"]
    assert kept and {v[3] for v in kept} <= {f"pool:0000000{i}.npz#l14_img,l14_txt" for i in (0, 1)}


def test_safety_lists_are_read_from_s3(s3):
    """The blocklists are read as every input is: through Beam's filesystems, here a real S3 API."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.safety import SafetyConfig, read_blocklists

    endpoint, client = s3
    pdq = "ab" * 32
    files = {
        "safety/urls.txt": "https://blocked.example/a.jpg\nbad.example\n",
        "safety/digests.txt": "# md5\nd41d8cd98f00b204e9800998ecf8427e\n",
        "safety/pdq.txt": f"{pdq}\n",
    }
    for key, text in files.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=text.encode())
    FileSystems.set_options(PipelineOptions(_s3_args(endpoint)))
    config = SafetyConfig(*(f"s3://{BUCKET}/{key}" for key in files))
    lists = read_blocklists(config)
    assert lists.urls is not None and lists.urls.match("https://BLOCKED.example:443/a.jpg#x") == "url"
    assert (
        lists.urls.match("http://cdn.bad.example/b.png") == "domain"
        and lists.urls.match("http://ok.example/") is None
    )
    assert lists.digests == {"md5": frozenset({"d41d8cd98f00b204e9800998ecf8427e"})}
    assert lists.match_pdq(pdq) is not None and lists.match_pdq("00" * 32) is None
