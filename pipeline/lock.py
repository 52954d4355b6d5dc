"""An exclusive lock on an output folder: two runs never write into one folder at once.

A run holds `<output>/winnow.lock` (`LOCK_FILE`) from before it claims the folder until it returns,
on every exit path (an error, Ctrl-C). The file names its holder as JSON: `host`, `pid`, `since`
and a random `token`. It is created only where none exists, in one atomic step: `O_CREAT|O_EXCL` on
a local disk, `PutObject` with `If-None-Match: *` on S3, an upload with `ifGenerationMatch=0` on
GCS. A second run into the folder, a `--retry-failed` reading it or an audit writing its report
there finds the lock and is refused (`OutputLockedError`, exit 2) with the holder named.

A launcher killed outright (SIGKILL, a lost machine) leaves its lock behind. A lock whose holder is
a process of this host that no longer exists is stale: the next run takes it over, with a warning,
replacing exactly that lock (local: under `flock` and only if the file is still the same one; S3:
`If-Match` its ETag; GCS: `ifGenerationMatch` its generation). A lock held on another host cannot
be checked from here: it is never taken over, and the message says which file to delete once that
run is known to be gone. On any other filesystem the lock is a plain create after a check, which
keeps runs apart but not two started in the same instant.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.common.errors import InputError
from transforms.common.manifest import LOCK_FILE, require_finished

LOG = logging.getLogger(__name__)
#: Attempts to take a lock that changes under us (released or taken over meanwhile).
_ATTEMPTS = 5


class OutputLockedError(InputError):
    """Another run holds the output's lock."""


Holder = dict[str, Any]


def lock_path(output_dir: str) -> str:
    return f"{output_dir.rstrip('/')}/{LOCK_FILE}"


def describe(holder: Holder) -> str:
    """`pid 123 on host-a since 2025-01-01T10:00:00Z`."""
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def is_stale(holder: Holder) -> bool:
    """Whether `holder` is a process of this host that no longer exists. A holder of another host,
    or one that cannot be read, is taken as alive."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _parse(data: bytes | None) -> Holder | None:
    try:
        found = json.loads(data or b"")
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def read_holder(output_dir: str) -> Holder | None:
    """Who holds `output_dir`'s lock (any filesystem), or None when nobody does. A lock file that
    cannot be parsed (written this instant) reads as a holder that is not named."""
    path = lock_path(output_dir)
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
    except (OSError, ValueError):  # released meanwhile
        return None
    return _parse(data) or {"host": "?", "pid": None, "since": "?"}


def check_not_locked(output_dir: str, command: str) -> None:
    """`OutputLockedError` when a live run holds `output_dir`'s lock (it is writing it now)."""
    holder = read_holder(output_dir)
    if holder is not None and not is_stale(holder):
        raise OutputLockedError(
            f"{command} {output_dir}: a run is writing it now ({describe(holder)}); "
            "wait until it has finished"
        )


class OutputLock:
    """`with OutputLock(output_dir, options):` holds the output's lock for the block (see the module).

    Raises `OutputLockedError` when another live run holds it, `InputError` when the lock cannot
    be written (the folder is not writable)."""

    def __init__(self, output_dir: str, options: PipelineOptions | None = None):
        self._output_dir = output_dir.rstrip("/")
        self._path = lock_path(self._output_dir)
        self._store = _store(self._path, options or PipelineOptions([]))
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        self.holder: Holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": now.isoformat().replace("+00:00", "Z"),
            "token": uuid.uuid4().hex,
        }
        self._version: Any = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        body = json.dumps(self.holder, sort_keys=True).encode()
        for _ in range(_ATTEMPTS):
            try:
                self._version = self._store.create(body)
            except OSError as err:
                raise InputError(f"output '{self._output_dir}' is not writable: {err}") from err
            if self._version is not None:
                return
            found = self._store.read()
            if found is None:  # released meanwhile: try again
                continue
            data, version = found
            holder = _parse(data)
            if holder is None or not is_stale(holder):
                raise self._locked(holder)
            self._version = self._store.replace(body, data, version)
            if self._version is not None:
                LOG.warning(
                    "output %s: took over the lock of a run that is gone (%s)",
                    self._output_dir,
                    describe(holder),
                )
                return
        raise self._locked(None)

    def release(self) -> None:
        """Deletes the lock if it is still this run's."""
        if self._version is None:
            return
        found = self._store.read()
        if found is not None and (_parse(found[0]) or {}).get("token") == self.holder["token"]:
            self._store.delete(found[1])
        self._version = None

    def _locked(self, holder: Holder | None) -> OutputLockedError:
        who = describe(holder) if holder else "a run that is starting"
        return OutputLockedError(
            f"output '{self._output_dir}' is locked by another run ({who}): {self._path}; wait until it "
            "has finished or write to another folder (delete that file only if no such run is alive)"
        )


