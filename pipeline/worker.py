"""A worker process of the local runner: Beam's SDK worker, bound to the life of the run that started it.

`LocalRunner` (`pipeline/runner.py`) starts each worker as `exec python -m pipeline.worker PID`,
where PID is the launcher's process id (Beam runs the command through `sh -c`; `exec` keeps the
worker the launcher's own child). Before Beam's worker starts, the process

- leaves the terminal's process group for one of its own: Ctrl-C reaches the launcher alone, which
  stops its workers itself (`stop_local_workers`), so no worker prints a stack of its own, and
  the launcher can signal a worker together with anything it started;
- asks the kernel to SIGKILL it when the launcher dies (Linux `PR_SET_PDEATHSIG`; elsewhere a
  watchdog thread exits once the parent is gone), and exits at once if the launcher died before
  that request was made. A launcher killed by SIGKILL or by the OOM killer leaves no worker behind.

The death signal follows the thread that started the worker, not the process: Beam's runner starts
each worker from a thread that waits for it until it exits (`SubprocessSdkWorker.run`), so the
signal comes only when the worker is done or the launcher is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: Worker argument: Python's stderr goes to the null device (the launcher is not at `-v`). Beam's
#: worker prints a failed step's stack to stderr besides logging it; the log reaches the launcher.
QUIET_FLAG = "--quiet-stderr"
#: How often the watchdog (where the kernel has no death signal) looks for the launcher.
WATCH_INTERVAL_S = 1.0


def die_with_parent() -> bool:
    """Asks the kernel to SIGKILL this process when its parent dies; False where it cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(launcher: int) -> None:
    """Exits the process once its parent is no longer `launcher` (the launcher died: init or a
    subreaper adopted it)."""
    while os.getppid() == launcher:
        time.sleep(WATCH_INTERVAL_S)
    os._exit(1)


def bind_to_launcher(launcher: int) -> None:
    """Leaves the terminal's process group and ties this process's life to `launcher`'s."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # no Ctrl-C until out of the group
    with contextlib.suppress(OSError):  # already a group or session leader
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, previous)
    if not die_with_parent():
        threading.Thread(target=_watch, args=(launcher,), name="winnow-launcher-watch", daemon=True).start()
    if os.getppid() != launcher:  # it died before the kernel was asked
        os._exit(1)


def main(argv: Sequence[str]) -> None:
    """`python -m pipeline.worker LAUNCHER_PID [--quiet-stderr]`: binds to the launcher, then runs
    Beam's SDK worker, which reads its endpoints from the environment the runner set."""
    bind_to_launcher(int(argv[1]))
    if QUIET_FLAG in argv:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main([arg for arg in argv if arg != QUIET_FLAG])


if __name__ == "__main__":
    main(sys.argv)
