"""The default CPU path (multi-tensor kernels) against the per-tensor loop.

Each test says what it must show. Comparisons are scale-relative:
``max |a - b| <= tol * max |b|`` per tensor, with ``tol`` 1e-6 in float32 and
1e-12 in float64; round trips and fallbacks that must be exact use
``torch.equal``.
"""

from __future__ import annotations

import copy
import io
import math
import multiprocessing
import sys
import threading

import numpy as np
import pytest
import torch

from closeness import assert_near, assert_same_run, assert_same_state
from weightdecay import SGD, SGDW, Adam, AdamW, _kernels, _update

needs_kernels = pytest.mark.skipif(
    not _kernels.available(), reason="numba is not installed"
)

SHAPES = [(7,), (3, 100), (1,), (33, 64)]
STEPS = 8
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def eta(t: int) -> float:
    """A schedule multiplier that moves every step (cosine with a restart)."""
    return 0.5 * (1 + math.cos(math.pi * (t % 5) / 5)) + 0.05


def make_params(dtype: torch.dtype, shapes=SHAPES, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
        for shape in shapes
    ]


def set_grads(params: list, t: int, none: set[tuple[int, int]] = frozenset()) -> None:
    """Deterministic gradients for step ``t``; ``(t, i)`` in ``none`` -> None."""
    generator = torch.Generator().manual_seed(1000 + t)
    for i, param in enumerate(params):
        grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        param.grad = None if (t, i) in none else grad.to(param.dtype) * 0.1


def run(make, params, steps=range(1, STEPS + 1), none=frozenset(), alpha=0.01):
    """Drive ``make(params)`` through ``steps`` with a moving schedule."""
    optimizer = make(params)
    for t in steps:
        for group in optimizer.param_groups:
            group["lr"] = alpha * eta(t)
        set_grads(params, t, none)
        optimizer.step()
    return optimizer


ADAM_CASES = [
    (cls, amsgrad, maximize, wd)
    for cls in (Adam, AdamW)
    for amsgrad in (False, True)
    for maximize in (False, True)
    for wd in (0.0, 0.005)
]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cls", "amsgrad", "maximize", "wd"), ADAM_CASES)
def test_adam_kernel_matches_loop(cls, amsgrad, maximize, wd, dtype):
    """Default (kernel) Adam/AdamW equals the loop under a moving schedule."""

    def make(impl):
        return lambda ps: cls(
            ps, lr=0.01, weight_decay=wd, amsgrad=amsgrad, maximize=maximize, **impl
        )

    loop_params, fast_params = make_params(dtype), make_params(dtype)
    loop = run(make({"foreach": False, "fused": False}), loop_params)
    fast = run(make({}), fast_params)
    assert fast._implementation(fast.param_groups[0], fast_params, 0.01, 0.0) is (
        _kernels.Plan
    )
    assert_same_run(fast, fast_params, loop, loop_params, TOL[dtype])


SGD_CASES = [
    (cls, momentum, nesterov, maximize, wd)
    for cls in (SGD, SGDW)
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True))
    for maximize in (False, True)
    for wd in (0.0, 0.005)
]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cls", "momentum", "nesterov", "maximize", "wd"), SGD_CASES)
def test_sgd_kernel_matches_loop(cls, momentum, nesterov, maximize, wd, dtype):
    """Default (kernel) SGD/SGDW equals the loop, learning rate in the buffer."""

    def make(foreach):
        return lambda ps: cls(
            ps,
            lr=0.01,
            momentum=momentum,
            weight_decay=wd,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
        )

    loop_params, fast_params = make_params(dtype), make_params(dtype)
    loop = run(make(False), loop_params)
    fast = run(make(None), fast_params)
    assert_same_run(fast, fast_params, loop, loop_params, TOL[dtype])


