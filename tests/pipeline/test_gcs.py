"""Input and output on `gs://`, through Beam's GCS filesystem, against a GCS JSON API server on
loopback (`gcp-storage-emulator`, reached through `STORAGE_EMULATOR_HOST` as Google's client
library documents). Only Google's credential lookup is replaced: there is no Google account here."""

from __future__ import annotations

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from gcp_storage_emulator.server import create_server

from pipeline.config import load_config
from pipeline.jobs import run_job
from tests.conftest import TEST_OVERRIDES, free_port, shard_bytes
from transforms.common.errors import InputError
from transforms.common.manifest import MANIFEST_FILE, Manifest, read_manifest

BUCKET = "winnow-gcs-test"
GCP_ARGS = ["--project=winnow-test"]


@pytest.fixture(scope="module")
def gcs():
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        # Beam looks up Google application-default credentials (retrying for half a minute when
        # there are none); the emulator takes anonymous requests, which is what None gives.
        patch.setattr(auth._Credentials, "_credentials_init", True)
        patch.setattr(auth._Credentials, "_credentials", None)
        FileSystems.set_options(PipelineOptions(GCP_ARGS))
        yield
    server.stop()


def _read(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def test_run_reads_and_writes_gcs(sample_web, gcs, reference_run):
    with (
        FileSystems.create(f"gs://{BUCKET}/lists/urls.parquet") as handle,
        open(sample_web.urls, "rb") as source,
    ):
        handle.write(source.read())
    config = load_config(overrides=TEST_OVERRIDES)
    stats = run_job(config, [f"gs://{BUCKET}/lists/*.parquet"], f"gs://{BUCKET}/out", beam_args=GCP_ARGS)
    expected = shard_bytes(reference_run.dir)
    listed = FileSystems.match([f"gs://{BUCKET}/out/**"])[0].metadata_list
    names = sorted(m.path.removeprefix(f"gs://{BUCKET}/out/") for m in listed)
    assert sorted(set(names) - {"stats.json", "report.html", "audit.json", MANIFEST_FILE}) == sorted(expected)
    # The manifest names every file the run wrote, and nothing else.
    assert read_manifest(f"gs://{BUCKET}/out") == Manifest(
        "complete", tuple(sorted(set(names) - {MANIFEST_FILE}))
    )
    for name, data in expected.items():
        assert _read(f"gs://{BUCKET}/out/{name}") == data, name
    assert stats["samples"] == reference_run.stats["samples"]


def test_a_missing_gcs_bucket_is_named(sample_web, gcs):
    config = load_config(overrides=TEST_OVERRIDES)
    with pytest.raises(InputError, match="GCS bucket 'no-such-bucket' does not exist"):
        run_job(config, [sample_web.urls], "gs://no-such-bucket/out", beam_args=GCP_ARGS)
