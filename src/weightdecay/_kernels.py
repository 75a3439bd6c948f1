"""Multi-tensor CPU kernels: one pass over every tensor of a step.

An optimizer step is memory-bound: AdamW reads the parameter, the gradient
and both moments and writes three of them back. PyTorch's fused CPU kernels
reach that bound on one large tensor, but pay a dispatch and a parallel
launch per tensor, which dominates for small models and grows with the
number of tensors. The kernels here take the addresses of all tensors at
once and cut the whole step into chunks of elements, so one call covers the
model whatever its number of tensors; large steps split the chunks between
the calling thread and a small pool of helper threads.

They are compiled with numba (an optional dependency) on first use and cached
on disk; without numba, :func:`available` is False and the optimizers use
PyTorch's kernels. They apply only to contiguous ``float32``/``float64`` CPU
tensors (complex parameters as their real views), never to CUDA or DTensor
parameters; see :func:`applies`. Rows that do not qualify (a non-contiguous
parameter, gradient or state tensor) run through ``foreach`` in the same step.

Each element runs the per-tensor loop's expressions of ``_update`` in the
tensor's dtype (dividing by ``sqrt(1 - beta2^t)`` as a multiplication by its
inverse); results agree with the loop to rounding.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightdecay import _update

__all__ = ["adam_kernel", "applies", "available", "sgd_kernel"]

logger = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float64)
_PLAIN = (Tensor, torch.nn.Parameter)
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

# Below this many elements a step runs in the calling thread, as PyTorch's
# CPU kernels do: waking a thread pool costs more than it saves, and far more
# when other processes hold the cores.
_PARALLEL_MIN = 1 << 18

# Elements per parallel work item: 256 KiB of float32 per stream keeps a
# chunk's seven streams within a core's L2 while amortizing scheduling.
_CHUNK = 1 << 16

_lock = threading.RLock()
_compiled: dict[str, Any] | None = None
_import_failed = False


def available() -> bool:
    """Whether the kernels can run here (numba importable and compilable)."""
    return _load() is not None


def applies(params: Sequence[Tensor]) -> bool:
    """Whether the kernels are the fastest correct path for these parameters.

    True where numba is available and every parameter is a plain CPU tensor
    of dtype ``float32`` or ``float64``; per-tensor conditions on gradients
    and state are checked again at each step (see :func:`adam_kernel`).
    """
    if not params or (_compiled is None and not available()):
        return False
    for param in params:
        if not (type(param) in _PLAIN and param.is_cpu and param.dtype in _DTYPES):
            return False
    return True


def _inspect(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *states: Sequence[Tensor],
) -> tuple[list[bool], list[list[int]], list[int]]:
    """Per row: whether the kernel may take it, the data addresses, the size.

    A row qualifies when all its tensors are plain (no subclass), contiguous
    CPU tensors of the first parameter's dtype and of one size. Raw addresses
    are handed to the kernels, so these conditions guard memory safety, not
    only speed; a row that fails runs on PyTorch's kernels instead. PyTorch
    guarantees that a gradient has its parameter's dtype, device and shape,
    so only its layout is checked.
    """
    dtype = params[0].dtype
    ok = dtype in _DTYPES
    numels, rows, param_addresses, grad_addresses = [], [], [], []
    for param, grad in zip(params, grads, strict=True):
        numels.append(param.numel())
        rows.append(
            ok
            and type(param) in _PLAIN
            and param.dtype is dtype
            and param.is_contiguous()
            and type(grad) in _PLAIN
            and grad.is_contiguous()
        )
        param_addresses.append(param.data_ptr())
        grad_addresses.append(grad.data_ptr())
    addresses = [param_addresses, grad_addresses]
    for tensors in states:
        state_addresses = []
        for i, tensor in enumerate(tensors):
            rows[i] = rows[i] and (
                type(tensor) in _PLAIN
                and tensor.is_cpu
                and tensor.dtype is dtype
                and tensor.numel() == numels[i]
                and tensor.is_contiguous()
            )
            state_addresses.append(tensor.data_ptr())
        addresses.append(state_addresses)
    return rows, addresses, numels


def _load() -> dict[str, Any] | None:
    """Import numba and define the kernels once; None where numba is missing."""
    global _compiled, _import_failed
    if _compiled is not None or _import_failed:
        return _compiled
    with _lock:
        if _compiled is None and not _import_failed:
            try:
                from weightdecay import _numba_kernels
            except ImportError as error:
                _import_failed = True
                logger.info("numba kernels unavailable (%s); using torch", error)
                return None
            _compiled = {
                "adam": _numba_kernels.adam_chunks,
                "sgd": _numba_kernels.sgd_chunks,
            }
    return _compiled


_chunk_cache: dict[tuple[int, ...], np.ndarray] = {}


def _chunks(numels: tuple[int, ...]) -> np.ndarray:
    """``(n, 3)`` int64 rows of (tensor, start, end) covering every element."""
    table = _chunk_cache.get(numels)
    if table is None:
        rows = [
            (index, start, min(start + _CHUNK, numel))
            for index, numel in enumerate(numels)
            for start in range(0, numel, _CHUNK)
        ]
        table = np.array(rows, dtype=np.int64).reshape(-1, 3)
        if len(_chunk_cache) > 64:
            _chunk_cache.clear()
        _chunk_cache[numels] = table
    return table


_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """After ``fork`` the pool's threads are gone; start a new one on demand."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _helpers(count: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers != count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(count, thread_name_prefix="weightdecay")
        return _pool


