"""Runner selection: a local in-process runner by default, any Beam runner by name.

Beam's `DirectRunner` first tries to download the Prism binary; Winnow's `local` runner is the
portable FnApiRunner directly, so a local run never reaches for the network. `--workers N`
runs it as N worker processes (0 = one per core). Every other name Beam knows (`DataflowRunner`,
`SparkRunner`, `FlinkRunner`, `PrismRunner`, ..., or a runner class's `module.ClassName`) and every
Beam option passes through; a name Beam does not know is a `ConfigError` (exit 2) before anything runs.

The worker processes get their input over Beam's gRPC data plane, whose runner side flushes its
output streams on a one-second timer by default. That timer's flush (`get()`, then `_clear()`)
does not exclude the thread writing the bundle's input, so a chunk written between the two is
sent to no one: a bundle whose input takes longer than a second to write (hundreds of MB, as
the shard grouping of a few hundred thousand pairs) silently loses rows (Beam 2.70 and 2.77 both;
measured in `benchmarks/README.md`, "Local runner: rows lost by the data plane's timer").
`LocalRunner` turns the timer off for its run: the streams then flush only from the writing
thread, by size and at the end of the input.

The runner also hands each worker its share of a stage's input as one message: Beam's grouping
buffer encodes a worker's whole share into one byte string and the bundle manager writes it to the
data plane without flushing, so a worker's memory grows with the collection (about two copies of
half a stage's shuffled bytes with 2 workers: 1.3 GB more per worker for 60,000 more 10 KB
elements; `benchmarks/local_runner_memory.py`). `LocalRunner` cuts every share into chunks of at
most `BUNDLE_CHUNK_BYTES` at element boundaries and flushes after each, so a worker holds a few
chunks at a time, as on a distributed runner. The launcher still holds the data between steps:
that is the local runner's shuffle.

Its worker processes live and die with the run: each is started as `pipeline/worker.py`, which
puts it in a process group of its own and has the kernel kill it when the launcher dies (even by
SIGKILL or the OOM killer); on Ctrl-C the launcher stops them itself (`stop_local_workers`). Their
number is capped (`max_local_workers`): beyond a few per core a process adds no speed, only memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner, execution, fn_runner, worker_handlers
from apache_beam.runners.runner import PipelineRunner, create_runner
from apache_beam.runners.worker import data_plane
from apache_beam.transforms import trigger, window
from apache_beam.utils import windowed_value

from pipeline.config import ConfigError
from pipeline.worker import QUIET_FLAG

LOCAL_RUNNERS = {"local", "direct", "directrunner", "fnapirunner", "bundlebaseddirectrunner"}
#: The module each local worker process runs (`python -m`), before Beam's SDK worker.
WORKER_MODULE = "pipeline.worker"
#: The command Beam's FnApiRunner starts its worker processes with (`direct_running_mode=multi_processing`).
_BEAMS_WORKER = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"
#: Local worker processes per CPU core at most: the stages that compute keep one per core busy,
#: and the crawl waits on the network in `crawl.thread_count` threads per process, not in more
#: processes; past a few per core, processes add memory and switching, not speed.
WORKERS_PER_CORE = 4
#: The memory one idle worker process takes for itself, before any data or model: Beam's SDK
#: worker has 137 MB of private pages, 148 MB once the crawl stage's modules are loaded (Beam 2.77,
#: Python 3.11, Linux `smaps_rollup`; its resident set, shared libraries included, is ~290 MB).
WORKER_BYTES = 150 << 20
#: The share of the machine's memory the idle workers may take together: the rest is for the data
#: they hold, their models and the launcher.
WORKERS_MEMORY_SHARE = 0.5


#: Beam's own methods, before `install_bounded_bundles` replaces them (for comparison in tests).
BEAMS_GROUPING_PARTITION = execution.GroupingBuffer.partition
BEAMS_LIST_PARTITION = execution.ListBuffer.partition
#: The largest piece of a worker's bundle input the local runner writes before it flushes (the data
#: plane's own flush threshold is 10 MB; a worker's receive queue holds 5 pieces).
BUNDLE_CHUNK_BYTES = 4 << 20


class _Chunks:
    """Output streams for `n` workers, each cut into pieces of about `BUNDLE_CHUNK_BYTES` between
    elements (an element never spans two pieces: the worker decodes each piece on its own)."""

    def __init__(self, n: int, limit: int):
        self.parts: list[list[bytes]] = [[] for _ in range(n)]
        self._streams = [create_OutputStream() for _ in range(n)]
        self._limit = limit

    def stream(self, index: int) -> Any:
        return self._streams[index]

    def element_done(self, index: int) -> None:
        stream = self._streams[index]
        if stream.size() >= self._limit:
            self.parts[index].append(stream.get())
            self._streams[index] = create_OutputStream()

    def close(self) -> list[list[bytes]]:
        for index, stream in enumerate(self._streams):
            if stream.size() or not self.parts[index]:
                self.parts[index].append(stream.get())
        return self.parts


def _grouping_partition(self: execution.GroupingBuffer, n: int) -> list[list[bytes]]:
    """`GroupingBuffer.partition` (Beam 2.77) with every worker's share in `_Chunks`: the same
    groups to the same worker in the same order, in pieces instead of one byte string."""
    if not self._grouped_output:
        if self._windowing.is_default():
            windowed_key_values = _global_panes()
        else:
            windowed_key_values = trigger.create_trigger_driver(self._windowing, True).process_entire_key
        coder_impl = self._post_grouped_coder.get_impl()
        key_coder_impl = self._key_coder.get_impl()
        chunks = _Chunks(n, BUNDLE_CHUNK_BYTES)
        for idx, (encoded_key, windowed_values) in enumerate(self._table.items()):
            key = key_coder_impl.decode(encoded_key)
            for wkvs in windowed_key_values(key, windowed_values):
                coder_impl.encode_to_stream(wkvs, chunks.stream(idx % n), True)
                chunks.element_done(idx % n)
        self._grouped_output = chunks.close()
        self._table.clear()
    return self._grouped_output


def _global_panes() -> Any:
    """The one on-time pane of the global window that Beam's `GroupingBuffer.partition` gives every
    group under default windowing."""
    pane = windowed_value.PaneInfo(
        is_first=True,
        is_last=True,
        timing=windowed_value.PaneInfoTiming.ON_TIME,
        index=0,
        nonspeculative_index=0,
    )
    with_value = window.GlobalWindows.windowed_value(
        None, timestamp=window.GlobalWindow().max_timestamp(), pane_info=pane
    ).with_value
    return lambda key, values: [with_value((key, values))]


def _list_partition(self: execution.ListBuffer, n: int) -> list[list[bytes]]:
    """`ListBuffer.partition` (Beam 2.77) with its re-encoded branch (fewer pieces than workers) in
    `_Chunks`; with as many pieces as workers it deals the pieces out, as Beam does."""
    if self.cleared:
        raise RuntimeError("Trying to partition a cleared ListBuffer.")
    if len(self._inputs) >= n or len(self._inputs) == 0:
        return [self._inputs[k::n] for k in range(n)]
    if not self._grouped_output:
        chunks = _Chunks(n, BUNDLE_CHUNK_BYTES)
        idx = 0
        for piece in self._inputs:
            input_stream = create_InputStream(piece)
            while input_stream.size() > 0:
                decoded_value = self._coder_impl.decode_from_stream(input_stream, True)
                self._coder_impl.encode_to_stream(decoded_value, chunks.stream(idx), True)
                chunks.element_done(idx)
                idx = (idx + 1) % n
        self._grouped_output = chunks.close()
    return self._grouped_output


def _send_input_to_worker(
    self: fn_runner.BundleManager, process_bundle_id: str, read_transform_id: str, byte_streams: Any
) -> None:
    """`BundleManager._send_input_to_worker` (Beam 2.77) that flushes after every piece, instead of
    once at the end of the bundle's whole input.

    Beam writes a bundle's input before it sends the request that starts the bundle, so once the
    data plane's queues are bounded by flushing, the writer must not block the request: an input
    of more than one piece to a worker process is written by a thread of its own while the worker
    consumes it. An in-process worker (no `--workers`) reads, when its bundle starts, what was
    written until then: it gets its input written in full first, as Beam writes it."""
    assert self._worker_handler is not None
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)
    pieces = list(byte_streams or [])

    def write() -> None:
        try:
            for piece in pieces:
                data_out.write(piece)
                data_out.maybe_flush()
        finally:
            data_out.close()

    if len(pieces) <= 1 or isinstance(self._worker_handler.data_conn, data_plane.InMemoryDataChannel):
        # An in-process worker reads the input written before the bundle starts, and only that.
        write()
        return
    threading.Thread(target=write, name=f"input-{process_bundle_id}", daemon=True).start()


def install_bounded_bundles() -> None:
    """Makes Beam's local runner hand bundle input to its workers in bounded pieces (see the module
    docstring). The output is unchanged: same elements, same workers, same order."""
    execution.GroupingBuffer.partition = _grouping_partition  # type: ignore[method-assign]
    execution.ListBuffer.partition = _list_partition  # type: ignore[method-assign]
    fn_runner.BundleManager._send_input_to_worker = _send_input_to_worker  # type: ignore[method-assign]


class LocalRunner(FnApiRunner):
    """Beam's FnApiRunner with the data plane's timed flushing off (see the module docstring):
    the runner side of the gRPC data channels it creates buffers by size only, and bundle input
    reaches a worker in pieces of at most `BUNDLE_CHUNK_BYTES`."""

    _lock = threading.Lock()
    _active = 0  # LocalRunner runs in progress in this process
    _beams_value = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> Any:
        # Beam reads the module constant when it creates the data plane server, inside
        # `run_pipeline`. The first run in progress sets it to 0 and the last one to end restores
        # Beam's value, so concurrent runs neither wait for each other nor undo each other.
        with LocalRunner._lock:
            install_bounded_bundles()
            if LocalRunner._active == 0:
                LocalRunner._beams_value = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
                worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
            LocalRunner._active += 1
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            with LocalRunner._lock:
                LocalRunner._active -= 1
                if LocalRunner._active == 0:
                    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = LocalRunner._beams_value

    def run_via_runner_api(
        self, pipeline_proto: beam_runner_api_pb2.Pipeline, options: PipelineOptions
    ) -> Any:
        bind_workers(pipeline_proto)
        return super().run_via_runner_api(pipeline_proto, options)


def worker_command() -> str:
    """The shell command of a local worker process: `pipeline/worker.py`, told this process's id,
    and told to keep its stderr off the terminal unless this process logs at INFO (`-v`): a step
    that fails prints its stack there in every worker, and the same stack reaches this process
    through Beam's log relay anyway."""
    quiet = f" {QUIET_FLAG}" if logging.getLogger().getEffectiveLevel() > logging.INFO else ""
    return f"exec {shlex.quote(sys.executable)} -m {WORKER_MODULE} {os.getpid()}{quiet}"


