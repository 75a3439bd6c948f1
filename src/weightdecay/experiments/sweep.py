"""Run many independent configurations and store each as it finishes.

An :class:`Executor` maps a picklable function over configurations and
yields an :class:`Outcome` as each run finishes, in any order. Two ship
here: :class:`LocalExecutor`, a process pool (one torch thread per worker,
``spawn`` or ``forkserver`` start), and :class:`InlineExecutor`, which runs
in the calling process (for debugging and tests). Another engine (e.g. Ray)
only has to provide ``run(fn, configs)`` with the same contract.

:func:`run_sweep` skips configurations already in the store, writes each
finished run in its own transaction, prints one compact line per run and a
progress bar with an ETA on stderr.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TextIO

from weightdecay.experiments.store import Store
from weightdecay.experiments.train import config_key, failed_record

__all__ = [
    "EXECUTORS",
    "Executor",
    "InlineExecutor",
    "LocalExecutor",
    "Outcome",
    "Progress",
    "SweepSummary",
    "make_executor",
    "run_sweep",
]

logger = logging.getLogger(__name__)

Config = Mapping[str, Any]
RunFn = Callable[[Config], dict[str, Any]]
EXECUTORS = ("local", "inline", "ray")


@dataclasses.dataclass
class Outcome:
    """What became of one configuration.

    Attributes:
        config: the configuration.
        record: the run's record, or None when it failed.
        error: why it failed (a traceback or the worker's death), else None.
        attempts: how many times it was started.
    """

    config: Config
    record: dict[str, Any] | None
    error: str | None = None
    attempts: int = 1


class Executor(Protocol):
    """Maps ``fn`` over ``configs``, yielding outcomes as runs finish."""

    workers: int

    def run(self, fn: RunFn, configs: Iterable[Config]) -> Iterator[Outcome]:
        """Run ``fn(config)`` for every config; yield each :class:`Outcome`."""
        ...


def _exit_with_sweep(sweep_pid: int, interval: float = 1.0) -> None:
    """End this worker at once when the sweep's process or our parent is gone.

    Under ``forkserver`` the parent is the fork server, which exits when the
    sweep's process does; under ``spawn`` it is the sweep's process itself.
    """
    parent = os.getppid()
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)
        try:
            os.kill(sweep_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def _worker_init(sweep_pid: int) -> None:
    import torch

    torch.set_num_threads(1)
    watchdog = threading.Thread(target=_exit_with_sweep, args=(sweep_pid,))
    watchdog.daemon = True
    watchdog.start()


class InlineExecutor:
    """Runs every configuration in the calling process, one after another."""

    workers = 1

    def run(self, fn: RunFn, configs: Iterable[Config]) -> Iterator[Outcome]:
        """Run ``fn`` on each config in turn; an exception marks that run failed."""
        for config in configs:
            try:
                yield Outcome(config, fn(config))
            except Exception:
                yield Outcome(config, None, traceback.format_exc())


class LocalExecutor:
    """A pool of worker processes on this machine, one torch thread each.

    At most ``workers`` runs are in flight. When a worker dies (the pool
    breaks, whether a result or the next submit reveals it), the runs that
    had finished keep their results, the pool is rebuilt, and each run that
    was in flight is retried (``retries`` more times, alone in the pool so
    that a run killed beside the culprit is not blamed) before it is given up
    as failed.
    An exception raised by ``fn`` fails that run at once (it would recur).
    Workers end themselves when the sweep's process dies.

    Args:
        workers: number of processes (default: the CPU count).
        start_method: ``"spawn"`` or ``"forkserver"``.
        retries: extra attempts for a run whose worker died.
    """

    def __init__(
        self,
        workers: int | None = None,
        start_method: str = "forkserver",
        retries: int = 1,
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r}"
            )
        self.workers = workers
        self.start_method = start_method
        self.retries = retries

    def _pool(self) -> cf.ProcessPoolExecutor:
        context = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Workers fork from a server that imported torch once.
            context.set_forkserver_preload(
                ["torch", "torch._dynamo", "weightdecay.experiments.train"]
            )
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )

    def run(self, fn: RunFn, configs: Iterable[Config]) -> Iterator[Outcome]:
        """Run ``fn`` on every config in the pool; yield outcomes as they finish."""
        queue: list[tuple[Config, int]] = [(c, 1) for c in configs]
        queue.reverse()
        pool = self._pool()
        running: dict[cf.Future, tuple[Config, int]] = {}
        try:
            while queue or running:
                broken = self._submit(pool, fn, queue, running)
                # A worker can die between two waits: the pool then refuses
                # the next submit before any future reports it.
                done, _ = cf.wait(
                    running,
                    return_when=cf.ALL_COMPLETED if broken else cf.FIRST_COMPLETED,
                )
                for future in done:
                    died = yield from self._collect(future, running, queue)
                    broken = broken or died
                if broken:
                    # A broken pool fails every future it still holds, so this
                    # wait ends; runs that finished before the death keep
                    # their results, the others are retried.
                    done, _ = cf.wait(running)
                    for future in done:
                        yield from self._collect(future, running, queue)
                    pool.shutdown(wait=False, cancel_futures=True)
                    logger.warning("a worker process died; restarting the pool")
                    pool = self._pool()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _submit(
        self,
        pool: cf.ProcessPoolExecutor,
        fn: RunFn,
        queue: list[tuple[Config, int]],
        running: dict[cf.Future, tuple[Config, int]],
    ) -> bool:
        """Fill the free workers from ``queue``; True when the pool is broken."""
        # A retry runs alone, so a second death points at its culprit.
        while queue and len(running) < self.workers:
            solo = queue[-1][1] > 1
            if running and (solo or _any_retry(running)):
                break
            config, attempt = queue.pop()
            try:
                future = pool.submit(fn, config)
            except BrokenProcessPool:
                # Not this run's fault: it goes back with the same attempt.
                queue.append((config, attempt))
                return True
            running[future] = (config, attempt)
            if solo:
                break
        return False

    def _collect(
        self,
        future: cf.Future,
        running: dict[cf.Future, tuple[Config, int]],
        queue: list[tuple[Config, int]],
    ) -> Generator[Outcome, None, bool]:
        """Yield the outcome of a finished ``future``; True when its worker died."""
        config, attempt = running.pop(future)
        try:
            result = future.result()
        except BrokenProcessPool:
            yield from self._retry(queue, config, attempt)
            return True
        except Exception:
            yield Outcome(config, None, traceback.format_exc(), attempts=attempt)
            return False
        yield Outcome(config, result, attempts=attempt)
        return False

    def _retry(
        self, queue: list[tuple[Config, int]], config: Config, attempt: int
    ) -> Iterator[Outcome]:
        """Queue another attempt, or yield the failure when none is left."""
        message = f"worker died during attempt {attempt}"
        logger.warning("%s: %s", _short(config), message)
        if attempt <= self.retries:
            queue.append((config, attempt + 1))
        else:
            yield Outcome(config, None, message, attempt)


def _any_retry(running: Mapping[cf.Future, tuple[Config, int]]) -> bool:
    return any(attempt > 1 for _, attempt in running.values())


def make_executor(
    name: str, workers: int | None = None, address: str | None = None
) -> Executor:
    """The executor called ``name`` (one of ``EXECUTORS``).

    ``"ray"`` runs on the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or
    on a new local instance bound to loopback when neither is given.

    Raises:
        ValueError: unknown ``name`` or ``workers`` below 1.
        RayNotInstalledError: ``"ray"`` without Ray installed.
    """
    if name == "local":
        return LocalExecutor(workers)
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        from weightdecay.experiments.ray_executor import RayExecutor

        return RayExecutor(workers, address=address)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")


def _short(config: Config) -> str:
    parts = [
        config.get("study", ""),
        config.get("regime", ""),
        config["optimizer"],
        f"lr={config['lr']:.3g}",
        f"wd={config['weight_decay']:.3g}",
        f"ep={config['epochs']}",
        f"seed={config['seed']}",
    ]
    return " ".join(p for p in parts if p)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """A one-line progress bar with elapsed time and ETA, and a line per run.

    On a terminal the bar is redrawn in place below the per-run lines;
    elsewhere only the per-run lines are written, each with its count.
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24):
        self.total = total
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.started = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def bar(self) -> str:
        """The bar: ``[#####---] 12/40  30% 01:02 < 02:25``."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(self.width * fraction))
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else math.inf
        return (
            f"[{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total}"
            f" {100 * fraction:3.0f}% {_clock(elapsed)} < {_clock(eta)}"
        )

    def update(self, line: str) -> None:
        """Count one finished run and write its line."""
        self.done += 1
        if self.tty:
            self.stream.write(f"\r\033[K{line}\n{self.bar()}")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {line}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclasses.dataclass
class SweepSummary:
    """Counts of one :func:`run_sweep` call."""

    requested: int = 0
    skipped: int = 0
    ok: int = 0
    diverged: int = 0
    failed: int = 0
    wall_s: float = 0.0


def run_line(record: Mapping[str, Any]) -> str:
    """One compact line for a finished run."""
    config = record["config"]
    final = record["final"]
    if record["status"] == "ok":
        tail = (
            f"val {100 * final['val_error']:5.2f}% test "
            f"{100 * final['test_error']:5.2f}% loss {final['train_loss']:.3f}"
        )
    elif record["status"] == "diverged":
        tail = f"diverged at step {record['diverged_step']}"
    else:
        tail = "FAILED"
    return f"{_short(config)}: {tail} ({record['wall_s']:.1f}s)"


def run_sweep(
    configs: Iterable[Config],
    store: Store,
    executor: Executor,
    fn: RunFn,
    *,
    progress: bool = True,
    stream: TextIO | None = None,
) -> SweepSummary:
    """Run every configuration not yet in ``store`` and store each result.

    Duplicate configurations are run once. A run whose worker died twice, or
    that raised, is stored with status ``"failed"`` and the sweep goes on.

    Returns:
        The counts of requested, skipped (already stored) and newly stored runs.
    """
    started = time.monotonic()
    unique: dict[str, Config] = {}
    for config in configs:
        unique.setdefault(config_key(config), config)
    stored = store.keys(finished=True)
    todo = [c for k, c in unique.items() if k not in stored]
    summary = SweepSummary(requested=len(unique), skipped=len(unique) - len(todo))
    if summary.skipped:
        logger.info("%d of %d runs already stored", summary.skipped, len(unique))
    bar = Progress(len(todo), stream) if progress and todo else None
    for outcome in executor.run(fn, todo):
        if outcome.record is not None:
            record = outcome.record
        else:
            logger.warning("%s failed: %s", _short(outcome.config), outcome.error)
            record = failed_record(outcome.config, outcome.error or "unknown")
        store.add(record)
        setattr(summary, record["status"], getattr(summary, record["status"]) + 1)
        if bar is not None:
            bar.update(run_line(record))
    if bar is not None:
        bar.close()
    summary.wall_s = time.monotonic() - started
    return summary
