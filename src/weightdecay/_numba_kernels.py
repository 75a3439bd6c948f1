"""The numba bodies of the multi-tensor kernels; imported only by ``_kernels``.

Importing this module raises ``ImportError`` where numba is missing. The
kernels are serial and release the GIL. ``_kernels`` calls the entries of
``team_entry`` (through ctypes, which costs less than numba's dispatch) in
the calling thread or on every thread of PyTorch's OpenMP team, or runs one
share of the chunks per thread of its own helper team; numba's own threading
layer is not used, so no second OpenMP runtime competes with PyTorch's for
the cores.

Each kernel receives a table of chunks (tensor index, first element, end), a
table of data addresses (one row per role: parameter, gradient, state...)
and its scalars as a one-dimensional array in the tensors' dtype, so that
every operation rounds in that dtype as PyTorch's do. Flags are loop
invariant; the compiler hoists them out of the element loop.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = [
    "HEADER_WORDS",
    "SERIAL_NUM_THREADS",
    "SERIAL_THREAD_NUM",
    "adam_chunks",
    "sgd_chunks",
    "team_entry",
]


@intrinsic
def _pointer(typingctx, address, like):  # noqa: ARG001 - numba's signature
    """The int64 ``address`` as a pointer to elements of ``like``'s dtype."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, like), codegen


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam_chunk(c, chunks, addresses, step_sizes, bias2_inverse, coefficients, flags):
    """Algorithm 2 on chunk ``c``; ``addresses`` rows: p, g, m, v, max v."""
    one_minus_beta1, beta2 = coefficients[0], coefficients[1]
    one_minus_beta2 = coefficients[2]
    eps, l2, keep = coefficients[3], coefficients[4], coefficients[5]
    amsgrad, maximize, has_l2, has_decay = flags[0], flags[1], flags[2], flags[3]
    index, start, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    param = _pointer(addresses[0, index], coefficients)
    grad = _pointer(addresses[1, index], coefficients)
    exp_avg = _pointer(addresses[2, index], coefficients)
    exp_avg_sq = _pointer(addresses[3, index], coefficients)
    max_sq = _pointer(addresses[4, index], coefficients)
    step_size, bias2_inv = step_sizes[index], bias2_inverse[index]
    for j in range(start, end):
        g = -grad[j] if maximize else grad[j]
        theta = param[j]

        # L2: g + lambda * theta_{t-1}.
        if has_l2:
            g = g + l2 * theta

        # Moments: m + (1 - b1)(g - m) as torch.lerp, v b2 + (1 - b2) g g.
        m = exp_avg[j]
        m = m + one_minus_beta1 * (g - m)
        exp_avg[j] = m
        v = exp_avg_sq[j] * beta2
        v = v + one_minus_beta2 * g * g
        exp_avg_sq[j] = v

        # Decoupled decay on the old weights.
        if has_decay:
            theta = theta * keep

        # theta += (-lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps), the division
        # by sqrt(bc2) as a multiplication by its inverse (one rounding more
        # than PyTorch's loop, one division less per element).
        if amsgrad:
            v = max(max_sq[j], v)
            max_sq[j] = v
        denom = np.sqrt(v) * bias2_inv + eps
        param[j] = theta + step_size * m / denom


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sgd_chunk(c, chunks, addresses, coefficients, flags):
    """Algorithm 1 on chunk ``c``; ``addresses`` rows: p, g, momentum."""
    lr, momentum = coefficients[0], coefficients[1]
    l2, keep = coefficients[2], coefficients[3]
    has_momentum, nesterov, maximize = flags[0], flags[1], flags[2]
    has_l2, has_decay = flags[3], flags[4]
    index, start, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    param = _pointer(addresses[0, index], coefficients)
    grad = _pointer(addresses[1, index], coefficients)
    buffer = _pointer(addresses[2, index], coefficients)
    for j in range(start, end):
        g = -grad[j] if maximize else grad[j]
        theta = param[j]

        # L2: g + lambda * theta_{t-1}.
        if has_l2:
            g = g + l2 * theta

        # m = momentum m + lr g; Nesterov steps by momentum m + lr g.
        if has_momentum:
            m = buffer[j] * momentum
            m = m + lr * g
            buffer[j] = m
            update = m * momentum + lr * g if nesterov else m
        else:
            update = g * lr

        # Decoupled decay on the old weights, then theta -= update.
        if has_decay:
            theta = theta * keep
        param[j] = theta - update


@numba.njit(cache=True, nogil=True)
def adam_chunks(chunks, addresses, step_sizes, bias2_inverse, coefficients, flags):
    """Algorithm 2 on the chunks of one thread's share, without the GIL."""
    for c in range(chunks.shape[0]):
        _adam_chunk(
            c, chunks, addresses, step_sizes, bias2_inverse, coefficients, flags
        )


@numba.njit(cache=True, nogil=True)
def sgd_chunks(chunks, addresses, coefficients, flags):
    """Algorithm 1 on the chunks of one thread's share, without the GIL."""
    for c in range(chunks.shape[0]):
        _sgd_chunk(c, chunks, addresses, coefficients, flags)