def bind_workers(pipeline_proto: beam_runner_api_pb2.Pipeline) -> None:
    """Starts the job's worker processes as `worker_command()` instead of Beam's own command, so
    that they die with this process (see `pipeline/worker.py`)."""
    for environment in pipeline_proto.components.environments.values():
        if environment.urn == python_urns.SUBPROCESS_SDK and environment.payload.decode() == _BEAMS_WORKER:
            environment.payload = worker_command().encode()


def local_worker_pids(parent: int | None = None) -> list[int]:
    """The worker processes that `parent` (this process by default) started and that are alive, found
    through `/proc` (Linux; elsewhere none are found, and the workers' watchdog ends them)."""
    parent = os.getpid() if parent is None else parent
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    found = []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                ppid = int(handle.read().rpartition(b")")[2].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        if WORKER_MODULE.encode() in command:
            found.append(int(entry))
    return sorted(found)


def stop_local_workers() -> int:
    """SIGKILLs the local worker processes of this process, each with its process group (anything it
    started); returns how many. For Ctrl-C: Beam's runner would otherwise wait for each worker to
    finish its bundle before it lets the run end."""
    pids = local_worker_pids()
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)  # the worker leads its own group
        except OSError:
            with contextlib.suppress(OSError):  # not yet out of this process's group: the process alone
                os.kill(pid, signal.SIGKILL)
    return len(pids)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers narrow), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError), open(path) as handle:  # "max": no limit
            total = min(total, int(handle.read().strip()))
    return total


