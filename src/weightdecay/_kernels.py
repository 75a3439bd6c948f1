"""Multi-tensor CPU kernels: one parallel pass over every tensor of a step.

An optimizer step is memory-bound: AdamW reads the parameter, the gradient
and both moments and writes three of them back. PyTorch's fused CPU kernels
reach that bound on one large tensor, but pay a parallel launch and a
dispatch per tensor, which dominates for small models and costs a third or
more for models of many tensors. The kernels here take the addresses of all
tensors at once and split the whole step into equal chunks of elements, so
one parallel region covers the model whatever its number of tensors.

They are compiled with numba (an optional dependency: ``pip install
weightdecay[fast]``) on first use and cached on disk; without numba,
:func:`available` is False and the optimizers use PyTorch's kernels. They
apply only to contiguous ``float32``/``float64`` CPU tensors (complex
parameters as their real views), never to CUDA or DTensor parameters; see
:func:`applies`. Rows that do not qualify (a non-contiguous parameter,
gradient or state tensor) run on PyTorch's kernels in the same step.

Each element runs the same expressions, in the same order and in the
tensor's dtype, as the per-tensor loop in ``_update``; results agree with it
to rounding (PyTorch's vectorized ops may contract multiply-adds).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
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

# Elements per parallel work item: 256 KiB of float32 per stream keeps a
# chunk's seven streams within a core's L2 while amortizing scheduling.
_CHUNK = 1 << 16

_lock = threading.Lock()
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
    if not params or not available():
        return False
    return all(
        type(param) in _PLAIN and param.device.type == "cpu" and param.dtype in _DTYPES
        for param in params
    )


def _eligible(*tensor_lists: Sequence[Tensor]) -> list[bool]:
    """Per row: all tensors plain, contiguous, on the CPU, of one size and dtype.

    The dtype is the first parameter's: one kernel call takes one dtype.

    Raw addresses are handed to the kernels, so these conditions guard memory
    safety, not only speed; a row that fails runs on PyTorch's kernels.
    """
    dtype = tensor_lists[0][0].dtype
    rows = []
    for row in zip(*tensor_lists, strict=True):
        numel = row[0].numel()
        rows.append(
            dtype in _DTYPES
            and all(
                type(tensor) in _PLAIN
                and tensor.dtype == dtype
                and tensor.device.type == "cpu"
                and tensor.is_contiguous()
                and tensor.numel() == numel
                for tensor in row
            )
        )
    return rows


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
                "set_threads": _numba_kernels.set_threads,
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


def _addresses(*tensor_lists: Sequence[Tensor]) -> np.ndarray:
    """``(len(tensor_lists), n)`` int64 data addresses; empty lists give zeros."""
    count = len(tensor_lists[0])
    table = np.zeros((len(tensor_lists), count), dtype=np.int64)
    for row, tensors in enumerate(tensor_lists):
        if tensors:
            table[row] = [tensor.data_ptr() for tensor in tensors]
    return table


def _split(
    rows: list[bool], *tensor_lists: Sequence[Tensor]
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """The lists restricted to eligible rows, and to the others."""
    take = [[t for t, ok in zip(ts, rows, strict=True) if ok] for ts in tensor_lists]
    rest = [
        [t for t, ok in zip(ts, rows, strict=True) if not ok] for ts in tensor_lists
    ]
    return take, rest


def _kernels_or_raise() -> dict[str, Any]:
    kernels = _load()
    if kernels is None:
        raise RuntimeError("the numba kernels are unavailable: install numba")
    return kernels


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
    """Algorithm 2 over all tensors in one parallel pass (see ``_update``).

    Rows whose tensors the kernel cannot take run through
    ``_update.adam_fused`` (or ``adam_foreach`` where the fused form is
    undefined: ``lr == 0`` with decay left).
    """
    kernels = _kernels_or_raise()
    lists = [params, grads, exp_avgs, exp_avg_sqs]
    if amsgrad:
        lists.append(max_exp_avg_sqs)
    rows = _eligible(*lists)
    if not all(rows):
        (ps, gs, ms, vs, *maxs), rest = _split(rows, *lists)
        (_, _, _, _, *rest_maxs) = rest
        rest_steps = [t for t, ok in zip(steps, rows, strict=True) if not ok]
        steps = [t for t, ok in zip(steps, rows, strict=True) if ok]
        fallback = _update.adam_foreach if lr == 0.0 and decay != 0.0 else None
        fallback = fallback or _update.adam_fused
        fallback(
            *rest[:4],
            rest_maxs[0] if rest_maxs else [],
            rest_steps,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            l2=l2,
            decay=decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        params, grads, exp_avgs, exp_avg_sqs = ps, gs, ms, vs
        max_exp_avg_sqs = maxs[0] if maxs else []
        if not params:
            return
    dtype = _NUMPY_DTYPES[params[0].dtype]

    # Per-tensor scalars cast to the tensors' dtype as PyTorch casts them:
    # -lr / (1 - beta1^t) and sqrt(1 - beta2^t).
    step_sizes = np.array([-lr / (1.0 - beta1**t) for t in steps], dtype=dtype)
    bias2_roots = np.array([math.sqrt(1.0 - beta2**t) for t in steps], dtype=dtype)
    coefficients = np.array(
        [1.0 - beta1, beta2, 1.0 - beta2, eps, l2, 1.0 - decay], dtype=dtype
    )
    flags = np.array([amsgrad, maximize, l2 != 0.0, decay != 0.0], dtype=np.int64)
    addresses = _addresses(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else []
    )
    chunks = _chunks(tuple(param.numel() for param in params))
    kernels["set_threads"](torch.get_num_threads())
    kernels["adam"](chunks, addresses, step_sizes, bias2_roots, coefficients, flags)


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
    """Algorithm 1 over all tensors in one parallel pass (see ``_update``).

    Rows whose tensors the kernel cannot take run through
    ``_update.sgd_foreach``.
    """
    kernels = _kernels_or_raise()
    has_momentum = momentum != 0.0
    lists = [params, grads, momentum_buffers] if has_momentum else [params, grads]
    rows = _eligible(*lists)
    if not all(rows):
        take, rest = _split(rows, *lists)
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
        params, grads = take[0], take[1]
        momentum_buffers = take[2] if has_momentum else []
        if not params:
            return
    dtype = _NUMPY_DTYPES[params[0].dtype]
    coefficients = np.array([lr, momentum, l2, 1.0 - decay], dtype=dtype)
    flags = np.array(
        [has_momentum, nesterov, maximize, l2 != 0.0, decay != 0.0], dtype=np.int64
    )
    addresses = _addresses(params, grads, momentum_buffers if has_momentum else [])
    chunks = _chunks(tuple(param.numel() for param in params))
    kernels["set_threads"](torch.get_num_threads())
    kernels["sgd"](chunks, addresses, coefficients, flags)