# Entry points for a parallel region of PyTorch's OpenMP runtime
# (``GOMP_parallel``): each thread of the team calls one with a pointer to a
# header of int64 words, takes its runs of the chunk table and returns. The
# header carries every address, including those of ``omp_get_thread_num``
# and ``omp_get_num_threads``, so the compiled code holds no address of this
# process and can be cached on disk.
HEADER_WORDS = 13
_INT64 = np.zeros(1, dtype=np.int64)
_FLOAT32 = np.zeros(1, dtype=np.float32)
_FLOAT64 = np.zeros(1, dtype=np.float64)


@intrinsic
def _words(typingctx, data):  # noqa: ARG001 - numba's signature
    """A ``void *`` as a pointer to int64 words."""
    pointer_type = types.CPointer(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(pointer_type))

    return pointer_type(data), codegen


@intrinsic
def _call_int(typingctx, address):  # noqa: ARG001 - numba's signature
    """Call the C function ``int f(void)`` at ``address``."""

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(ir.IntType(32), [])
        function = builder.inttoptr(args[0], function_type.as_pointer())
        return builder.call(function, [])

    return types.int32(address), codegen


def _team_runs(header):
    """This thread's first run, the step between its runs, the bounds."""
    bounds = numba.carray(_pointer(header[11], _INT64), (header[12] + 1,))
    return _call_int(header[0]), _call_int(header[1]), bounds


@numba.njit(cache=True, nogil=True)
def _adam_team(header, like):
    """This thread's runs of an Adam step. Header words: the addresses of
    omp_get_thread_num and omp_get_num_threads, of the chunks (and their
    count), of the table (its height and width), of the step sizes, bias2
    inverses, coefficients, flags and run bounds (and the number of runs)."""
    chunks = numba.carray(_pointer(header[2], _INT64), (header[3], 3))
    addresses = numba.carray(_pointer(header[4], _INT64), (header[5], header[6]))
    step_sizes = numba.carray(_pointer(header[7], like), (header[6],))
    bias2_inverse = numba.carray(_pointer(header[8], like), (header[6],))
    coefficients = numba.carray(_pointer(header[9], like), (6,))
    flags = numba.carray(_pointer(header[10], _INT64), (5,))
    me, team, bounds = _team_runs(header)
    for run in range(me, header[12], team):
        for c in range(bounds[run], bounds[run + 1]):
            _adam_chunk(
                c, chunks, addresses, step_sizes, bias2_inverse, coefficients, flags
            )


@numba.njit(cache=True, nogil=True)
def _sgd_team(header, like):
    """This thread's runs of an SGD step (header as for ``_adam_team``)."""
    chunks = numba.carray(_pointer(header[2], _INT64), (header[3], 3))
    addresses = numba.carray(_pointer(header[4], _INT64), (header[5], header[6]))
    coefficients = numba.carray(_pointer(header[9], like), (6,))
    flags = numba.carray(_pointer(header[10], _INT64), (5,))
    me, team, bounds = _team_runs(header)
    for run in range(me, header[12], team):
        for c in range(bounds[run], bounds[run + 1]):
            _sgd_chunk(c, chunks, addresses, coefficients, flags)


_team_runs = numba.njit(cache=True, nogil=True)(_team_runs)


def adam_team_float32(data):
    _adam_team(numba.carray(_words(data), (HEADER_WORDS,)), _FLOAT32)


def adam_team_float64(data):
    _adam_team(numba.carray(_words(data), (HEADER_WORDS,)), _FLOAT64)


def sgd_team_float32(data):
    _sgd_team(numba.carray(_words(data), (HEADER_WORDS,)), _FLOAT32)


def sgd_team_float64(data):
    _sgd_team(numba.carray(_words(data), (HEADER_WORDS,)), _FLOAT64)


_TEAM_ENTRIES = {
    ("adam", np.float32): adam_team_float32,
    ("adam", np.float64): adam_team_float64,
    ("sgd", np.float32): sgd_team_float32,
    ("sgd", np.float64): sgd_team_float64,
}
_team_compiled: dict = {}


def team_entry(kind: str, dtype: type) -> int:
    """The address of the compiled ``void f(void *)`` entry of ``kind``
    ("adam" or "sgd") for ``dtype``; compiled (or loaded from the disk
    cache) on first use."""
    key = (kind, dtype)
    if key not in _team_compiled:
        signature = types.void(types.voidptr)
        entry = numba.cfunc(signature, cache=True, nopython=True)
        _team_compiled[key] = entry(_TEAM_ENTRIES[key])
    return _team_compiled[key].address


# A team of one, for calling an entry outside a parallel region: with these
# in the header's first two words, the calling thread takes every run.
@numba.cfunc(types.int32(), cache=True, nopython=True)
def _thread_zero():
    return 0


@numba.cfunc(types.int32(), cache=True, nopython=True)
def _team_of_one():
    return 1


SERIAL_THREAD_NUM = _thread_zero.address
SERIAL_NUM_THREADS = _team_of_one.address
