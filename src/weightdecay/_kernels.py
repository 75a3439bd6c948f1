"""Multi-tensor CPU kernels: one pass over every tensor of a step.

An optimizer step is memory-bound: AdamW reads the parameter, the gradient
and both moments and writes three of them back. PyTorch's fused CPU kernels
reach that bound on one large tensor, but pay a dispatch and a parallel
launch per tensor, which dominates for small models and grows with the
number of tensors. The kernels here take the addresses of all tensors at
once and cut the whole step into chunks of elements, so one call covers the
model whatever its number of tensors; large steps split the chunks between
the threads of PyTorch's own OpenMP team (:class:`_OpenMP`), or of a small
team of helper threads where that runtime is not found (:class:`_Team`).

What stays the same from one step to the next (parameters, state tensors,
their addresses, the chunk table) is kept in a :class:`Plan` per parameter
group; each step checks cheaply that it still holds and inspects only the
gradients, which autograd may allocate anew at every backward.

The kernels are compiled with numba (an optional dependency) on first use
and cached on disk; without numba, :func:`available` is False and the
optimizers use PyTorch's kernels. They apply only to contiguous
``float32``/``float64`` CPU tensors (complex parameters as their real views),
never to CUDA or DTensor parameters; see :func:`applies`. Rows that do not
qualify (a non-contiguous parameter, gradient or state tensor) run through
``foreach`` in the same step.

Each element runs the per-tensor loop's expressions of ``_update`` in the
tensor's dtype (dividing by ``sqrt(1 - beta2^t)`` as a multiplication by its
inverse); results agree with the loop to rounding.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import operator
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightdecay import _update

__all__ = ["ADAM_ROWS", "SGD_ROWS", "Plan", "applies", "available"]

logger = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float64)
_PLAIN = (Tensor, torch.nn.Parameter)
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

# Below this many elements a step runs in the calling thread. PyTorch's
# OpenMP threads, spinning between regions, take a share within microseconds:
# at 1e5 float32 elements splitting over them cut an AdamW step by about a
# third. Our own helper threads (where that runtime is not found) must be
# woken first, which costs more than it saves below about 2^18 elements, and
# far more when other processes hold the cores.
_PARALLEL_MIN_OPENMP = 1 << 14
_PARALLEL_MIN = 1 << 18

# Elements per parallel work item: 256 KiB of float32 per stream keeps a
# chunk's seven streams within a core's L2 while amortizing scheduling.
# Smaller steps get smaller chunks, down to _CHUNK_MIN, so that even one
# tensor splits into about _CHUNKS_PER_STEP runs of equal size.
_CHUNK = 1 << 16
_CHUNK_MIN = 1 << 12
_CHUNKS_PER_STEP = 16

# Words of the header that a kernel run on PyTorch's OpenMP team reads
# (``_numba_kernels.HEADER_WORDS``).
_HEADER_WORDS = 13

# Rows of the address table: parameter, gradient, then the state tensors.
ADAM_ROWS = 5  # exp_avg, exp_avg_sq, max_exp_avg_sq
SGD_ROWS = 3  # momentum_buffer

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
    and state are checked again at each step (see :class:`Plan`).
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
    CPU tensors of the first parameter's dtype and of one size, whose memory
    holds their values (not a lazily negated view, ``Tensor.is_neg``). Raw addresses
    are handed to the kernels, so these conditions guard memory safety, not
    only speed; a row that fails runs on PyTorch's kernels instead.
    """
    dtype = params[0].dtype
    ok = dtype in _DTYPES
    rows = [
        ok
        and type(param) in _PLAIN
        and param.dtype is dtype
        and param.is_contiguous()
        and not param.is_neg()
        for param in params
    ]
    numels = [param.numel() for param in params]
    addresses = [[param.data_ptr() for param in params]]
    for tensors in (grads, *states):
        for i, tensor in enumerate(tensors):
            rows[i] = rows[i] and (
                type(tensor) in _PLAIN
                and tensor.is_cpu
                and tensor.dtype is dtype
                and tensor.numel() == numels[i]
                and tensor.is_contiguous()
                and not tensor.is_neg()
            )
        addresses.append([tensor.data_ptr() for tensor in tensors])
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
                "team_entry": _numba_kernels.team_entry,
                "serial_thread_num": _numba_kernels.SERIAL_THREAD_NUM,
                "serial_num_threads": _numba_kernels.SERIAL_NUM_THREADS,
            }
    return _compiled


_ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_entries: dict[tuple[str, type], tuple[int, Any]] = {}


