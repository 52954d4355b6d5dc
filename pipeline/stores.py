"""Object-store checks made before a run starts: the bucket (`s3://`, `gs://`) exists, is reachable
and accepts writes.

Beam's filesystems report a missing or forbidden bucket late (an empty match, or a failed write
after the crawl); these checks turn it into one line naming the bucket, as an `InputError`.
"""

from __future__ import annotations

from typing import Any

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from transforms.common.errors import InputError, first_line
from transforms.common.manifest import WRITE_CHECK


def check_bucket(path: str, options: PipelineOptions) -> None:
    """`InputError` when `path` is on `s3://` or `gs://` and its bucket is missing or denied."""
    if path.startswith("gs://"):
        _check_gcs_bucket(path, options)
    if not path.startswith("s3://"):
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = path.removeprefix("s3://").split("/", 1)[0]
    client = s3_client(options)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise InputError(f"S3 bucket '{bucket}' does not exist ({path})") from err
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise InputError(f"access to S3 bucket '{bucket}' denied for these credentials ({path})") from err
        raise InputError(f"S3 bucket '{bucket}': {err} ({path})") from err
    except BotoCoreError as err:  # no credentials, endpoint unreachable
        raise InputError(f"S3 bucket '{bucket}' unreachable: {err} ({path})") from err


def s3_client(options: PipelineOptions) -> Any:
    """A boto3 S3 client with the endpoint and keys of Beam's S3 options (`--s3_endpoint_url`, …)."""
    import boto3  # installed with apache-beam[aws]

    s3 = options.view_as(S3Options)
    return boto3.client(
        "s3",
        endpoint_url=s3.s3_endpoint_url,
        region_name=s3.s3_region_name,
        aws_access_key_id=s3.s3_access_key_id,
        aws_secret_access_key=s3.s3_secret_access_key,
        aws_session_token=s3.s3_session_token,
        use_ssl=not s3.s3_disable_ssl,
        verify=s3.s3_verify,
    )


def _check_gcs_bucket(path: str, options: PipelineOptions) -> None:
    from apache_beam.io.gcp import gcsio  # installed with apache-beam[gcp]
    from google.api_core import exceptions

    bucket = path.removeprefix("gs://").split("/", 1)[0]
    try:
        found = gcsio.GcsIO(pipeline_options=options).get_bucket(bucket)
    except (exceptions.Forbidden, exceptions.Unauthorized) as err:
        raise InputError(f"access to GCS bucket '{bucket}' denied for these credentials ({path})") from err
    except exceptions.GoogleAPIError as err:
        raise InputError(f"GCS bucket '{bucket}': {first_line(err)} ({path})") from err
    if found is None:
        raise InputError(f"GCS bucket '{bucket}' does not exist ({path})")


def check_writable(output_dir: str) -> None:
    """`InputError` unless a small marker can be written to and deleted from `output_dir`."""
    marker = f"{output_dir}/{WRITE_CHECK}"
    try:
        with FileSystems.create(marker) as handle:
            handle.write(b"winnow write check\n")  # an empty multipart upload is malformed on S3
        FileSystems.delete([marker])
    except (BeamIOError, OSError, ValueError) as err:
        raise InputError(f"output '{output_dir}' is not writable: {first_line(err)}") from err
    except Exception as err:  # noqa: BLE001 - Beam's S3 client raises its own S3ClientError(Exception)
        if type(err).__name__ != "S3ClientError":
            raise
        raise InputError(f"output '{output_dir}' is not writable: {first_line(err)}") from err
