"""Run a function in a forked child, for tests whose failure may crash."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable

import torch


def in_child(
    function: Callable[[], float], threads: int | None = None
) -> tuple[int, float | None]:
    """Run ``function`` in a forked child; its exit code and its result.

    The exit code is negative for a signal (a crash). ``threads`` sets
    PyTorch's thread count in the child first: an OpenMP team of the
    parent's does not survive ``fork``. A child still running after a minute
    is killed and ``TimeoutError`` raised.
    """
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.close(read)
            if threads is not None:
                torch.set_num_threads(threads)
            os.write(write, repr(function()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            raise TimeoutError("the forked child did not finish within 60 s")
        time.sleep(0.01)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    return os.waitstatus_to_exitcode(waited[1]), float(text) if text else None
