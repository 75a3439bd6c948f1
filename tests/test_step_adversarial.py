"""Adversarial checks of the step wrapper, grad mode and the kept kernel plan.

The step wrapper of our optimizers replaces PyTorch's: it must observe the
hooks, the profiler and the grad mode as ``torch.optim`` does, so each such
test runs the same scenario on a ``torch.optim`` twin and on ours. The kernel
tests drive the default CPU path (a kept plan, the serial kernel called
through ctypes, small steps cut into chunks of 4096 elements and up) next to
the per-tensor loop (``foreach=False``): ``max |a - b| <= tol * max |b|`` per
tensor, ``tol`` 1e-6 in float32 and 1e-12 in float64.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from closeness import assert_near, assert_same_run
from forking import in_child
from weightdecay import SGDW, AdamW, _kernels

needs_kernels = pytest.mark.skipif(
    not _kernels.available(), reason="numba is not installed"
)

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}

# Ours and the torch.optim class whose step wrapper, hooks and grad mode
# ours must reproduce.
TWINS = [(AdamW, torch.optim.AdamW), (SGDW, torch.optim.SGD)]
TWIN_IDS = ["AdamW", "SGDW"]


def one_param(cls: type) -> tuple[torch.optim.Optimizer, torch.nn.Parameter]:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    param.grad = torch.tensor([0.5, 0.5, -0.5])
    return cls([param], lr=0.1, weight_decay=0.0), param


def make_params(
    shapes: list, dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
        for shape in shapes
    ]


def set_grads(params: list, t: int) -> None:
    generator = torch.Generator().manual_seed(1000 + t)
    for param in params:
        wide = torch.complex128 if param.is_complex() else torch.float64
        grad = torch.randn(param.shape, generator=generator, dtype=wide)
        param.grad = (0.1 * grad).to(param.dtype)


Hook = Callable[[torch.optim.Optimizer, list, int], None]


def pair_run(
    cls: type,
    shapes: list,
    steps: range,
    before: Hook | None = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> tuple[Any, list, Any, list]:
    """The same run, with a moving schedule, on the default path and on the
    loop; ``before(optimizer, params, t)`` runs after the gradients are set."""
    runs = []
    for impl in ({}, {"foreach": False}):
        params = make_params(shapes, dtype)
        optimizer = cls(params, **{"lr": 0.01, "weight_decay": 1e-3, **options}, **impl)
        for t in steps:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * (0.55 + 0.45 * math.cos(t))
            set_grads(params, t)
            if before is not None:
                before(optimizer, params, t)
            optimizer.step()
        runs.extend((optimizer, params))
    return tuple(runs)


def assert_planned(optimizer: torch.optim.Optimizer) -> None:
    plans = optimizer.__dict__.get("_plans", {})
    for group in optimizer.param_groups:
        assert id(group) in plans and plans[id(group)].group is group


# 1. The step's profiler label, for every observer that torch.optim serves.


@pytest.mark.parametrize(("ours", "theirs"), TWINS, ids=TWIN_IDS)
def test_execution_trace_observer_records_the_step(ours, theirs, tmp_path):
    """An ``ExecutionTraceObserver`` running without the profiler records
    every ``record_function`` label, so torch.optim's step appears in the
    trace as ``Optimizer.step#<class>.step``; ours must appear too."""

    def traced_names(cls: type) -> list[str]:
        optimizer, _ = one_param(cls)
        path = tmp_path / f"{cls.__module__}.{cls.__name__}.json"
        observer = torch.profiler.ExecutionTraceObserver()
        observer.register_callback(str(path))
        observer.start()
        try:
            optimizer.step()
        finally:
            observer.stop()
            observer.unregister_callback()
        nodes = json.loads(path.read_text())["nodes"]
        return [node["name"] for node in nodes if "Optimizer.step" in node["name"]]

    assert traced_names(theirs) == [f"Optimizer.step#{theirs.__name__}.step"]
    assert traced_names(ours) == [f"Optimizer.step#{ours.__name__}.step"]