@pytest.fixture(params=["openmp", "team"])
def parallel_runner(request, monkeypatch):
    """Large steps on PyTorch's OpenMP threads, or on the helper team."""
    if request.param == "openmp":
        if _kernels._openmp() is None:
            pytest.skip("PyTorch's OpenMP runtime was not found here")
    else:
        monkeypatch.setattr(_kernels, "_openmp_state", [None])
    return request.param


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_parallel_kernel_matches_loop(cls, parallel_runner):
    """Large steps run on two threads in chunks; the result does not change."""
    shapes = [(3,), (700, 500), (70_001,)]  # above the serial threshold
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loop_params = make_params(torch.float32, shapes)
        fast_params = make_params(torch.float32, shapes)
        steps = range(1, 4)
        loop = run(
            lambda ps: cls(ps, lr=0.01, weight_decay=1e-3, foreach=False),
            loop_params,
            steps,
        )
        fast = run(lambda ps: cls(ps, lr=0.01, weight_decay=1e-3), fast_params, steps)
    finally:
        torch.set_num_threads(threads)
    assert sum(p.numel() for p in fast_params) >= _kernels._PARALLEL_MIN
    assert_same_run(fast, fast_params, loop, loop_params, TOL[torch.float32])


ALL_DEFAULTS = {
    "Adam": lambda ps: Adam(ps, lr=0.01, weight_decay=0.01, amsgrad=True),
    "AdamW": lambda ps: AdamW(ps, lr=0.01, weight_decay=1e-3),
    "SGD": lambda ps: SGD(ps, lr=0.01, weight_decay=0.01, nesterov=True),
    "SGDW": lambda ps: SGDW(ps, lr=0.01, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", ALL_DEFAULTS)
def test_state_dict_round_trip_resumes_bit_identically(name):
    """Stop after k steps, save, load into fresh objects, go on: no difference."""
    make = ALL_DEFAULTS[name]
    none = {(2, 1), (5, 3)}
    straight_params = make_params(torch.float32)
    straight = run(make, straight_params, none=none)

    first_params = make_params(torch.float32)
    first = run(make, first_params, range(1, 4), none=none)
    buffer = io.BytesIO()
    torch.save(
        {"model": [p.detach() for p in first_params], "optimizer": first.state_dict()},
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_params = [torch.nn.Parameter(p.clone()) for p in saved["model"]]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved["optimizer"])
    for t in range(4, STEPS + 1):
        for group in resumed.param_groups:
            group["lr"] = 0.01 * eta(t)
        set_grads(resumed_params, t, none)
        resumed.step()

    for pa, pb in zip(resumed_params, straight_params, strict=True):
        assert torch.equal(pa, pb)
        assert_same_state(resumed.state[pa], straight.state[pb])


@pytest.mark.parametrize("name", ALL_DEFAULTS)
def test_grad_none_params_are_skipped(name):
    """A parameter without a gradient is not stepped, decayed or counted."""
    make = ALL_DEFAULTS[name]
    params = make_params(torch.float32)
    optimizer = run(make, params, range(1, 3))
    before = [p.detach().clone() for p in params]
    state_before = {
        k: (v.clone() if torch.is_tensor(v) else v)
        for k, v in optimizer.state[params[1]].items()
    }
    for group in optimizer.param_groups:
        group["lr"] = 0.01
    set_grads(params, 3, none={(3, 1)})
    optimizer.step()
    assert torch.equal(params[1], before[1])
    assert_same_state(optimizer.state[params[1]], state_before)
    assert not torch.equal(params[0], before[0])


@pytest.mark.parametrize("name", ALL_DEFAULTS)
def test_mixed_grad_none_matches_loop(name):
    """Gradients missing at some steps: the default path tracks the loop."""
    make = ALL_DEFAULTS[name]
    none = {(1, 0), (2, 2), (3, 0), (3, 3), (6, 1)}
    loop_make = {
        "Adam": lambda ps: Adam(
            ps, lr=0.01, weight_decay=0.01, amsgrad=True, foreach=False, fused=False
        ),
        "AdamW": lambda ps: AdamW(
            ps, lr=0.01, weight_decay=1e-3, foreach=False, fused=False
        ),
        "SGD": lambda ps: SGD(
            ps, lr=0.01, weight_decay=0.01, nesterov=True, foreach=False
        ),
        "SGDW": lambda ps: SGDW(ps, lr=0.01, weight_decay=1e-3, foreach=False),
    }[name]
    fast_params, loop_params = make_params(torch.float32), make_params(torch.float32)
    fast = run(make, fast_params, none=none)
    loop = run(loop_make, loop_params, none=none)
    assert_same_run(fast, fast_params, loop, loop_params, TOL[torch.float32])


@needs_kernels
def test_per_tensor_step_counts_drive_bias_correction():
    """Tensors that skipped steps get their own bias correction in one call."""
    none = {(1, 0), (2, 0), (3, 2)}
    fast_params, loop_params = make_params(torch.float64), make_params(torch.float64)
    fast = run(lambda ps: AdamW(ps, lr=0.01, weight_decay=1e-3), fast_params, none=none)
    loop = run(
        lambda ps: AdamW(ps, lr=0.01, weight_decay=1e-3, foreach=False, fused=False),
        loop_params,
        none=none,
    )
    assert [fast.state[p]["step"] for p in fast_params] == [6, 8, 7, 8]
    assert_same_run(fast, fast_params, loop, loop_params, TOL[torch.float64])


def _spy(monkeypatch, name):
    """Record the parameter shapes that reach ``_update.<name>``."""
    calls = []
    original = getattr(_update, name)

    def spy(params, *args, **kwargs):
        calls.append([tuple(p.shape) for p in params])
        return original(params, *args, **kwargs)

    monkeypatch.setattr(_update, name, spy)
    return calls


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_non_contiguous_param_falls_back(cls, monkeypatch):
    """A transposed parameter runs on PyTorch's kernels, the rest on ours."""
    calls = _spy(monkeypatch, "adam_foreach" if cls is AdamW else "sgd_foreach")

    def fresh():
        params = make_params(torch.float32)
        params[3] = torch.nn.Parameter(params[3].detach().t())
        assert not params[3].is_contiguous()
        return params

    fast_params, loop_params = fresh(), fresh()
    fast = run(lambda ps: cls(ps, lr=0.01, weight_decay=1e-3), fast_params)
    assert calls and all(shapes == [(64, 33)] for shapes in calls)
    loop = run(
        lambda ps: cls(ps, lr=0.01, weight_decay=1e-3, foreach=False), loop_params
    )
    assert_same_run(fast, fast_params, loop, loop_params, TOL[torch.float32])


@needs_kernels
def test_non_contiguous_loaded_state_falls_back(monkeypatch):
    """State loaded as a strided tensor is never handed to the kernel."""
    params = make_params(torch.float32)
    optimizer = run(
        lambda ps: AdamW(ps, lr=0.01, weight_decay=1e-3), params, range(1, 3)
    )
    saved = copy.deepcopy(optimizer.state_dict())
    strided = copy.deepcopy(saved)
    strided["state"][3]["exp_avg"] = saved["state"][3]["exp_avg"].t().contiguous().t()
    assert not strided["state"][3]["exp_avg"].is_contiguous()
    reference_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = AdamW(reference_params, lr=0.01, weight_decay=1e-3)
    reference.load_state_dict(saved)
    reference.param_groups[0].update(foreach=False, fused=False)
    optimizer.load_state_dict(strided)
    calls = _spy(monkeypatch, "adam_foreach")
    for opt, ps in ((optimizer, params), (reference, reference_params)):
        for group in opt.param_groups:
            group["lr"] = 0.01
        set_grads(ps, 3)
        opt.step()
    assert calls == [[(33, 64)]]
    assert_same_run(optimizer, params, reference, reference_params, 1e-6)


@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_complex_params_match_loop(cls):
    """Complex parameters step as their real views, on any path."""

    def fresh():
        generator = torch.Generator().manual_seed(3)
        return [
            torch.nn.Parameter(
                torch.randn(5, 4, generator=generator, dtype=torch.complex64)
            )
        ]

    def grads(params, t):
        generator = torch.Generator().manual_seed(t)
        params[0].grad = torch.randn(5, 4, generator=generator, dtype=torch.complex64)

    results = []
    for foreach in (None, False):
        params = fresh()
        optimizer = cls(params, lr=0.01, weight_decay=1e-3, foreach=foreach)
        for t in range(1, 5):
            grads(params, t)
            optimizer.step()
        results.append(torch.view_as_real(params[0].detach()))
    assert_near(results[0], results[1], 1e-6)


class _Subclass(torch.Tensor):
    """A tensor subclass standing in for DTensor and other wrappers."""


@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_tensor_subclass_never_reaches_kernel(cls):
    """Subclassed (e.g. DTensor-like) parameters keep PyTorch's paths."""
    param = torch.nn.Parameter(torch.randn(4, 4).as_subclass(_Subclass))
    assert not _kernels.applies([param])
    reference = torch.nn.Parameter(param.detach().clone().as_subclass(torch.Tensor))
    for p in (param, reference):
        optimizer = cls([p], lr=0.01, weight_decay=1e-3, foreach=None)
        for t in range(1, 4):
            generator = torch.Generator().manual_seed(t)
            p.grad = torch.randn(4, 4, generator=generator)
            optimizer.step()
    assert_near(param.detach().as_subclass(torch.Tensor), reference.detach(), 1e-6)


def test_kernels_do_not_apply_off_the_cpu_or_to_low_precision():
    """CUDA-like (here: meta) and half-precision parameters keep torch's kernels."""
    assert not _kernels.applies([torch.empty(3, device="meta")])
    assert not _kernels.applies([torch.empty(3, dtype=torch.bfloat16)])
    assert not _kernels.applies([torch.empty(3, dtype=torch.float16)])
    assert not _kernels.applies([])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_default_is_torch_fused(dtype):
    """bf16/fp16 AdamW by default runs exactly PyTorch's fused kernel."""
    results = []
    for impl in ({}, {"fused": True}):
        params = make_params(dtype)
        run(lambda ps, impl=impl: AdamW(ps, lr=0.01, weight_decay=1e-3, **impl), params)
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_without_numba_the_default_is_torch(monkeypatch):
    """Where numba is missing the default falls back to PyTorch's kernels."""
    monkeypatch.setattr(_kernels, "_compiled", None)
    monkeypatch.setattr(_kernels, "_import_failed", True)
    assert not _kernels.available()
    for cls, reference in ((AdamW, {"fused": True}), (SGDW, {"foreach": True})):
        results = []
        for impl in ({}, reference):
            params = make_params(torch.float32)
            run(
                lambda ps, impl=impl, cls=cls: cls(
                    ps, lr=0.01, weight_decay=1e-3, **impl
                ),
                params,
            )
            results.append(params)
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)


@needs_kernels
def test_mixed_dtypes_in_one_group_match_loop():
    """float32 and float64 in one group: the other dtype falls back."""

    def fresh():
        params = make_params(torch.float32)
        params[1] = torch.nn.Parameter(params[1].detach().double())
        return params

    fast_params, loop_params = fresh(), fresh()
    fast = run(lambda ps: AdamW(ps, lr=0.01, weight_decay=1e-3), fast_params)
    loop = run(
        lambda ps: AdamW(ps, lr=0.01, weight_decay=1e-3, foreach=False, fused=False),
        loop_params,
    )
    assert_same_run(fast, fast_params, loop, loop_params, 1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_with_strided_param_matches_loop(amsgrad):
    """fused=True sends a transposed parameter's row to the multi-tensor path.

    PyTorch's CPU fused Adam kernels walk memory linearly, which updates the
    wrong elements of a non-contiguous parameter.
    """

    def fresh():
        params = make_params(torch.float32)
        params[3] = torch.nn.Parameter(params[3].detach().t())
        return params

    results = []
    for impl in ({"fused": True}, {"foreach": False, "fused": False}):
        params = fresh()
        optimizer = run(
            lambda ps, impl=impl: AdamW(
                ps, lr=0.01, weight_decay=1e-3, amsgrad=amsgrad, **impl
            ),
            params,
        )
        results.append((optimizer, params))
    assert_same_run(*results[0], *results[1], TOL[torch.float32])


@pytest.mark.parametrize(
    "numels", [[1], [100_000], [12_500] * 8, [3, 70_001, 5], [1_000_000, 7]]
)
def test_chunks_cover_every_element_once_and_split_small_steps(numels):
    """The chunk table tiles each tensor; a small step still splits evenly."""
    chunks = _kernels._chunk_table(numels)
    for index, numel in enumerate(numels):
        mine = chunks[chunks[:, 0] == index]
        assert mine[0, 1] == 0 and mine[-1, 2] == numel
        assert (mine[1:, 1] == mine[:-1, 2]).all()  # contiguous, no overlap
        assert (mine[:, 1] % _kernels._CHUNK_MIN == 0).all()
    sizes = chunks[:, 2] - chunks[:, 1]
    assert sizes.max() <= _kernels._CHUNK
    bounds = _kernels._bounds(chunks, threads=2)
    if sum(numels) >= 100_000 and _kernels._openmp() is not None:
        # Four runs for two threads, none over a third of the step.
        runs = [sizes[a:b].sum() for a, b in zip(bounds, bounds[1:], strict=False)]
        assert len(runs) == 4
        assert max(runs) <= sum(numels) / 3


def test_team_runs_every_share_once_and_in_parallel_threads():
    """Each share runs exactly once, whichever thread claims it."""
    team = _kernels._Team(3)
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    def kernel(share, scale):
        with lock:
            seen.append((int(share[0]) * scale, threading.current_thread().name))

    for _ in range(50):
        seen.clear()
        team.run(kernel, [np.array([i]) for i in range(7)], (10,))
        assert sorted(value for value, _ in seen) == [10 * i for i in range(7)]


def test_team_reraises_a_share_error_and_stays_usable():
    """An exception in any share reaches the caller; the next call works."""
    team = _kernels._Team(1)

    def kernel(share):
        if int(share[0]) == 3:
            raise ValueError("share 3 failed")

    for _ in range(5):
        with pytest.raises(ValueError, match="share 3 failed"):
            team.run(kernel, [np.array([i]) for i in range(4)], ())
    done = []
    team.run(lambda share: done.append(int(share[0])), [np.array([0])] * 2, ())
    assert done == [0, 0]


@needs_kernels
def test_concurrent_steps_from_two_threads_match_loop(parallel_runner):
    """Two optimizers stepped at once from two threads: both stay exact.

    The second caller finds the helper threads busy and computes serially.
    """
    shapes = [(700, 500)]  # above the serial threshold: the team is used
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pairs = []
        for cls in (AdamW, SGDW):
            fast_params = make_params(torch.float32, shapes)
            fast = cls(fast_params, lr=0.01, weight_decay=1e-3)
            pairs.append((cls, fast, fast_params))

        def drive(optimizer, params):
            for t in range(1, 6):
                set_grads(params, t)
                optimizer.step()

        workers = [
            threading.Thread(target=drive, args=(opt, ps)) for _, opt, ps in pairs
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        for cls, fast, fast_params in pairs:
            loop_params = make_params(torch.float32, shapes)
            loop = cls(loop_params, lr=0.01, weight_decay=1e-3, foreach=False)
            drive(loop, loop_params)
            assert_same_run(fast, fast_params, loop, loop_params, TOL[torch.float32])
    finally:
        torch.set_num_threads(threads)


def _step_in_child(optimizer, params, queue) -> None:
    # PyTorch's OpenMP pool can hang in a forked child once the parent has
    # used it, so the child runs no torch operator: the plan made by the
    # parent still holds, the step is the kernel alone, the sum is numpy's.
    inherited = _kernels._team
    optimizer.step()
    queue.put((inherited is None, float(params[0].detach().numpy().sum())))


@needs_kernels
def test_kernel_steps_in_a_forked_child_after_the_parent_used_threads(monkeypatch):
    """A child forked after a parallel step starts helper threads of its own.

    (The helper team is the parallel runner where PyTorch's OpenMP runtime
    is not found; the OpenMP runtime itself is not fork-safe.)
    """
    monkeypatch.setattr(_kernels, "_openmp_state", [None])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        params = make_params(torch.float32, [(700, 500)])
        optimizer = AdamW(params, lr=0.01, weight_decay=1e-3)
        for t in (1, 2, 3):
            set_grads(params, t)
            if t < 3:
                optimizer.step()
        assert _kernels._team is not None  # the parent's helper threads
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_step_in_child, args=(optimizer, params, queue))
        child.start()
        forgot, child_sum = queue.get(timeout=120)
        child.join(timeout=60)
        optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert child.exitcode == 0
    assert forgot
    assert child_sum == pytest.approx(params[0].detach().sum().item(), rel=1e-6)


@needs_kernels
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="found through /proc/self/maps"
)
def test_openmp_runtime_is_pytorchs_own():
    """On Linux the kernels find the OpenMP runtime that PyTorch loaded."""
    openmp = _kernels._openmp()
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        assert openmp is None
        return
    assert openmp is not None
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(loaded) == 1  # no second copy beside PyTorch's