def max_local_workers(cores: int | None = None, memory: int | None = None) -> int:
    """The most local worker processes this machine is given: `WORKERS_PER_CORE` per core, and no
    more than fit, idle, in `WORKERS_MEMORY_SHARE` of its memory (`WORKER_BYTES` each); at least 1."""
    cores = available_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    bound = WORKERS_PER_CORE * cores
    if memory:
        bound = min(bound, int(memory * WORKERS_MEMORY_SHARE) // WORKER_BYTES)
    return max(1, bound)


def check_workers(workers: int | None) -> int | None:
    """The number of local worker processes `--workers` asks for (`0`: one per core, up to the
    bound); `ConfigError` naming the bound above it."""
    if workers is None:
        return None
    if workers < 0:
        raise ConfigError(f"--workers ({workers}) must be >= 0 (0 = one per core)")
    bound, cores = max_local_workers(), available_cores()
    if workers == 0:
        return min(cores, bound)
    if workers > bound:
        memory = available_memory()
        if bound < WORKERS_PER_CORE * cores and memory:
            why = (
                f"each worker process takes {WORKER_BYTES >> 20} MB or more, and the idle workers "
                f"may take {WORKERS_MEMORY_SHARE:.0%} of its {memory / (1 << 30):.1f} GB"
            )
        else:
            why = f"{WORKERS_PER_CORE} per core on its {cores} cores: more processes add memory, not speed"
        raise ConfigError(f"--workers {workers}: at most {bound} on this machine ({why})")
    return workers


def check_runner(runner: str) -> None:
    """`ConfigError` naming `runner` and what is accepted unless it is `local` or a Beam runner."""
    if is_local(runner):
        return
    accepted = f"local (the default), {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}"
    try:
        made = create_runner(runner)
    except ImportError as err:
        raise ConfigError(f"--runner {runner}: cannot be loaded ({err})") from None
    except (ValueError, AttributeError, TypeError):
        made = None
    if not isinstance(made, PipelineRunner):
        raise ConfigError(
            f"--runner {runner}: not a Beam runner; use {accepted}, or a runner class as module.ClassName"
        )


def is_local(runner: str) -> bool:
    return runner.lower() in LOCAL_RUNNERS


def translated_steps(result: Any) -> dict[str, dict[str, str]]:
    """The job graph a runner built without running it (DataflowRunner's `--dry_run`): each
    transform's name and its resource hints (`accelerator`, `min_ram`, ...)."""
    job = getattr(result, "job", None)
    proto = getattr(job, "proto_pipeline", None)
    if proto is None:
        return {}
    components = proto.components
    steps: dict[str, dict[str, str]] = {}
    for transform in components.transforms.values():
        if not transform.unique_name or transform.unique_name.startswith("ref_"):
            continue
        hints = {}
        if transform.environment_id:
            for urn, value in components.environments[transform.environment_id].resource_hints.items():
                # beam:resources:accelerator:v1 → accelerator
                hints[urn.split(":")[2] if urn.count(":") >= 3 else urn] = value.decode()
        steps[transform.unique_name] = hints
    return dict(sorted(steps.items()))


def related_job_args(beam_args: Sequence[str], suffix: str) -> list[str]:
    """The Beam arguments of a second job of the same run (the output's index): the same, but a
    named job gets `<name>-<suffix>` (Dataflow refuses two active jobs of one name)."""
    args = list(beam_args)
    for i, arg in enumerate(args):
        if arg.startswith("--job_name="):
            args[i] = f"{arg}-{suffix}"
        elif arg == "--job_name" and i + 1 < len(args):
            args[i + 1] = f"{args[i + 1]}-{suffix}"
    return args


def make_pipeline(
    runner: str = "local", beam_args: Sequence[str] = (), workers: int | None = None
) -> beam.Pipeline:
    """A Pipeline for `runner`; `workers` (local only) switches to multi-processing.

    `ConfigError` for a runner Beam does not know, for `workers` on another runner, and for more
    workers than `max_local_workers`, before anything is started."""
    args = list(beam_args)
    check_runner(runner)
    if not is_local(runner):
        if workers is not None:
            raise ConfigError(
                f"--workers is for the local runner; {runner} takes its own options "
                "(DataflowRunner: --num_workers, --max_num_workers)"
            )
        return beam.Pipeline(options=PipelineOptions([f"--runner={runner}", *args]))
    count = check_workers(workers)
    if count is not None:
        args += [f"--direct_num_workers={count}", "--direct_running_mode=multi_processing"]
        if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
            args.append("--default_sdk_harness_log_level=WARNING")  # workers' lifecycle chatter
    return beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(args))