def _entry_pair(kind: str, numpy_dtype: type) -> tuple[int, Any]:
    key = (kind, numpy_dtype)
    pair = _entries.get(key)
    if pair is None:
        with _lock:
            address = _kernels_or_raise()["team_entry"](kind, numpy_dtype)
            pair = _entries[key] = (address, _ENTRY_TYPE(address))
    return pair


def _entry_address(kind: str, numpy_dtype: type) -> int:
    """The address of the compiled entry ``void f(int64 *header)``."""
    return _entry_pair(kind, numpy_dtype)[0]


def _entry(kind: str, numpy_dtype: type) -> Any:
    """The compiled entry as a ctypes function, which releases the GIL."""
    return _entry_pair(kind, numpy_dtype)[1]


def _kernels_or_raise() -> dict[str, Any]:
    kernels = _load()
    if kernels is None:
        raise RuntimeError("the numba kernels are unavailable: install numba")
    return kernels


def _chunk_table(numels: Sequence[int]) -> np.ndarray:
    """``(n, 3)`` int64 rows of (tensor, start, end) covering every element.

    Chunks start at multiples of their size, a multiple of 4096 elements.
    """
    share = -(-sum(numels) // _CHUNKS_PER_STEP)
    size = min(_CHUNK, max(_CHUNK_MIN, -(-share // _CHUNK_MIN) * _CHUNK_MIN))
    rows = [
        (index, start, min(start + size, numel))
        for index, numel in enumerate(numels)
        for start in range(0, numel, size)
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _bounds(chunks: np.ndarray, threads: int) -> np.ndarray:
    """Cut the chunk table into runs of about equal elements for ``threads``.

    Returns the int64 run boundaries (first chunk of each run, then the
    number of chunks). Two runs per thread, so that the calling thread can
    take over the share of a helper that is slow to wake (see
    :class:`_Team`); one run where the step is too small to be worth a
    thread.
    """
    elements = int((chunks[:, 2] - chunks[:, 1]).sum()) if len(chunks) else 0
    parts = min(2 * threads, len(chunks))
    least = _PARALLEL_MIN_OPENMP if _openmp() is not None else _PARALLEL_MIN
    if threads <= 1 or parts <= 1 or elements < least:
        return np.array([0, len(chunks)], dtype=np.int64)
    done = np.cumsum(chunks[:, 2] - chunks[:, 1])
    cuts = np.searchsorted(done, done[-1] * np.arange(1, parts) / parts)
    return np.unique(np.concatenate([[0], cuts, [len(chunks)]])).astype(np.int64)


class _OpenMP:
    """PyTorch's OpenMP runtime, to run a kernel on PyTorch's own threads.

    PyTorch's OpenMP worker threads keep spinning for several milliseconds
    after each parallel region, waiting for the next one; a thread of ours
    started on the same core then gets a fraction of it, which is what an
    optimizer step that follows a backward pass would meet. Handing the
    kernel to ``GOMP_parallel`` of the runtime that PyTorch loaded makes
    those threads compute it. Found on Linux through ``/proc/self/maps``;
    elsewhere, or where PyTorch's parallel backend is not OpenMP, the
    kernels use :class:`_Team`.
    """

    def __init__(self, library: str) -> None:
        runtime = ctypes.CDLL(library)  # the copy already loaded
        self.parallel = runtime.GOMP_parallel
        self.parallel.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_uint,
        ]
        self.parallel.restype = None
        self.thread_num = ctypes.cast(runtime.omp_get_thread_num, ctypes.c_void_p)
        self.num_threads = ctypes.cast(runtime.omp_get_num_threads, ctypes.c_void_p)

    @staticmethod
    def find() -> _OpenMP | None:
        """The runtime PyTorch's parallel kernels run on, or None."""
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "libgomp" in line}
        except OSError:
            return None
        torch_dir = os.path.dirname(torch.__file__)
        ours = sorted(path for path in paths if path.startswith(torch_dir))
        candidates = ours or sorted(paths)
        if len(candidates) != 1:
            return None
        try:
            return _OpenMP(candidates[0])
        except (OSError, AttributeError) as error:
            logger.info("PyTorch's OpenMP runtime not usable (%s)", error)
            return None


_openmp_state: list[_OpenMP | None] = []


def _openmp() -> _OpenMP | None:
    if not _openmp_state:
        with _lock:
            if not _openmp_state:
                _openmp_state.append(_OpenMP.find())
    return _openmp_state[0]


class _Job:
    """One kernel call split into shares, claimed one at a time."""

    __slots__ = ("args", "claimed", "done", "error", "kernel", "running", "shares")

    def __init__(self, kernel: Any, shares: list[np.ndarray], args: tuple) -> None:
        self.kernel = kernel
        self.shares = shares
        self.args = args
        self.claimed = 0  # shares handed out so far
        self.running = 0  # shares being computed now
        self.done: threading.Lock | None = None  # set when the caller waits
        self.error: BaseException | None = None


class _Team:
    """Helper threads that run shares of a kernel call beside the caller.

    Each helper sleeps on a lock of its own until a call wakes it. Shares
    are claimed one at a time, the calling thread claiming too, so a helper
    that the operating system schedules late finds its share already done
    instead of stalling the step; the caller waits only for shares that a
    helper has started. The kernels release the GIL while they compute.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()  # guards the fields of the current job
        self._busy = threading.Lock()  # one call at a time
        self._job: _Job | None = None
        self._parked: list[threading.Lock] = []
        for index in range(size):
            wake = threading.Lock()
            wake.acquire()
            self._parked.append(wake)
            threading.Thread(
                target=self._serve,
                args=(wake,),
                name=f"weightdecay-kernel-{index}",
                daemon=True,
            ).start()

    def _serve(self, wake: threading.Lock) -> None:
        while True:
            wake.acquire()
            job = self._job
            if job is not None:
                self._work(job)
            with self._lock:
                self._parked.append(wake)

    def _work(self, job: _Job) -> None:
        while True:
            with self._lock:
                index = job.claimed
                if index == len(job.shares):
                    return
                job.claimed += 1
                job.running += 1
            try:
                job.kernel(job.shares[index], *job.args)
            except BaseException as error:  # re-raised in the calling thread
                job.error = error
            finally:
                with self._lock:
                    job.running -= 1
                    finished = job.running == 0 and job.done is not None
                if finished:
                    job.done.release()

    def run(self, kernel: Any, shares: list[np.ndarray], args: tuple) -> None:
        """Run ``kernel(share, *args)`` on every share; return when all ran."""
        if not self._busy.acquire(blocking=False):
            # Another thread is stepping an optimizer: compute serially.
            for share in shares:
                kernel(share, *args)
            return
        try:
            job = _Job(kernel, shares, args)
            with self._lock:
                self._job = job
                count = min(len(self._parked), len(shares) - 1)
                wake = self._parked[:count]
                del self._parked[:count]
            for helper in wake:
                helper.release()
            self._work(job)
            with self._lock:
                if job.running:
                    job.done = threading.Lock()
                    job.done.acquire()
                done = job.done
                self._job = None
            if done is not None:
                done.acquire()
            if job.error is not None:
                raise job.error
        finally:
            self._busy.release()


_team: _Team | None = None


def _forget_team() -> None:
    """After ``fork`` the helper threads are gone; start new ones on demand."""
    global _team
    _team = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_team)


def _helpers(count: int) -> _Team:
    global _team
    with _lock:
        if _team is None or _team.size != count:
            _team = _Team(count)
        return _team


class _Launch:
    """The arrays a kernel call takes, allocated once for a set of rows.

    Args:
        addresses: one list of data addresses per row of the table
            (parameter, gradient, state tensors); missing rows stay zero.
        numels: the number of elements of each tensor.
        height: the rows of the table that the kernel reads.
        dtype: the tensors' dtype, in which the scalars are rounded.
    """

    def __init__(
        self,
        addresses: list[list[int]],
        numels: list[int],
        height: int,
        dtype: torch.dtype,
    ) -> None:
        numpy_dtype = _NUMPY_DTYPES[dtype]
        self.table = np.zeros((height, len(numels)), dtype=np.int64)
        self.table[: len(addresses)] = addresses
        self.chunks = _chunk_table(numels)
        self.numpy_dtype = numpy_dtype
        self.step_sizes = np.zeros(len(numels), dtype=numpy_dtype)
        self.bias2_inverse = np.zeros(len(numels), dtype=numpy_dtype)
        self.coefficients = np.zeros(6, dtype=numpy_dtype)
        self.flags = np.zeros(5, dtype=np.int64)
        self._split: tuple[int, list[np.ndarray], int, int] | None = None
        self._keep: tuple[np.ndarray, ...] = ()
        self._written: tuple[tuple, tuple] = ((), ())  # the scalars in the arrays

    def _divide(self, threads: int) -> tuple[int, list[np.ndarray], int, int]:
        """Cut the chunks into runs for ``threads``; keep the headers.

        Returns the thread count, the runs, and the addresses of the
        headers of an entry call on PyTorch's OpenMP team (zero where that
        runtime is not found) and in the calling thread alone.
        """
        bounds = _bounds(self.chunks, threads)
        runs = [self.chunks[a:b] for a, b in itertools.pairwise(bounds)]
        words = [
            0,  # the address of the function giving this thread's number
            0,  # the address of the function giving the team's size
            self.chunks.ctypes.data,
            len(self.chunks),
            self.table.ctypes.data,
            self.table.shape[0],
            self.table.shape[1],
            self.step_sizes.ctypes.data,
            self.bias2_inverse.ctypes.data,
            self.coefficients.ctypes.data,
            self.flags.ctypes.data,
            bounds.ctypes.data,
            len(runs),
        ]
        assert len(words) == _HEADER_WORDS
        kernels = _kernels_or_raise()
        serial = np.array(words, dtype=np.int64)
        serial[:2] = kernels["serial_thread_num"], kernels["serial_num_threads"]
        parallel = np.array(words, dtype=np.int64)
        openmp = _openmp()
        if openmp is not None:
            parallel[:2] = openmp.thread_num.value, openmp.num_threads.value
        # The headers point into ``bounds``: all are kept alive together.
        self._keep = (bounds, serial, parallel)
        self._split = (
            threads,
            runs,
            int(parallel.ctypes.data) if openmp is not None else 0,
            int(serial.ctypes.data),
        )
        return self._split

    def run(self, kind: str) -> None:
        """Run the ``kind`` kernel ("adam" or "sgd") over every chunk.

        Small steps run in the calling thread; larger ones on PyTorch's
        OpenMP threads where found (:class:`_OpenMP`), else on the calling
        thread and helper threads (:class:`_Team`).
        """
        threads = torch.get_num_threads()
        split = self._split
        if split is None or split[0] != threads:
            split = self._divide(threads)
        _, runs, parallel, serial = split
        if len(runs) == 1:
            _entry(kind, self.numpy_dtype)(serial)
            return
        if parallel:
            address = _entry_address(kind, self.numpy_dtype)
            _openmp().parallel(address, parallel, threads, 0)
            return
        if kind == "adam":
            args = (self.table, self.step_sizes, self.bias2_inverse)
        else:
            args = (self.table,)
        args += (self.coefficients, self.flags)
        _helpers(threads - 1).run(_kernels_or_raise()[kind], runs, args)

    def adam(
        self,
        steps: list[int],
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        l2: float,
        decay: float,
        amsgrad: bool,
        maximize: bool,
    ) -> None:
        """Run the Adam kernel; ``steps`` are the tensors' counts after it.

        Per tensor the step size is -lr / (1 - beta1^t) and the second bias
        correction 1 / sqrt(1 - beta2^t), both in double precision and then
        rounded to the tensors' dtype, as PyTorch rounds scalars.
        """

        def scalars(t: int) -> tuple[float, float]:
            bias_correction1, bias_correction2 = _update.bias_corrections(
                beta1, beta2, t
            )
            return -lr / bias_correction1, 1.0 / math.sqrt(bias_correction2)

        if steps.count(steps[0]) == len(steps):
            step_size, bias2_inverse = scalars(steps[0])
            self.step_sizes.fill(step_size)
            self.bias2_inverse.fill(bias2_inverse)
        else:
            corrections = {t: scalars(t) for t in set(steps)}
            pairs = np.array([corrections[t] for t in steps])
            self.step_sizes[:] = pairs[:, 0]
            self.bias2_inverse[:] = pairs[:, 1]
        self._scalars(
            (1.0 - beta1, beta2, 1.0 - beta2, eps, l2, 1.0 - decay),
            (amsgrad, maximize, l2 != 0.0, decay != 0.0),
        )
        self.run("adam")

    def sgd(
        self,
        lr: float,
        momentum: float,
        l2: float,
        decay: float,
        nesterov: bool,
        maximize: bool,
    ) -> None:
        """Run the SGD kernel."""
        self._scalars(
            (lr, momentum, l2, 1.0 - decay),
            (momentum != 0.0, nesterov, maximize, l2 != 0.0, decay != 0.0),
        )
        self.run("sgd")

    def _scalars(self, coefficients: tuple, flags: tuple) -> None:
        """Write the kernel's coefficients and flags where they changed."""
        if coefficients != self._written[0]:
            self.coefficients[: len(coefficients)] = coefficients
        if flags != self._written[1]:
            self.flags[: len(flags)] = flags
        self._written = (coefficients, flags)


def _select(rows: list[bool], items: Sequence[Any], keep: bool) -> list[Any]:
    return [item for item, ok in zip(items, rows, strict=True) if ok is keep]


# Unbound methods and getters, mapped over lists of tensors in C.
_data_ptr = Tensor.data_ptr
_numel = Tensor.numel
_is_contiguous = Tensor.is_contiguous
_is_neg = Tensor.is_neg
_grad_of = operator.attrgetter("grad")
_dtype_of = operator.attrgetter("dtype")
_is_cpu_of = operator.attrgetter("is_cpu")


class Plan:
    """One parameter group's kernel step, kept from one step to the next.

    A plan is built from a full inspection of the group's tensors (see
    :func:`_inspect`): which rows the kernels take, the addresses of their
    parameters and state tensors, the chunk table. Each later step calls
    :meth:`refresh`, which confirms in a few attribute reads per tensor that
    the group still holds the same tensors and takes this step's gradients,
    or returns None, and the optimizer builds a new plan, when anything
    changed: a parameter of the group, which parameters have a gradient, the
    data address of a parameter or state tensor (``tensor.data = ...``), the
    state dict of a parameter or one of its state tensors
    (``load_state_dict``), the group's ``foreach``/``fused`` flags, or a
    gradient's device, layout, dtype, size or negative bit.

    Every address handed to the kernels is read from its tensor at that
    step and compared with the plan's, so a storage that was freed or moved
    (``untyped_storage().resize_``) is never written through. The plan
    holds references to the parameters and state tensors it inspected, so
    a matching address cannot belong to another tensor's memory. It never
    keeps a gradient: gradients are inspected at each step.
    A state tensor whose shape or strides change in place while it keeps its
    data address (``as_strided_``, ``resize_`` to fewer elements) is not
    detected; a parameter's are.

    The checks map C functions over lists rather than loop in Python: about
    two microseconds per tensor in all.

    Args:
        group: the parameter group.
        state: the optimizer's per-parameter state, already initialized for
            every parameter that has a gradient.
        keys: the state tensors the kernel reads, in the order of its rows.
        height: rows of the kernel's address table.
    """

    def __init__(
        self,
        group: dict[str, Any],
        state: Mapping[Tensor, dict[str, Any]],
        keys: tuple[str, ...],
        height: int,
    ) -> None:
        self.group = group
        self.group_params = list(group["params"])
        self.count = len(self.group_params)
        self.present = [p.grad is not None for p in self.group_params]
        self.all_present = all(self.present)
        self.originals = [p for p in self.group_params if p.grad is not None]
        self.keys = keys
        self.dicts = [state[p] for p in self.originals]
        self.state_tensors = [[d[key] for d in self.dicts] for key in keys]
        # State tensor by state tensor: its dict, its key, the tensor.
        self.key_dicts = self.dicts * len(keys)
        self.key_names = [key for key in keys for _ in self.dicts]
        self.held_states = list(itertools.chain(*self.state_tensors))
        # Parameters and state tensors, whose addresses must not move.
        self.held = self.originals + self.held_states
        self.held_addresses = list(map(_data_ptr, self.held))
        self.complex = [p.is_complex() for p in self.originals]
        self.any_complex = any(self.complex)

        params = [_update.as_real(p) for p in self.originals]
        grads = self._real([p.grad for p in self.originals])
        states = [
            [_update.as_real(t) for t in tensors] for tensors in self.state_tensors
        ]
        self.dtype = params[0].dtype
        rows, addresses, numels = _inspect(params, grads, *states)
        self.rows = rows
        self.all_rows = all(rows)
        self.grad_numels = _select(rows, numels, True)
        self.kernel_params = _select(rows, params, True)
        self.rest_params = _select(rows, params, False)
        self.rest_states = [_select(rows, tensors, False) for tensors in states]
        kept = [_select(rows, row, True) for i, row in enumerate(addresses) if i != 1]
        kept.insert(1, [0] * len(self.grad_numels))
        self.launch = (
            _Launch(kept, self.grad_numels, height, self.dtype) if any(rows) else None
        )
        self.grad_addresses: list[int] = []  # those in the launch's table

    def _real(self, tensors: list[Tensor]) -> list[Tensor]:
        if not self.any_complex:
            return tensors
        return [
            torch.view_as_real(t) if c else t
            for t, c in zip(tensors, self.complex, strict=True)
        ]

    def _holds(
        self, group: dict[str, Any], state: Mapping[Tensor, dict[str, Any]]
    ) -> bool:
        """Whether the group's parameters and state are those of the plan."""
        params = group["params"]
        if (
            len(params) != self.count
            or group.get("foreach") is not None
            or group.get("fused") is not None
            or not all(map(operator.is_, params, self.group_params))
        ):
            return False
        if not all(map(operator.is_, map(state.get, self.originals), self.dicts)):
            return False
        try:
            current = map(operator.getitem, self.key_dicts, self.key_names)
            if not all(map(operator.is_, current, self.held_states)):
                return False
        except KeyError:
            return False
        if list(map(_data_ptr, self.held)) != self.held_addresses:
            return False
        params = self.kernel_params
        return (
            list(map(_numel, params)) == self.grad_numels
            and all(map(_is_contiguous, params))
            and not any(map(_is_neg, params))
        )

    def refresh(
        self, group: dict[str, Any], state: Mapping[Tensor, dict[str, Any]]
    ) -> list[Tensor] | None:
        """Check that the plan still holds and take this step's gradients.

        Writes the gradients' addresses into the kernel's table and returns
        the gradients of the rows that run on ``foreach`` (real views), or
        None if the plan no longer describes the group.
        """
        if not self._holds(group, state):
            return None
        grads = list(map(_grad_of, self.group_params))
        if self.all_present:
            if not all(map(operator.is_not, grads, itertools.repeat(None))):
                return None
        else:
            present = list(map(operator.is_not, grads, itertools.repeat(None)))
            if present != self.present:
                return None
            grads = list(itertools.compress(grads, present))
        if self.any_complex:
            grads = self._real(grads)
        kernel_grads = grads if self.all_rows else _select(self.rows, grads, True)
        # The type first: the other checks call Tensor methods directly.
        if not all(map(_PLAIN.__contains__, map(type, kernel_grads))):
            return None
        try:
            if not (
                all(map(_is_cpu_of, kernel_grads))
                and all(
                    map(
                        operator.is_,
                        map(_dtype_of, kernel_grads),
                        itertools.repeat(self.dtype),
                    )
                )
                and list(map(_numel, kernel_grads)) == self.grad_numels
                and all(map(_is_contiguous, kernel_grads))
                and not any(map(_is_neg, kernel_grads))
            ):
                return None
        except RuntimeError:  # sparse gradients have no strides
            return None
        if self.launch is not None:
            # Kept gradients (zero_grad(set_to_none=False)) and gradients that
            # the allocator gives back at the same addresses need no write.
            addresses = list(map(_data_ptr, kernel_grads))
            if addresses != self.grad_addresses:
                self.launch.table[1] = addresses
                self.grad_addresses = addresses
        return [] if self.all_rows else _select(self.rows, grads, False)

    def advance(self) -> list[int]:
        """Count this step in every parameter's state; the new step counts.

        A count set to another type since the plan was built (``torch.optim``
        keeps float32 tensors) is read as the per-tensor loop reads it
        (``_update.whole_step_count``).
        """
        for d in self.dicts:
            if type(d["step"]) is not int:
                _update.whole_step_count(d)
            d["step"] += 1
        return [d["step"] for d in self.dicts]

    def adam(self, rest_grads: list[Tensor], steps: list[int], **options: Any) -> None:
        """Algorithm 2 on the group, after :meth:`refresh` and :meth:`advance`.

        ``options`` are the keyword arguments of ``_update.adam_foreach``.
        """
        if not self.all_rows:
            exp_avgs, exp_avg_sqs, *maxes = self.rest_states
            _update.adam_foreach(
                self.rest_params,
                rest_grads,
                exp_avgs,
                exp_avg_sqs,
                maxes[0] if options["amsgrad"] else [],
                _select(self.rows, steps, False),
                **options,
            )
            steps = _select(self.rows, steps, True)
        if self.launch is not None:
            self.launch.adam(steps, **options)

    def sgd(self, rest_grads: list[Tensor], **options: Any) -> None:
        """Algorithm 1 on the group, after :meth:`refresh` and :meth:`advance`.

        ``options`` are the keyword arguments of ``_update.sgd_foreach``.
        """
        if not self.all_rows:
            buffers = self.rest_states[0] if self.rest_states else []
            _update.sgd_foreach(self.rest_params, rest_grads, buffers, **options)
        if self.launch is not None:
            self.launch.sgd(**options)
