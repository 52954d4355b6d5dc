"""The output manifest: which files in an output folder Winnow wrote, so it never deletes any other.

Every output folder holds `winnow-manifest.json`:

    {"state": "running" | "complete", "files": ["00000.parquet", "00000.tar", "stats.json", …]}

- Before a run writes anything, it *claims* the folder (`claim_output`). A folder that exists and
  holds files but no manifest is not Winnow's: the run is refused (`InputError`, exit 2). A folder
  with a manifest is a previous output; a file in it that the manifest does not name is not
  Winnow's either, and the run is refused too.
- The claim records the files of the previous run. When that run was killed (state `running`),
  its partly written files carry Winnow's own names (`is_output_name`) and are recorded too.
- When the job has written its shards, `finalize_output` deletes only recorded files that this run
  did not write (stale shards of an earlier, larger run) and records exactly what the run wrote; the
  index and the report are added when they are written, and only then does `complete_output` set the
  state to `complete`. So `complete` means every file the run was asked for is there: a run killed
  at any point before leaves `running`, which the next run into the folder takes up.
- `--retry-failed` reads only a `complete` output; `winnow search` and `winnow audit` refuse a
  `running` one (`require_finished`).
- While a run writes into the folder it holds `winnow.lock` (`LOCK_FILE`, `pipeline/lock.py`), a
  file that is never recorded and that a claim passes over.

So a file is deleted only if a manifest names it, and a manifest names only what Winnow wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Literal

from apache_beam.io.filesystems import FileSystems

from transforms.common.errors import InputError
from transforms.common.files import TEMP_PREFIX, write_atomically

MANIFEST_FILE = "winnow-manifest.json"
_TEMP_NAME = re.compile(rf"^{TEMP_PREFIX}[0-9a-f]{{32}}-")
#: The names of the files a run writes into its output folder (relative paths).
_OUTPUT_NAME = re.compile(
    r"^(\d{5,}\.(tar|parquet)|stats\.json|audit\.json|report\.html"
    r"|img_emb/img_emb_\d{5,}\.npy|text_emb/text_emb_\d{5,}\.npy|metadata/metadata_\d{5,}\.parquet"
    r"|uids/uids_\d{5,}\.npy"
    r"|index/(image\.index|image\.ivfdata|ids\.parquet|index\.json))$"
)
#: Left for a moment by the writability check (`pipeline/stores.py`).
WRITE_CHECK = ".winnow-write-check"
#: Held by the run writing into the folder (`pipeline/lock.py`); never recorded in the manifest.
LOCK_FILE = "winnow.lock"

State = Literal["running", "complete"]


@dataclasses.dataclass(frozen=True)
class Manifest:
    state: State
    files: tuple[str, ...]


def is_temp(relative: str) -> bool:
    """Whether a path relative to an output folder is a write in progress."""
    return bool(_TEMP_NAME.match(relative.rpartition("/")[2]))


def is_output_name(relative: str) -> bool:
    """Whether a path relative to an output folder is one a run writes (or a write in progress)."""
    return bool(_OUTPUT_NAME.match(relative)) or is_temp(relative)


def normalized(path: str) -> str:
    """`path` in one spelling: absolute and resolved locally, `scheme://bucket/key` without `//`
    or `.` parts on object stores."""
    scheme = FileSystems.get_scheme(path)
    if scheme in (None, "file"):
        return os.path.realpath(os.path.abspath(path.removeprefix("file://")))
    rest = path[len(scheme) + 3 :]
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/")
    return f"{scheme}://{bucket}/{key}".rstrip("/")


def inside(path: str, folder: str) -> bool:
    """Whether normalized `path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def list_files(output_dir: str) -> list[str]:
    """Every file below `output_dir`, as paths relative to it, sorted."""
    output_dir = output_dir.rstrip("/")
    if FileSystems.get_scheme(output_dir) in (None, "file"):
        found = []
        for root, _, names in os.walk(output_dir):
            relative = os.path.relpath(root, output_dir)
            found += [name if relative == "." else f"{relative}/{name}" for name in names]
        return sorted(found)
    matched = FileSystems.match([f"{output_dir}/**"])[0].metadata_list
    return sorted(m.path[len(output_dir) + 1 :] for m in matched if not m.path.endswith("/"))


def read_manifest(output_dir: str) -> Manifest | None:
    """The folder's manifest, or None if it has none; `InputError` if it cannot be read."""
    path = f"{output_dir.rstrip('/')}/{MANIFEST_FILE}"
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path) as handle:
            data = json.loads(handle.read().decode("utf-8"))
        state, files = data["state"], data["files"]
        if state not in ("running", "complete") or not all(isinstance(f, str) for f in files):
            raise ValueError("unexpected content")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a manifest Winnow can read ({err})") from err
    return Manifest(state, tuple(files))


def write_manifest(output_dir: str, state: State, files: Iterable[str]) -> None:
    body = {"state": state, "files": sorted(set(files) - {MANIFEST_FILE})}
    text = json.dumps(body, indent=1, sort_keys=True).encode()
    write_atomically(f"{output_dir.rstrip('/')}/{MANIFEST_FILE}", text)


def survey(
    output_dir: str, own: Callable[[str], bool] = is_output_name
) -> tuple[Manifest | None, set[str], list[str]]:
    """The folder's manifest, the files in it Winnow wrote (those its manifest names, and those
    named as `own` says after a killed run), and the other files, which Winnow never touches."""
    present = [f for f in list_files(output_dir) if f not in (MANIFEST_FILE, WRITE_CHECK, LOCK_FILE)]
    previous = read_manifest(output_dir)
    if previous is None:
        files: set[str] = set()
    else:
        files = set(previous.files)
        if previous.state == "running":  # a killed run: its files carry Winnow's names
            files |= {f for f in present if own(f)}
    return previous, files, [f for f in present if f not in files and not is_temp(f)]


def claim_output(output_dir: str) -> Manifest:
    """Records that a run is about to write into `output_dir` (which exists); refuses a folder that
    holds files Winnow did not write. Returns the manifest written."""
    previous, files, foreign = survey(output_dir)
    if foreign:
        what = "files" if previous is None else "files its manifest does not name"
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(
            f"output '{output_dir}' holds {what} ('{foreign[0]}'{more}); Winnow writes only into a new "
            "or empty folder or its own earlier output, and deletes nothing it did not write"
        )
    manifest = Manifest("running", tuple(sorted(files)))
    write_manifest(output_dir, manifest.state, manifest.files)
    return manifest


def unclaim_output(output_dir: str, previous: Manifest | None) -> None:
    """Undoes `claim_output` for a run that stopped before it wrote anything: the manifest the
    folder had is put back, or removed when it had none."""
    if previous is None:
        FileSystems.delete([f"{output_dir.rstrip('/')}/{MANIFEST_FILE}"])
    else:
        write_manifest(output_dir, previous.state, previous.files)


def complete_output(output_dir: str) -> None:
    """Marks a folder's run finished, once every file it was asked for (shards, stats, index,
    report) is written and recorded: the last write of a run."""
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise InputError(f"output '{output_dir}': its {MANIFEST_FILE} is gone; the run cannot be completed")
    write_manifest(output_dir, "complete", manifest.files)


def record_files(output_dir: str, added: Iterable[str]) -> None:
    """Adds files written after the run finished (the index, the report) to a folder's manifest."""
    manifest = read_manifest(output_dir)
    if manifest is None:
        return
    write_manifest(output_dir, manifest.state, {*manifest.files, *added})


def output_holding(path: str) -> str | None:
    """The local Winnow folder (one with a manifest) that `path` is or lies in, if any: a file
    written there that its manifest does not name would make the next run refuse the folder."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        return None
    folder = os.path.abspath(path)
    while True:
        if os.path.isfile(os.path.join(folder, MANIFEST_FILE)):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def require_complete(output_dir: str) -> Manifest:
    """The manifest of a finished output with all its files; `InputError` otherwise (for
    `--retry-failed`, which must never take a partial output for a whole one)."""
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise InputError(
            f"--retry-failed {output_dir}: no {MANIFEST_FILE}; it is not an output of a finished Winnow run"
        )
    if manifest.state != "complete":
        raise InputError(f"--retry-failed {output_dir}: {unfinished(output_dir)}")
    present = set(list_files(output_dir))
    missing = [f for f in manifest.files if f not in present]
    if missing:
        raise InputError(f"--retry-failed {output_dir}: '{missing[0]}' is missing ({len(missing)} files)")
    return manifest


def unfinished(output_dir: str) -> str:
    """What to tell a user about an output whose run did not finish, and how to finish it."""
    return (
        f"the run that writes it did not finish (its {MANIFEST_FILE} says 'running'); run the same "
        f"`winnow run ... --output {output_dir}` again to finish it"
    )


def require_finished(output_dir: str, command: str) -> None:
    """`InputError` when `output_dir` has a manifest that is not `complete`: `command` (`winnow
    search`, `winnow audit`) would read a partial output as a whole one. A folder without a
    manifest (a pool of downloaded shards) is not Winnow's output and is left to `command`."""
    manifest = read_manifest(output_dir)
    if manifest is not None and manifest.state != "complete":
        raise InputError(f"{command} {output_dir}: the output is unfinished: {unfinished(output_dir)}")