@pytest.mark.parametrize(("ours", "theirs"), TWINS, ids=TWIN_IDS)
def test_profiler_of_all_threads_sees_a_step_from_another_thread(ours, theirs):
    """A profiler started with ``profile_all_threads`` records the labels of
    every thread, so torch.optim's step taken in a worker thread shows; ours
    must show too, although the worker's own profiler state reads off."""

    try:
        config = torch.profiler._ExperimentalConfig(profile_all_threads=True)
    except TypeError:
        pytest.skip("this PyTorch's profiler has no profile_all_threads option")

    def profiled_names(cls: type) -> set[str]:
        optimizer, _ = one_param(cls)
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            experimental_config=config,
        ) as profiler:
            worker = threading.Thread(target=optimizer.step)
            worker.start()
            worker.join()
        return {event.name for event in profiler.events()}

    assert f"Optimizer.step#{theirs.__name__}.step" in profiled_names(theirs)
    assert f"Optimizer.step#{ours.__name__}.step" in profiled_names(ours)


# 2. Hooks at the edges, side by side with torch.optim.


def self_removing_hooks(optimizer: torch.optim.Optimizer) -> list:
    log: list = []
    handles: dict[str, Any] = {}

    def pre(opt, args, kwargs):
        log.append("pre")
        handles["pre"].remove()

    def post(opt, args, kwargs):
        log.append("post")
        handles["post"].remove()

    handles["pre"] = optimizer.register_step_pre_hook(pre)
    handles["post"] = optimizer.register_step_post_hook(post)
    optimizer.step()
    optimizer.step()
    return log


def pre_hook_registers_post_hook(optimizer: torch.optim.Optimizer) -> list:
    log: list = []

    def pre(opt, args, kwargs):
        if not log:
            log.append("pre")
            opt.register_step_post_hook(lambda o, a, k: log.append("late post"))

    optimizer.register_step_pre_hook(pre)
    optimizer.step()
    optimizer.step()
    return log


def closure_registers_post_hooks(optimizer: torch.optim.Optimizer) -> list:
    """No pre-hook at all (our wrapper's shortcut), post-hooks added during
    the step: they run after this very step."""
    log: list = []
    handles = []

    def closure():
        if not handles:
            optimizer.register_step_post_hook(lambda o, a, k: log.append("post"))
            handles.append(
                register_optimizer_step_post_hook(lambda o, a, k: log.append("gpost"))
            )
        log.append("closure")
        return 2.5

    try:
        log.append(optimizer.step(closure))
        log.append(optimizer.step())
    finally:
        for handle in handles:
            handle.remove()
    return log


def global_pre_hook_adds_instance_pre_hook(optimizer: torch.optim.Optimizer) -> list:
    log: list = []

    def global_pre(opt, args, kwargs):
        if opt is optimizer and not log:
            log.append("global pre")
            opt.register_step_pre_hook(lambda o, a, k: log.append("instance pre"))

    handle = register_optimizer_step_pre_hook(global_pre)
    try:
        optimizer.step()
    finally:
        handle.remove()
    optimizer.step()
    return log


def arguments_replaced_by_a_list(optimizer: torch.optim.Optimizer) -> list:
    log: list = []

    def pre(opt, args, kwargs):
        return [opt], {"closure": lambda: 7.0}

    def post(opt, args, kwargs):
        log.append((type(args).__name__, len(args), sorted(kwargs)))

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)
    log.append(optimizer.step())
    return log


HOOK_SCENARIOS = {
    "self_removing": (self_removing_hooks, ["pre", "post"]),
    "pre_registers_post": (
        pre_hook_registers_post_hook,
        ["pre", "late post", "late post"],
    ),
    "closure_registers_post": (
        closure_registers_post_hooks,
        ["closure", "post", "gpost", 2.5, "post", "gpost", None],
    ),
    "global_adds_instance": (
        global_pre_hook_adds_instance_pre_hook,
        ["global pre", "instance pre", "instance pre"],
    ),
    "list_arguments": (arguments_replaced_by_a_list, [("list", 1, ["closure"]), 7.0]),
}


@pytest.mark.parametrize("scenario", HOOK_SCENARIOS)
@pytest.mark.parametrize(("ours", "theirs"), TWINS, ids=TWIN_IDS)
def test_hook_edge_cases_run_as_in_torch(ours, theirs, scenario):
    function, expected = HOOK_SCENARIOS[scenario]
    logs = [function(one_param(cls)[0]) for cls in (theirs, ours)]
    assert logs[0] == expected
    assert logs[1] == logs[0]