class _Store:
    """One lock file: created only if absent, replaced only if unchanged. A version identifies
    what was read or written (an inode, an ETag, a generation); None from `create` or `replace`
    means another lock was there."""

    def create(self, body: bytes) -> Any: ...

    def read(self) -> tuple[bytes, Any] | None: ...

    def replace(self, body: bytes, seen: bytes, version: Any) -> Any: ...

    def delete(self, version: Any) -> None: ...


def _store(path: str, options: PipelineOptions) -> _Store:
    scheme = FileSystems.get_scheme(path)
    if scheme in (None, "file"):
        return _LocalStore(path.removeprefix("file://"))
    if scheme == "s3":
        return _S3Store(path, options)
    if scheme == "gs":
        return _GcsStore(path, options)
    return _OtherStore(path)


class _LocalStore(_Store):
    def __init__(self, path: str):
        self._path = path

    def create(self, body: bytes) -> Any:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, body)
            return os.fstat(fd).st_ino
        finally:
            os.close(fd)

    def read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self._path, "rb") as handle:
                return handle.read(), os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return None

    def replace(self, body: bytes, seen: bytes, version: Any) -> Any:
        """Removes the stale lock under `flock`, only if the path still names the file read, then
        creates this run's: of two runs taking over at once, one finds the file changed."""
        import fcntl

        with contextlib.suppress(FileNotFoundError), _opened(self._path) as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None  # another run is taking it over now
                raise
            same = os.fstat(fd).st_ino == version == os.stat(self._path).st_ino
            if not same or os.pread(fd, len(seen) + 1, 0) != seen:
                return None
            os.unlink(self._path)
        return self.create(body)

    def delete(self, version: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.split("://", 1)[1].partition("/")
    return bucket, key


class _S3Store(_Store):
    def __init__(self, path: str, options: PipelineOptions):
        from pipeline.stores import s3_client

        self._bucket, self._key = _split(path)
        self._client = s3_client(options)

    def _put(self, body: bytes, **condition: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body, **condition)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return None
            raise OSError(f"s3://{self._bucket}/{self._key}: {code or err}") from err
        except BotoCoreError as err:
            raise OSError(f"s3://{self._bucket}/{self._key}: {err}") from err
        return reply["ETag"]

    def create(self, body: bytes) -> Any:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[bytes, Any] | None:
        from botocore.exceptions import ClientError

        try:
            reply = self._client.get_object(Bucket=self._bucket, Key=self._key)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                return None
            raise
        return reply["Body"].read(), reply["ETag"]

    def replace(self, body: bytes, seen: bytes, version: Any) -> Any:
        return self._put(body, IfMatch=version)

    def delete(self, version: Any) -> None:
        self._client.delete_object(Bucket=self._bucket, Key=self._key)


class _GcsStore(_Store):
    def __init__(self, path: str, options: PipelineOptions):
        from apache_beam.io.gcp import gcsio  # installed with apache-beam[gcp]

        bucket, self._key = _split(path)
        self._bucket = gcsio.GcsIO(pipeline_options=options).client.bucket(bucket)

    def _upload(self, body: bytes, generation: int) -> Any:
        from google.api_core import exceptions

        blob = self._bucket.blob(self._key)
        try:
            blob.upload_from_string(body, if_generation_match=generation)
        except exceptions.PreconditionFailed:
            return None
        except exceptions.GoogleAPIError as err:
            raise OSError(f"gs://{self._bucket.name}/{self._key}: {err}") from err
        return blob.generation

    def create(self, body: bytes) -> Any:
        return self._upload(body, 0)

    def read(self) -> tuple[bytes, Any] | None:
        from google.api_core import exceptions

        try:
            blob = self._bucket.get_blob(self._key)
            if blob is None:
                return None
            return blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
        except (exceptions.NotFound, exceptions.PreconditionFailed):  # replaced or gone meanwhile
            return None

    def replace(self, body: bytes, seen: bytes, version: Any) -> Any:
        return self._upload(body, version)

    def delete(self, version: Any) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
            self._bucket.blob(self._key).delete(if_generation_match=version)


class _OtherStore(_Store):
    """A filesystem without conditional writes: check, then create."""

    def __init__(self, path: str):
        self._path = path

    def create(self, body: bytes) -> Any:
        if FileSystems.exists(self._path):
            return None
        with FileSystems.create(self._path) as handle:
            handle.write(body)
        return body

    def read(self) -> tuple[bytes, Any] | None:
        if not FileSystems.exists(self._path):
            return None
        with FileSystems.open(self._path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
        return data, data

    def replace(self, body: bytes, seen: bytes, version: Any) -> Any:
        FileSystems.delete([self._path])
        return self.create(body)

    def delete(self, version: Any) -> None:
        FileSystems.delete([self._path])


def check_finished(output_dir: str, command: str) -> None:
    """`InputError` when a run is writing `output_dir` now, or the run that wrote it did not
    finish (`require_finished`): `command` would read a partial output as a whole one."""
    check_not_locked(output_dir, command)
    require_finished(output_dir, command)