def _shares(chunks: np.ndarray, threads: int) -> list[np.ndarray]:
    """Split the chunk table into ``threads`` runs of about equal elements."""
    done = np.cumsum(chunks[:, 2] - chunks[:, 1])
    cuts = np.searchsorted(done, done[-1] * np.arange(1, threads) / threads)
    return [share for share in np.split(chunks, cuts) if len(share)]


def _launch(kernel: Any, numels: tuple[int, ...], *args: np.ndarray) -> None:
    """Run ``kernel`` over all chunks on torch's number of threads.

    Small steps run in the calling thread; larger ones split the chunks
    between it and ``torch.get_num_threads() - 1`` helper threads (the
    kernels release the GIL).
    """
    chunks = _chunks(numels)
    threads = min(torch.get_num_threads(), len(chunks))
    if threads <= 1 or sum(numels) < _PARALLEL_MIN:
        kernel(chunks, *args)
        return
    first, *others = _shares(chunks, threads)
    pool = _helpers(threads - 1)
    futures = [pool.submit(kernel, share, *args) for share in others]
    kernel(first, *args)
    for future in futures:
        future.result()


def _kernels_or_raise() -> dict[str, Any]:
    kernels = _load()
    if kernels is None:
        raise RuntimeError("the numba kernels are unavailable: install numba")
    return kernels


def _select(rows: list[bool], items: Sequence[Any], keep: bool) -> list[Any]:
    return [item for item, ok in zip(items, rows, strict=True) if ok is keep]


def _table(addresses: list[list[int]], height: int) -> np.ndarray:
    """The addresses as an int64 table of ``height`` rows (missing rows zero)."""
    table = np.zeros((height, len(addresses[0])), dtype=np.int64)
    table[: len(addresses)] = addresses
    return table


def adam_kernel(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    l2: float,
    decay: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """Algorithm 2 over all tensors in one pass (see ``_update.adam_for_loop``).

    Rows whose tensors the kernel cannot take run through
    ``_update.adam_foreach`` in the same call (not PyTorch's fused kernel,
    which mishandles non-contiguous tensors on the CPU).
    """
    kernels = _kernels_or_raise()
    lists = [params, grads, exp_avgs, exp_avg_sqs]
    if amsgrad:
        lists.append(max_exp_avg_sqs)
    rows, addresses, numels = _inspect(*lists)
    if not all(rows):
        rest = [_select(rows, tensors, False) for tensors in lists]
        if not amsgrad:
            rest.append([])
        _update.adam_foreach(
            *rest,
            _select(rows, steps, False),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            l2=l2,
            decay=decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        if not any(rows):
            return
        steps = _select(rows, steps, True)
        numels = _select(rows, numels, True)
        addresses = [_select(rows, row, True) for row in addresses]
    dtype = _NUMPY_DTYPES[params[0].dtype]

    # Scalars cast to the tensors' dtype as PyTorch casts them; per tensor
    # -lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t), once per distinct t.
    corrections = {
        t: (-lr / (1.0 - beta1**t), 1.0 / math.sqrt(1.0 - beta2**t)) for t in set(steps)
    }
    if len(corrections) == 1:
        step_size, bias2_inv = corrections[steps[0]]
        step_sizes = np.full(len(steps), step_size, dtype=dtype)
        bias2_inverse = np.full(len(steps), bias2_inv, dtype=dtype)
    else:
        pairs = np.array([corrections[t] for t in steps], dtype=dtype)
        step_sizes, bias2_inverse = pairs[:, 0].copy(), pairs[:, 1].copy()
    coefficients = np.array(
        [1.0 - beta1, beta2, 1.0 - beta2, eps, l2, 1.0 - decay], dtype=dtype
    )
    flags = np.array([amsgrad, maximize, l2 != 0.0, decay != 0.0], dtype=np.int64)
    _launch(
        kernels["adam"],
        tuple(numels),
        _table(addresses, 5),
        step_sizes,
        bias2_inverse,
        coefficients,
        flags,
    )


def sgd_kernel(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    l2: float,
    decay: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """Algorithm 1 over all tensors in one pass (see ``_update.sgd_for_loop``).

    Rows whose tensors the kernel cannot take run through
    ``_update.sgd_foreach`` in the same call.
    """
    kernels = _kernels_or_raise()
    has_momentum = momentum != 0.0
    lists = [params, grads, momentum_buffers] if has_momentum else [params, grads]
    rows, addresses, numels = _inspect(*lists)
    if not all(rows):
        rest = [_select(rows, tensors, False) for tensors in lists]
        _update.sgd_foreach(
            rest[0],
            rest[1],
            rest[2] if has_momentum else [],
            lr=lr,
            momentum=momentum,
            l2=l2,
            decay=decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        if not any(rows):
            return
        numels = _select(rows, numels, True)
        addresses = [_select(rows, row, True) for row in addresses]
    dtype = _NUMPY_DTYPES[params[0].dtype]
    coefficients = np.array([lr, momentum, l2, 1.0 - decay], dtype=dtype)
    flags = np.array(
        [has_momentum, nesterov, maximize, l2 != 0.0, decay != 0.0], dtype=np.int64
    )
    _launch(kernels["sgd"], tuple(numels), _table(addresses, 3), coefficients, flags)