class PlainAdamW(AdamW):
    """A subclass that keeps the inherited step."""


class OverridingAdamW(AdamW):
    """A subclass whose step calls the inherited one."""

    def step(self, closure=None):
        return super().step(closure)


class PlainTorchAdamW(torch.optim.AdamW):
    pass


class OverridingTorchAdamW(torch.optim.AdamW):
    def step(self, closure=None):
        return super().step(closure)


def test_subclasses_run_hooks_and_label_as_torch_subclasses():
    """Each class's step is wrapped once: a subclass of ours runs its hooks
    as many times per step as the same subclass of torch.optim.AdamW, and is
    profiled under its own name."""
    one_param(AdamW), one_param(torch.optim.AdamW)  # the bases wrapped first
    counts = {}
    for cls in (PlainAdamW, OverridingAdamW, PlainTorchAdamW, OverridingTorchAdamW):
        optimizer, param = one_param(cls)
        calls = []
        optimizer.register_step_pre_hook(lambda o, a, k, c=calls: c.append("pre"))
        optimizer.register_step_post_hook(lambda o, a, k, c=calls: c.append("post"))
        before = param.detach().clone()
        optimizer.step()
        assert not torch.equal(param.detach(), before)
        counts[cls.__name__] = len(calls)
        assert getattr(cls.step, "hooked", False)
    assert counts["PlainAdamW"] == counts["PlainTorchAdamW"] == 2
    assert counts["OverridingAdamW"] == counts["OverridingTorchAdamW"]

    optimizer, _ = one_param(PlainAdamW)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        optimizer.step()
    assert "Optimizer.step#PlainAdamW.step" in {event.name for event in p.events()}


# 3. Grad mode around closures that misbehave.


@pytest.mark.parametrize(("ours", "theirs"), TWINS, ids=TWIN_IDS)
def test_grad_mode_after_a_closure_switches_it_off_or_raises(ours, theirs):
    """A closure that switches grad mode off, and one that then raises, leave
    the caller's mode as torch.optim leaves it."""

    def switch_off():
        torch.set_grad_enabled(False)
        return 1.0

    def switch_off_and_raise():
        torch.set_grad_enabled(False)
        raise ValueError("closure failed")

    results = []
    for cls in (theirs, ours):
        optimizer, param = one_param(cls)
        modes = []
        for outer in (True, False):
            with torch.set_grad_enabled(outer):
                optimizer.step(switch_off)
                modes.append(torch.is_grad_enabled())
                with pytest.raises(ValueError, match="closure failed"):
                    optimizer.step(switch_off_and_raise)
                modes.append(torch.is_grad_enabled())
        results.append(modes)
        assert param.grad_fn is None
    assert results[0] == [True, True, False, False]
    assert results[1] == results[0]


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_step_under_inference_mode_matches_the_loop(cls):
    """Under ``torch.inference_mode`` the closure still runs with grad
    enabled and the update on the kernel path equals the loop's."""
    modes = []

    def step_in_inference(optimizer, params, t):
        def closure():
            modes.append(torch.is_grad_enabled())
            return 0.0

        if t == 3:
            with torch.inference_mode():
                optimizer.step(closure)

    fast, fp, loop, lp = pair_run(
        cls, [(5, 5), (7,), (1,)], range(1, 6), before=step_in_inference
    )
    assert modes == [True, True]
    assert fast.state[fp[0]]["step"] == 6
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


