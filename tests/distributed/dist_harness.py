"""Run a function in two gloo processes that talk over loopback only.

``run_job(job, tmp_path)`` starts ``world_size`` CPU processes with
``torch.multiprocessing``, joins them into one gloo process group and calls
``job(rank, world_size, workdir)`` in each; it returns what every rank
returned, saved with ``torch.save`` and read back with ``weights_only=True``.
One job runs many checks: starting processes is what costs time.

The ranks meet through a ``FileStore`` in the work folder rather than a
``TCPStore`` on ``MASTER_ADDR:MASTER_PORT``: a TCPStore listens on every
interface whatever address it is given, while the file needs no port (and
so no race for a free one). Gloo's own sockets are bound to ``lo``.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import multiprocessing
import os
import runpy
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.distributed.checkpoint import DefaultLoadPlanner

from weightdecay import WeightDecayUnitsWarning

__all__ = [
    "WeightsOnlyLoadPlanner",
    "assert_relative_close",
    "listening_addresses",
    "run_job",
    "run_script",
]

Job = Callable[[int, int, Path], dict[str, Any]]

# Ranks fork from a server process that imported torch, TorchDynamo (which
# DDP and the optimizers import on first use), numba (for the CPU kernels,
# if installed) and the jobs once: importing them is most of the start-up
# time of a spawned rank, and unlike a fork of the test process itself the
# server holds no threads or open connections.
_START_METHOD = "forkserver"
_PRELOAD = ["torch", "torch._dynamo", "weightdecay._numba_kernels", "dist_jobs"]
_COLLECTIVE_TIMEOUT = timedelta(seconds=60)


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, unpickling non-tensor values safely.

    ``torch.distributed.checkpoint`` stores values that are not tensors (an
    optimizer's Python-int ``step``, its ``param_groups``) as pickles and the
    default planner reads them with ``weights_only=False``. This planner
    first reads each with ``weights_only=True``, which refuses anything but
    tensors, numbers, strings and containers of them.
    """

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)
        value.seek(0)
        super().load_bytes(read_item, value)


def _entry(rank: int, world_size: int, job: Job, workdir: str) -> None:
    os.environ.update(
        GLOO_SOCKET_IFNAME="lo", RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    warnings.simplefilter("error", WeightDecayUnitsWarning)
    store = dist.FileStore(str(Path(workdir) / "store"), world_size)
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=_COLLECTIVE_TIMEOUT,
    )
    try:
        results = job(rank, world_size, Path(workdir))
        torch.save(results, Path(workdir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_job(job: Job, workdir: Path, world_size: int = 2) -> list[dict[str, Any]]:
    """Run ``job`` on ``world_size`` ranks; return each rank's result dict.

    ``job`` must be a module-level function (the processes import it).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # Effective only if no fork server is running yet (one per process).
    multiprocessing.set_forkserver_preload(_PRELOAD)
    mp.start_processes(
        _entry,
        args=(world_size, job, str(workdir)),
        nprocs=world_size,
        join=True,
        start_method=_START_METHOD,
    )
    return [
        torch.load(workdir / f"rank{rank}.pt", weights_only=True)
        for rank in range(world_size)
    ]


def _script_entry(
    rank: int, world_size: int, script: str, argv: list[str], workdir: str
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    sys.argv = [script, *argv]
    with open(Path(workdir) / f"stdout{rank}.txt", "w") as out:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")


def run_script(
    script: Path, argv: list[str], workdir: Path, world_size: int = 2
) -> list[str]:
    """Run ``script`` as ``__main__`` on ``world_size`` ranks; return their stdout.

    Each rank gets torchrun's variables (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``) and forks from the same server as ``run_job``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    multiprocessing.set_forkserver_preload(_PRELOAD)
    mp.start_processes(
        _script_entry,
        args=(world_size, str(script), argv, str(workdir)),
        nprocs=world_size,
        join=True,
        start_method=_START_METHOD,
    )
    return [(workdir / f"stdout{rank}.txt").read_text() for rank in range(world_size)]


def assert_relative_close(
    actual: dict[str, Tensor], expected: dict[str, Tensor], rtol: float
) -> None:
    """Every tensor within ``rtol`` of the expected one, relative to its size.

    The error of a tensor is ``max |actual - expected| / max |expected|``:
    elementwise relative error is meaningless for entries near zero.
    """
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        error = ((got - want).abs().max() / want.abs().max()).item()
        assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:g}"


def _decode_address(hex_address: str) -> str:
    # /proc/net/tcp{,6} print each 32-bit word of the address little-endian.
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def listening_addresses(pid: int) -> list[str]:
    """The local addresses of the TCP sockets that process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.rsplit(":", 1)
                addresses.append(f"{_decode_address(address)}:{int(port, 16)}")
    return addresses
