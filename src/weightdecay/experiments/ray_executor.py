"""Run a sweep's independent configurations as Ray tasks.

:class:`RayExecutor` keeps the executor contract of
:mod:`weightdecay.experiments.sweep` (``workers`` and ``run(fn, configs)``
yielding an :class:`~weightdecay.experiments.sweep.Outcome` per run, in any
order), so :func:`~weightdecay.experiments.sweep.run_sweep` stores results
and resumes exactly as with the process pool: the driver alone writes the
store, one transaction per finished run.

Each configuration is one task with ``num_cpus=1`` (one torch thread), at
most ``workers`` in flight. A task whose worker process dies (killed, out of
memory, its node lost) is reported and started again up to ``retries``
times, then recorded as failed; a task that raises is failed at once, as it
would raise again. Ray's own task retries are off so that every death is
seen and counted.

Where it runs:

* ``address=None`` and no ``RAY_ADDRESS`` in the environment: a new local
  instance (``ray.init(address="local")``) with ``workers`` CPUs, no
  dashboard and no usage reporting, whose servers listen on 127.0.0.1 only
  (Ray's single-machine mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which
  must be set before Ray is imported; a warning says when it was too late).
* ``address="auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` (or the same
  in ``RAY_ADDRESS``): an existing cluster. Every node needs this package
  installed and the data set at the path the runs are given.

Ray is optional: ``pip install 'weightdecay[ray]'``. Without it, building a
:class:`RayExecutor` raises :class:`RayNotInstalledError` saying so.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from weightdecay.experiments.sweep import Outcome

__all__ = ["INSTALL_HINT", "RayExecutor", "RayNotInstalledError"]

logger = logging.getLogger(__name__)

Config = Mapping[str, Any]
RunFn = Callable[[Config], dict[str, Any]]

INSTALL_HINT = "pip install 'weightdecay[ray]'"

# Read by Ray when it is imported: with 0, a local instance takes 127.0.0.1
# as its node address and binds its servers there instead of to every
# interface (as Ray does on Windows and macOS).
_LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_NO_USAGE_STATS_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}

# Exceptions by which Ray reports that a task's process or node went away.
_DEATHS = (
    "WorkerCrashedError",
    "NodeDiedError",
    "OutOfMemoryError",
    "LocalRayletDiedError",
    "ObjectLostError",
)


class RayNotInstalledError(ImportError):
    """``--executor ray`` was asked for but Ray cannot be imported."""


def _import_ray(local: bool) -> Any:
    """Import Ray, first keeping a local instance on loopback if still possible."""
    if "ray" not in sys.modules:
        defaults = {**_NO_USAGE_STATS_ENV, **(_LOCAL_ONLY_ENV if local else {})}
        for name, value in defaults.items():
            os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError as error:
        raise RayNotInstalledError(
            f"the Ray executor needs Ray, which is not installed ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from error
    return ray


def _run_one(fn: RunFn, config: Config) -> dict[str, Any]:
    """A task's body: one torch thread, then the run."""
    import torch

    torch.set_num_threads(1)
    return fn(config)


class RayExecutor:
    """Runs each configuration as a Ray task, locally or on a cluster.

    Args:
        workers: most tasks in flight (default: the CPU count). A local
            instance is started with this many CPUs.
        address: a cluster's address, or None for ``RAY_ADDRESS`` or, without
            it, a new local instance.
        retries: extra attempts for a run whose worker died.

    Raises:
        RayNotInstalledError: Ray is not installed.
        ValueError: ``workers`` below 1 or ``retries`` below 0.

    Example:
        >>> executor = RayExecutor(workers=2)  # doctest: +SKIP
        >>> run_sweep(configs, store, executor, fn)  # doctest: +SKIP
    """

    def __init__(
        self, workers: int | None = None, address: str | None = None, retries: int = 1
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if address is None:
            address = os.environ.get("RAY_ADDRESS") or None
        self.workers = workers
        self.address = address
        self.retries = retries
        self._ray = _import_ray(local=address is None)
        self._started = False

    def _connect(self) -> None:
        """Join the cluster, or start the local instance, unless Ray is up."""
        ray = self._ray
        if ray.is_initialized():
            return
        if self.address is None:
            ray.init(
                address="local",
                num_cpus=self.workers,
                include_dashboard=False,
                log_to_driver=False,
            )
            node = ray.util.get_node_ip_address()
            if not ipaddress.ip_address(node).is_loopback:
                logger.warning(
                    "Ray was imported before weightdecay could keep its local "
                    "instance on loopback: it listens on %s (set %s before "
                    "importing ray)",
                    node,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0",
                )
        else:
            ray.init(address=self.address, log_to_driver=False)
        self._started = True
        logger.info("Ray: %s", ray.cluster_resources())

    def close(self) -> None:
        """Shut down the Ray instance if this executor started or joined it."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, fn: RunFn, configs: Iterable[Config]) -> Iterator[Outcome]:
        """Run ``fn`` on every config as a task; yield outcomes as they finish.

        The Ray instance stays up between calls (``close`` or the end of the
        process shuts it down); tasks still in flight when the caller stops
        iterating are cancelled.
        """
        ray = self._ray
        queue: list[tuple[Config, int]] = [(c, 1) for c in configs]
        queue.reverse()
        if not queue:
            return
        self._connect()
        deaths = tuple(
            getattr(ray.exceptions, name)
            for name in _DEATHS
            if hasattr(ray.exceptions, name)
        )
        task = ray.remote(num_cpus=1, max_retries=0)(_run_one)
        fn_ref = ray.put(fn)
        running: dict[Any, tuple[Config, int]] = {}
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    config, attempt = queue.pop()
                    running[task.remote(fn_ref, config)] = (config, attempt)
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    config, attempt = running.pop(ref)
                    try:
                        record = ray.get(ref)
                    except deaths as error:
                        yield from self._retry(queue, config, attempt, error)
                    except ray.exceptions.RayTaskError as error:
                        yield Outcome(config, None, str(error), attempts=attempt)
                    else:
                        yield Outcome(config, record, attempts=attempt)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)

    def _retry(
        self,
        queue: list[tuple[Config, int]],
        config: Config,
        attempt: int,
        error: BaseException,
    ) -> Iterator[Outcome]:
        """Queue another attempt, or yield the failure when none is left."""
        reason = type(error).__name__
        message = f"worker died during attempt {attempt} ({reason})"
        logger.warning("%s: %s", _describe(config), message)
        if attempt <= self.retries:
            queue.append((config, attempt + 1))
        else:
            yield Outcome(config, None, message, attempts=attempt)


def _describe(config: Config) -> str:
    keys = ("optimizer", "lr", "weight_decay", "epochs", "seed")
    return " ".join(f"{k}={config[k]}" for k in keys if k in config)