# 4. State changed between steps behind the plan.


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_state_dicts_swapped_and_state_replaced_wholesale(cls):
    """Two same-shape parameters' state dicts swapped, ``optimizer.state``
    replaced by a new mapping of the same dicts, then by one of scaled
    copies: the next steps read the state the loop reads."""

    def change(optimizer, params, t):
        state = optimizer.state
        if t == 3:
            state[params[0]], state[params[1]] = state[params[1]], state[params[0]]
            state[params[0]]["step"] += 2
        elif t == 4:
            optimizer.state = defaultdict(dict, state)
        elif t == 6:
            optimizer.state = defaultdict(
                dict,
                {
                    p: {k: v * 0.5 if torch.is_tensor(v) else v for k, v in d.items()}
                    for p, d in state.items()
                },
            )

    options = {"momentum": 0.9} if cls is SGDW else {"amsgrad": True}
    fast, fp, loop, lp = pair_run(
        cls, [(5, 5), (5, 5), (7,), (1,)], range(1, 9), before=change, **options
    )
    assert fast.state[fp[0]]["step"] == 8 + 2
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
def test_momentum_buffer_replaced_by_a_float64_tensor():
    """A float32 parameter's momentum buffer replaced by a float64 copy
    leaves the kernel's rows; that row steps on PyTorch's kernels as the
    loop does, the others stay on the kernel."""

    def widen(optimizer, params, t):
        if t == 4:
            state = optimizer.state[params[0]]
            state["momentum_buffer"] = state["momentum_buffer"].double()

    fast, fp, loop, lp = pair_run(
        SGDW, [(5, 5), (7,), (1,)], range(1, 8), before=widen, momentum=0.9
    )
    assert fast.state[fp[0]]["momentum_buffer"].dtype == torch.float64
    assert_planned(fast)
    plan = next(iter(fast._plans.values()))
    assert plan.rows == [False, True, True]
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_options_alternating_every_step_under_a_kept_plan(cls, dtype):
    """Flags and coefficients that flip on alternate steps, out of phase
    (the kernel's scalars are rewritten only when they change), take effect
    at each step."""

    def flip(optimizer, params, t):
        group = optimizer.param_groups[0]
        group["maximize"] = t % 2 == 0
        group["weight_decay"] = 0.0 if t % 3 == 0 else 2e-3
        if cls is AdamW:
            group["eps"] = 1e-8 if t % 4 < 2 else 1e-3
            group["betas"] = (0.9, 0.999) if t % 5 else (0.5, 0.9)
        else:
            group["nesterov"] = t % 4 < 2
            group["momentum"] = 0.9 if t % 5 else 0.5

    options = {"momentum": 0.9} if cls is SGDW else {}
    fast, fp, loop, lp = pair_run(
        cls, [(5, 5), (7,), (1,)], range(1, 13), before=flip, dtype=dtype, **options
    )
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[dtype])


@pytest.mark.parametrize("impl", [{}, {"foreach": False}], ids=["default", "loop"])
def test_resumed_from_torch_adamw_state_with_tensor_step_counts(impl):
    """AdamW with ``decay_scaling="lr"`` continuing from torch.optim.AdamW's
    state (its step counts are float32 tensors) follows torch.optim.AdamW,
    which reads a tensor count as a Python number, to float64 rounding."""
    dtype = torch.float64
    shapes = [(5, 5), (7,), (1,)]
    theirs_params = make_params(shapes, dtype)
    theirs = torch.optim.AdamW(theirs_params, lr=0.01, weight_decay=0.1)
    for t in (1, 2, 3):
        set_grads(theirs_params, t)
        theirs.step()
    ours_params = [torch.nn.Parameter(p.detach().clone()) for p in theirs_params]
    ours = AdamW(ours_params, lr=0.01, weight_decay=0.1, decay_scaling="lr", **impl)
    for mine, source in zip(ours_params, theirs_params, strict=True):
        ours.state[mine] = {k: v.clone() for k, v in theirs.state[source].items()}
    assert torch.is_tensor(ours.state[ours_params[0]]["step"])
    for t in range(4, 9):
        for optimizer, params in ((theirs, theirs_params), (ours, ours_params)):
            optimizer.param_groups[0]["lr"] = 0.01 * (0.55 + 0.45 * math.cos(t))
            set_grads(params, t)
            optimizer.step()
    for mine, source in zip(ours_params, theirs_params, strict=True):
        assert_near(mine.detach(), source.detach(), TOL[dtype])


def negated_view_grad(numel: int, t: int) -> torch.Tensor:
    """A contiguous gradient that holds ``-x`` as ``x`` and the negative bit
    (a lazy negation): the imaginary part of a conjugated complex tensor,
    contiguous when it has one element; ``torch._neg_view`` for more."""
    values = torch.linspace(-1.0, 1.0, numel) * 0.1 * t
    if numel == 1:
        grad = torch.complex(torch.zeros(1), values).conj().imag
    else:
        grad = torch._neg_view(values)
    assert grad.is_neg() and grad.is_contiguous()
    assert torch.equal(grad, -values)
    return grad


@needs_kernels
@pytest.mark.parametrize("numel", [1, 9])
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_gradient_with_the_negative_bit(cls, numel):
    """A gradient whose values are its memory negated (the negative bit)
    steps the parameter by its values, as the loop and torch.optim do."""
    runs = []
    for impl in ({}, {"foreach": False}):
        params = make_params([(numel,)])
        optimizer = cls(params, lr=0.1, weight_decay=1e-3, **impl)
        for t in (1, 2, 3):
            params[0].grad = negated_view_grad(numel, t)
            optimizer.step()
        runs.extend((optimizer, params))
    assert_same_run(*runs, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_state_tensor_with_the_negative_bit(cls):
    """State tensors replaced by lazily negated views of other memory (the
    negative bit) are read and written through their values, as the loop
    does."""
    key = "momentum_buffer" if cls is SGDW else "exp_avg"

    def negate(optimizer, params, t):
        if t == 3:
            state = optimizer.state[params[0]]
            state[key] = torch._neg_view(-state[key])
            # One element: the public way, the imaginary part of a conjugate.
            state = optimizer.state[params[2]]
            imaginary = torch.complex(torch.zeros(1), -state[key])
            state[key] = imaginary.conj().imag
            for param in (params[0], params[2]):
                tensor = optimizer.state[param][key]
                assert tensor.is_neg() and tensor.is_contiguous()

    options = {"momentum": 0.9} if cls is SGDW else {}
    fast, fp, loop, lp = pair_run(
        cls, [(5, 5), (7,), (1,)], range(1, 6), before=negate, **options
    )
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


def outcome(run: Callable[[], Any]) -> Any:
    """``run()``, or the type and message of the exception it raised."""
    try:
        return run()
    except Exception as error:  # compared between the two paths
        return type(error), str(error)


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
@pytest.mark.parametrize(
    "count", [2.5, torch.tensor(2.5), 3.0, torch.tensor(3.0)], ids=repr
)
def test_step_count_set_in_place_under_a_kept_plan(cls, count):
    """A step count written into the existing state dict (the plan keeps
    the dict) as a float or a tensor, whole or not, is treated by the
    default path exactly as by the loop: the same error, or the same run."""

    def set_count(optimizer, params, t):
        if t == 4:
            value = count.clone() if torch.is_tensor(count) else count
            optimizer.state[params[0]]["step"] = value

    results = []
    for impl in ({}, {"foreach": False}):

        def run(impl=impl):
            params = make_params([(5, 5), (7,), (1,)])
            optimizer = cls(params, lr=0.01, weight_decay=1e-3, **impl)
            for t in range(1, 7):
                set_grads(params, t)
                set_count(optimizer, params, t)
                optimizer.step()
            return optimizer, params

        results.append(outcome(run))
    fast, loop = results
    if isinstance(loop[0], type):  # the loop refused the count
        assert fast == loop
        return
    assert not isinstance(fast[0], type), fast
    assert float(fast[0].state[fast[1][0]]["step"]) == float(
        loop[0].state[loop[1][0]]["step"]
    )
    for pa, pb in zip(fast[1], loop[1], strict=True):
        assert_near(pa.detach(), pb.detach(), TOL[torch.float32])


# 5. The kernel's calls: chunk boundaries, threads, fork.


BOUNDARY_SIZES = [[4096], [16383], [16384], [65536], [65537], [1, 4095, 12288, 4097]]


@needs_kernels
@pytest.mark.parametrize("numels", BOUNDARY_SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_chunk_boundary_sizes_on_pytorchs_team(cls, dtype, numels):
    """Steps whose sizes (in real elements) sit on the chunk sizes (4096,
    65536) and on the parallel threshold (2^14), run on PyTorch's OpenMP
    team of two, equal the loop."""
    if _kernels._openmp() is None:
        pytest.skip("PyTorch's OpenMP runtime was not found here")
    if dtype.is_complex and any(n % 2 for n in numels):
        numels = [n + n % 2 for n in numels]  # whole complex elements
    chunks = _kernels._chunk_table(numels)
    runs = len(_kernels._bounds(chunks, threads=2)) - 1
    assert (runs > 1) is (sum(numels) >= _kernels._PARALLEL_MIN_OPENMP)
    options = {"momentum": 0.9, "nesterov": True} if cls is SGDW else {}
    if cls is AdamW:
        options["amsgrad"] = True
    shapes = [(n // 2 if dtype.is_complex else n,) for n in numels]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast, fp, loop, lp = pair_run(cls, shapes, range(1, 4), dtype=dtype, **options)
    finally:
        torch.set_num_threads(threads)
    assert_planned(fast)
    real = torch.float64 if dtype is torch.float64 else torch.float32
    assert_same_run(fast, fp, loop, lp, TOL[real])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
@pytest.mark.parametrize("threads", [1, 2])
def test_empty_parameters_beside_others_and_alone(cls, threads):
    """Parameters without elements (no chunk of their own) in a group with
    others, small or on the team, and in a group of their own, step as the
    loop steps them."""
    shapes = [(0,), (5, 5), (0, 3), (20000,), (1,), (0,)]
    options = {"momentum": 0.9} if cls is SGDW else {"amsgrad": True}
    runs = []
    for impl in ({}, {"foreach": False}):
        params = make_params(shapes)
        groups = [{"params": params[:5]}, {"params": params[5:]}]
        optimizer = cls(groups, lr=0.01, weight_decay=1e-3, **options, **impl)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for t in range(1, 5):
                set_grads(params, t)
                optimizer.step()
        finally:
            torch.set_num_threads(previous)
        runs.append((optimizer, params))
    (fast, fp), (loop, lp) = runs
    assert_planned(fast)
    for index in (0, 2, 5):
        assert fp[index].shape == shapes[index]
        assert fast.state[fp[index]]["step"] == loop.state[lp[index]]["step"] == 4
    full = [1, 3, 4]
    assert_same_run(
        fast, [fp[i] for i in full], loop, [lp[i] for i in full], TOL[torch.float32]
    )


@needs_kernels
def test_serial_steps_from_two_threads_at_once_match_the_loop():
    """Small steps run in the calling thread through ctypes, which releases
    the GIL: two threads stepping their own optimizers at once each match
    the loop."""
    shapes = [(33, 17), (300,), (1,)]
    assert sum(math.prod(s) for s in shapes) < _kernels._PARALLEL_MIN_OPENMP
    steps = range(1, 41)
    runs = [(cls, make_params(shapes, seed=i)) for i, cls in enumerate((AdamW, SGDW))]
    optimizers: list = [None, None]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(index: int) -> None:
        try:
            cls, params = runs[index]
            optimizers[index] = optimizer = cls(params, lr=0.01, weight_decay=1e-3)
            start.wait()
            for t in steps:
                set_grads(params, t)
                optimizer.step()
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    for index, (cls, params) in enumerate(runs):
        loop_params = make_params(shapes, seed=index)
        loop = cls(loop_params, lr=0.01, weight_decay=1e-3, foreach=False)
        for t in steps:
            set_grads(loop_params, t)
            loop.step()
        assert_planned(optimizers[index])
        assert_same_run(optimizers[index], params, loop, loop_params, 1e-6)


@needs_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_serial_kernel_steps_in_a_forked_child(cls):
    """The serial kernel, called through the ctypes entry the parent made,
    steps a forked child's copy of the parameters as the parent's own step
    does. The child runs the kept plan and numpy only."""
    assert torch.get_num_threads() == 1
    params = make_params([(5, 5), (7,), (1,)])
    optimizer = cls(params, lr=0.01, weight_decay=1e-3)
    for t in (1, 2, 3):
        set_grads(params, t)
        if t < 3:
            optimizer.step()
    assert_planned(optimizer)

    def child_step() -> float:
        optimizer.step()
        return float(sum(p.detach().numpy().astype("float64").sum() for p in params))

    code, child_sum = in_child(child_step)
    optimizer.step()
    parent_sum = sum(p.detach().double().sum().item() for p in params)
    assert code == 0
    assert child_sum == parent_sum
