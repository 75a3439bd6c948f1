"""The kernels' cached per-group plan against the per-tensor loop.

Each test runs the same manipulation (of parameters, state, gradients or
groups) on an optimizer on the default CPU path, whose kernel plan persists
between steps, and on one forced onto the per-tensor loop, and checks that
the two agree: scale-relative ``max |a - b| <= tol * max |b|`` with ``tol``
1e-6 in float32 and 1e-12 in float64, or ``torch.equal`` where the same path
must give the same bits.
"""

from __future__ import annotations

import copy
import gc
import io
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch

from closeness import assert_near, assert_same_run, assert_same_state
from forking import in_child
from weightdecay import SGD, SGDW, Adam, AdamW, _kernels

needs_kernels = pytest.mark.skipif(
    not _kernels.available(), reason="numba is not installed"
)

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
SHAPES = [(5, 5), (3, 8), (7,), (1,)]
FAST: dict[str, Any] = {}
LOOP = {
    Adam: {"foreach": False, "fused": False},
    AdamW: {"foreach": False, "fused": False},
    SGD: {"foreach": False},
    SGDW: {"foreach": False},
}
ALL = [Adam, AdamW, SGD, SGDW]

Hook = Callable[[torch.optim.Optimizer, list, int], None]


def make_params(
    dtype: torch.dtype = torch.float32, shapes: list = SHAPES, seed: int = 0
) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
        for shape in shapes
    ]


def set_grads(params: list, t: int, none: Callable[[int, int], bool] = None) -> None:
    """Fresh deterministic gradients for step ``t`` in each parameter's dtype;
    ``none(t, i)`` True leaves parameter ``i`` without a gradient."""
    generator = torch.Generator().manual_seed(1000 + t)
    for i, param in enumerate(params):
        wide = torch.complex128 if param.is_complex() else torch.float64
        grad = torch.randn(param.shape, generator=generator, dtype=wide)
        skip = none is not None and none(t, i)
        param.grad = None if skip else (0.1 * grad).to(param.dtype)


def build(cls: type, params: Any, impl: dict[str, Any], **options: Any):
    defaults = {"lr": 0.01, "weight_decay": 1e-3}
    if cls in (SGD, SGDW):
        defaults["lr"] = 0.05
    return cls(params, **{**defaults, **options, **impl})


def drive(
    optimizer: torch.optim.Optimizer,
    params: list,
    steps: range,
    before: Hook | None = None,
    none: Callable[[int, int], bool] | None = None,
) -> None:
    """Step with a moving schedule; ``before(opt, params, t)`` runs after the
    gradients are set and before each step."""
    for t in steps:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * (0.55 + 0.45 * math.cos(t))
        set_grads(params, t, none)
        if before is not None:
            before(optimizer, params, t)
        optimizer.step()


def twins(
    cls: type,
    steps: range = range(1, 9),
    before: Hook | None = None,
    dtype: torch.dtype = torch.float32,
    none: Callable[[int, int], bool] | None = None,
    shapes: list = SHAPES,
    **options: Any,
) -> tuple[Any, list, Any, list]:
    """The same run on the default path and on the loop."""
    fast_params = make_params(dtype, shapes)
    loop_params = make_params(dtype, shapes)
    fast = build(cls, fast_params, FAST, **options)
    loop = build(cls, loop_params, LOOP[cls], **options)
    drive(fast, fast_params, steps, before, none)
    drive(loop, loop_params, steps, before, none)
    return fast, fast_params, loop, loop_params


def assert_planned(optimizer: torch.optim.Optimizer) -> None:
    """Every group of ``optimizer`` holds a kernel plan (the path under test)."""
    plans = optimizer.__dict__.get("_plans", {})
    for group in optimizer.param_groups:
        assert id(group) in plans and plans[id(group)].group is group


def at(step: int, action: Hook) -> Hook:
    """A hook that runs ``action`` only before step ``step``."""

    def hook(optimizer: torch.optim.Optimizer, params: list, t: int) -> None:
        if t == step:
            action(optimizer, params, t)

    return hook


# 1. Parameter storage replaced between steps.


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_param_data_clone(cls):
    """``param.data = clone`` moves every parameter to new memory mid-run; the
    plan must follow it (not write into the old storage it keeps alive)."""

    def move(optimizer, params, t):
        for param in params:
            param.data = param.data.clone()

    fast, fp, loop, lp = twins(cls, before=at(4, move))
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("index", [0, 1])
def test_param_data_double_makes_group_mixed(cls, index):
    """One parameter turned float64 by ``.data = .double()`` (its state cast
    along, as a dtype change needs for Adam) makes the group mixed-dtype: the
    rows of the other dtype than the first parameter's leave the kernel (the
    float64 one, or with ``index`` 0 all the float32 ones) and both paths
    still agree."""

    def widen(optimizer, params, t):
        params[index].data = params[index].data.double()
        params[index].grad = params[index].grad.double()
        state = optimizer.state[params[index]]
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor):
                state[key] = value.double()

    fast, fp, loop, lp = twins(cls, before=at(4, widen))
    assert fp[index].dtype == torch.float64
    assert fp[1 - index].dtype == torch.float32
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
def test_param_data_double_without_state_cast_fails_like_loop():
    """Adam state left float32 under a float64 parameter is an error on the
    loop; the default path raises the same error before touching any
    parameter (the loop has already updated the parameters before it),
    rather than running the kernel on mismatched memory."""
    results = []
    for impl in (FAST, LOOP[AdamW]):
        params = make_params()
        optimizer = build(AdamW, params, impl)
        drive(optimizer, params, range(1, 4))
        params[1].data = params[1].data.double()
        set_grads(params, 4)
        before = [p.detach().clone() for p in params]
        with pytest.raises(RuntimeError) as error:
            optimizer.step()
        pairs = zip(before, params, strict=True)
        unchanged = [torch.equal(a, p.detach()) for a, p in pairs]
        results.append((str(error.value), unchanged))
    (fast_error, fast_unchanged), (loop_error, loop_unchanged) = results
    assert fast_error == loop_error
    assert fast_unchanged == [True] * len(SHAPES)
    assert loop_unchanged == [False] + [True] * (len(SHAPES) - 1)


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    )


def train(
    model, optimizer, steps: range, dtype: torch.dtype, set_to_none: bool = True
) -> None:
    """Full-batch regression steps with autograd."""
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(16, 4, generator=generator, dtype=dtype)
    targets = torch.randn(16, 2, generator=generator, dtype=dtype)
    for _ in steps:
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_module_to_float64_after_construction(cls):
    """``model.to(torch.float64)`` after some float32 steps replaces every
    parameter's storage and dtype; after the idiomatic ``load_state_dict(
    state_dict())`` (which casts the state to the parameters' dtype) the
    default path continues exactly like the loop."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        model = small_model(3)
        optimizer = build(cls, model.parameters(), impl)
        train(model, optimizer, range(3), torch.float32)
        model.to(torch.float64)
        optimizer.load_state_dict(optimizer.state_dict())
        train(model, optimizer, range(4), torch.float64)
        runs.append((optimizer, list(model.parameters())))
    (fast, fp), (loop, lp) = runs
    assert all(p.dtype == torch.float64 for p in fp)
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


# 2. State tensors and state dicts replaced or deleted.


def state_keys(cls: type) -> list[str]:
    return ["exp_avg", "exp_avg_sq"] if cls in (Adam, AdamW) else ["momentum_buffer"]


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_replace_state_tensor(cls):
    """A state tensor replaced by a new one (a scaled clone, so a stale plan
    writing the old tensor would show) is read and written by the next
    step."""

    def replace(optimizer, params, t):
        for key in state_keys(cls):
            state = optimizer.state[params[0]]
            state[key] = state[key].clone() * 0.5

    fast, fp, loop, lp = twins(cls, before=at(4, replace))
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_replace_state_dict(cls):
    """A parameter's whole state dict replaced by a copy with other values
    and an earlier step count is the state of the next step."""

    def replace(optimizer, params, t):
        old = optimizer.state[params[2]]
        new = {k: v.clone() * 2 if torch.is_tensor(v) else v for k, v in old.items()}
        new["step"] = 1
        optimizer.state[params[2]] = new

    fast, fp, loop, lp = twins(cls, before=at(4, replace))
    assert fast.state[fp[2]]["step"] == 1 + 5
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_delete_state(cls):
    """``del opt.state[p]`` restarts that parameter from fresh state (step 0,
    zero moments) on both paths."""

    def forget(optimizer, params, t):
        del optimizer.state[params[0]]

    fast, fp, loop, lp = twins(cls, before=at(5, forget))
    assert fast.state[fp[0]]["step"] == 4
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_replace_state_dict_keeping_tensors(cls):
    """A parameter's state dict replaced by a shallow copy (same tensors, an
    earlier step count) is the dict whose step count advances and whose
    count Adam's bias correction uses."""

    def replace(optimizer, params, t):
        old = optimizer.state[params[0]]
        optimizer.state[params[0]] = {**old, "step": 1}

    fast, fp, loop, lp = twins(cls, before=at(4, replace))
    assert fast.state[fp[0]]["step"] == 1 + 5
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_state_tensor_data_swap(cls):
    """A state tensor whose ``.data`` is replaced is read from its new memory."""

    def swap(optimizer, params, t):
        for key in state_keys(cls):
            tensor = optimizer.state[params[0]][key]
            tensor.data = tensor.data.clone() * 0.5

    fast, fp, loop, lp = twins(cls, before=at(4, swap))
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


# 3. load_state_dict, deepcopy and a serialized round trip.


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_load_state_dict_from_other_optimizer(cls):
    """Loading another optimizer's state mid-run replaces every state tensor;
    the next steps use the loaded state on both paths."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        params = make_params()
        optimizer = build(cls, params, impl)
        drive(optimizer, params, range(1, 4))
        donor_params = make_params(seed=5)
        donor = build(cls, donor_params, impl)
        drive(donor, donor_params, range(10, 16))
        optimizer.load_state_dict(donor.state_dict())
        drive(optimizer, params, range(4, 8))
        runs.append((optimizer, params))
    (fast, fp), (loop, lp) = runs
    assert fast.state[fp[0]]["step"] == 6 + 4
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_deepcopy_then_step_both(cls):
    """A deep copy of an optimizer with a plan steps its own parameters: the
    original is untouched by the copy's steps, and both then match the loop
    and each other bit for bit."""
    params = make_params()
    optimizer = build(cls, params, FAST)
    drive(optimizer, params, range(1, 4))
    twin = copy.deepcopy(optimizer)
    twin_params = twin.param_groups[0]["params"]
    assert all(a is not b for a, b in zip(params, twin_params, strict=True))

    saved = [p.detach().clone() for p in params]
    drive(twin, twin_params, range(4, 6))
    assert all(torch.equal(a, b) for a, b in zip(saved, params, strict=True))
    drive(optimizer, params, range(4, 6))
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)

    loop_params = make_params()
    loop = build(cls, loop_params, LOOP[cls])
    drive(loop, loop_params, range(1, 6))
    assert_planned(optimizer)
    assert_planned(twin)
    assert_same_run(optimizer, params, loop, loop_params, TOL[torch.float32])
    assert_same_run(twin, twin_params, loop, loop_params, TOL[torch.float32])


def saved_and_loaded(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_serialized_round_trip_resumes_bit_identically(cls, dtype):
    """Stopping after 5 steps, saving the parameters and ``state_dict`` with
    ``torch.save`` and resuming in a new optimizer gives the same bits as an
    uninterrupted run."""
    params = make_params(dtype)
    optimizer = build(cls, params, FAST)
    drive(optimizer, params, range(1, 11))

    first = make_params(dtype)
    stopped = build(cls, first, FAST)
    drive(stopped, first, range(1, 6))
    weights = saved_and_loaded([p.detach() for p in first])
    state = saved_and_loaded(stopped.state_dict())
    resumed_params = [torch.nn.Parameter(w.clone()) for w in weights]
    resumed = build(cls, resumed_params, FAST)
    resumed.load_state_dict(state)
    for group in resumed.param_groups:
        assert group["initial_lr"] == optimizer.param_groups[0]["initial_lr"]
    drive(resumed, resumed_params, range(6, 11))

    assert_planned(resumed)
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)
        assert_same_state(optimizer.state[a], resumed.state[b])


# 4. Group options toggled mid-run.


@needs_kernels
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_amsgrad_switched_on_mid_run(cls):
    """Turning ``amsgrad`` on mid-run adds ``max_exp_avg_sq`` (from zero) and a
    fifth row to the kernel; turning it off again drops it; both paths agree."""

    def toggle(optimizer, params, t):
        if t in (3, 7):
            optimizer.param_groups[0]["amsgrad"] = t == 3

    fast, fp, loop, lp = twins(cls, steps=range(1, 10), before=toggle)
    assert "max_exp_avg_sq" in fast.state[fp[0]]
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [SGD, SGDW])
def test_momentum_switched_on_and_off(cls):
    """SGD momentum 0 -> 0.9 -> 0 -> 0.9: the buffer appears, is left alone
    while momentum is off, and is used again; both paths agree."""
    schedule = {1: 0.0, 3: 0.9, 5: 0.0, 7: 0.9}

    def toggle(optimizer, params, t):
        if t in schedule:
            optimizer.param_groups[0]["momentum"] = schedule[t]

    fast, fp, loop, lp = twins(cls, steps=range(1, 10), before=toggle, momentum=0.0)
    assert "momentum_buffer" in fast.state[fp[0]]
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_foreach_none_false_none(cls):
    """A group moved from the default path to the loop (``foreach=False``) for
    two steps and back keeps a consistent state: the stale plan is not
    replayed with wrong step counts."""

    def toggle(optimizer, params, t):
        if t in (3, 5):
            optimizer.param_groups[0]["foreach"] = False if t == 3 else None

    fast, fp, loop, lp = twins(cls, before=toggle)
    assert fast.param_groups[0]["foreach"] is None
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_foreach_false_after_a_plan_runs_the_loop(cls):
    """Once a group with a plan is set to ``foreach=False``, its steps are the
    per-tensor loop's bit for bit (the plan is not reused)."""
    params = make_params()
    fast = build(cls, params, FAST)
    drive(fast, params, range(1, 4))
    assert_planned(fast)
    loop_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loop = build(cls, loop_params, LOOP[cls])
    loop.load_state_dict(copy.deepcopy(fast.state_dict()))
    loop.param_groups[0].update(LOOP[cls])
    fast.param_groups[0]["foreach"] = False
    drive(fast, params, range(4, 7))
    drive(loop, loop_params, range(4, 7))
    assert_same_run(fast, params, loop, loop_params, 0.0)


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_hyperparameters_changed_under_a_kept_plan(cls):
    """Options that do not change the plan's rows (betas, eps, weight decay
    switched on and off, maximize, nesterov, a new nonzero momentum) take
    effect at the next step."""
    if cls in (Adam, AdamW):
        changes = {
            3: {"betas": (0.8, 0.99), "eps": 1e-3},
            4: {"weight_decay": 0.0, "maximize": True},
            6: {"weight_decay": 5e-3, "maximize": False, "betas": (0.5, 0.9)},
        }
    else:
        changes = {
            3: {"nesterov": True},
            4: {"weight_decay": 0.0, "maximize": True, "momentum": 0.5},
            6: {"weight_decay": 5e-3, "nesterov": False, "momentum": 0.95},
        }

    def change(optimizer, params, t):
        optimizer.param_groups[0].update(changes.get(t, {}))

    fast, fp, loop, lp = twins(cls, before=change)
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_zero_lr_steps_with_constant_decay(cls):
    """Steps at ``lr == 0`` with ``decay_scaling="none"`` (decay but no
    gradient step, which PyTorch's fused kernels cannot express) under a
    kept plan decay the weights exactly as the loop does."""

    def pause(optimizer, params, t):
        if t in (3, 4, 7):
            optimizer.param_groups[0]["lr"] = 0.0

    fast, fp, loop, lp = twins(
        cls, before=pause, weight_decay=1e-3, decay_scaling="none"
    )
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


# 5. Gradients.


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("set_to_none", [True, False])
def test_autograd_with_zero_grad(cls, set_to_none):
    """Autograd allocates new gradients every backward after
    ``zero_grad(set_to_none=True)`` and accumulates into the old ones after
    ``zero_grad(set_to_none=False)``; the plan takes each step's gradients."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        model = small_model(11)
        optimizer = build(cls, model.parameters(), impl)
        train(model, optimizer, range(8), torch.float32, set_to_none)
        runs.append((optimizer, list(model.parameters())))
    (fast, fp), (loop, lp) = runs
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_gradients_alternate_none(cls):
    """Parameters whose gradient is None on alternating steps (in a pattern
    that changes which subset is present every step, with one step where
    none has a gradient) are skipped, not decayed, and keep their state.
    All parameters have the same number of elements, so a plan that paired
    gradients with the wrong parameters would pass every size check."""

    def none(t: int, i: int) -> bool:
        return (t + i) % 2 == 0 or (t % 3 == 0 and i == 3) or t == 5

    shapes = [(4, 4), (16,), (2, 8), (4, 4)]
    fast, fp, loop, lp = twins(cls, steps=range(1, 10), none=none, shapes=shapes)
    counts = [sum(not none(t, i) for t in range(1, 10)) for i in range(4)]
    assert [fast.state[p]["step"] for p in fp] == counts
    assert len(set(counts)) > 1
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_gradients_kept_swapped_and_reallocated(cls):
    """The plan reads every step's gradient addresses: gradients kept in the
    same buffers as the step before, the buffers of two parameters of one
    shape swapped, and new gradients allocated while the old ones stay alive
    (so no address repeats)."""
    buffers: dict[int, list[torch.Tensor]] = {}
    alive: list[torch.Tensor] = []

    def before(optimizer: torch.optim.Optimizer, params: list, t: int) -> None:
        if t % 3 == 0:
            alive.extend(p.grad for p in params)
            return
        kept = buffers.setdefault(id(optimizer), [torch.empty_like(p) for p in params])
        for buffer, param in zip(kept, params, strict=True):
            buffer.copy_(param.grad)
        grads = list(kept)
        if t % 3 == 2:
            grads[0], grads[3] = grads[3], grads[0]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad

    shapes = [(4, 4), (16,), (2, 8), (4, 4)]
    fast, fp, loop, lp = twins(cls, steps=range(1, 11), before=before, shapes=shapes)
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_non_contiguous_gradient_on_one_step(cls):
    """A transposed-layout gradient (right shape, not contiguous) on one step
    is read by index, not by memory order, and the kernel resumes after."""

    def transpose(optimizer, params, t):
        for param in params[:2]:
            param.grad = param.grad.t().contiguous().t()
            assert not param.grad.is_contiguous()

    fast, fp, loop, lp = twins(cls, before=at(4, transpose))
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_wrong_numel_gradient_via_data(cls):
    """``p.grad.data = torch.zeros(8)`` on a (3, 8) parameter bypasses the
    shape check of ``p.grad =``; the kernel must not read 24 elements from
    it. Both paths broadcast it as PyTorch's ops do, and every parameter
    ends where the loop puts it."""

    def shrink(optimizer, params, t):
        params[1].grad.data = torch.full((8,), 0.05)

    fast, fp, loop, lp = twins(cls, before=at(4, shrink))
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_float64_gradient_data_in_float32_parameter(cls):
    """A float64 tensor swapped into a float32 gradient with ``.data`` never
    reaches the kernel (it would be read as float32): the default path
    raises where the loop raises, updating no parameter, or matches it."""

    def widen(optimizer, params, t):
        params[0].grad.data = params[0].grad.data.double()

    outcomes = []
    for impl in (FAST, LOOP[cls]):
        params = make_params()
        optimizer = build(cls, params, impl)
        drive(optimizer, params, range(1, 4))
        set_grads(params, 4)
        widen(optimizer, params, 4)
        before = [p.detach().clone() for p in params]
        try:
            optimizer.step()
        except RuntimeError as error:
            # The gradient of the first parameter is the bad one: not even
            # the loop has updated anything when it raises.
            for old, param in zip(before, params, strict=True):
                assert torch.equal(old, param.detach())
            outcomes.append((str(error), optimizer, params))
        else:
            outcomes.append((None, optimizer, params))
    (fast_error, fast, fp), (loop_error, loop, lp) = outcomes
    assert fast_error == loop_error
    if cls in (SGD, SGDW):
        assert fast_error is None
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_sparse_gradient_after_a_plan(cls):
    """A sparse gradient on a step after the plan exists raises the
    optimizer's error, as on the loop, and updates no parameter."""
    messages = []
    for impl in (FAST, LOOP[cls]):
        params = make_params()
        optimizer = build(cls, params, impl)
        drive(optimizer, params, range(1, 4))
        set_grads(params, 4)
        params[2].grad = params[2].grad.to_sparse()
        before = [p.detach().clone() for p in params]
        with pytest.raises(RuntimeError, match="sparse") as error:
            optimizer.step()
        for old, param in zip(before, params, strict=True):
            assert torch.equal(old, param.detach())
        messages.append(str(error.value))
    assert messages[0] == messages[1]


# 6. Parameters and gradients that are views of one flat buffer.


FLAT_SHAPES = [(4, 6), (6,), (3, 3), (1,), (2, 5)]


def flat_params(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, list]:
    sizes = [math.prod(shape) for shape in FLAT_SHAPES]
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(sum(sizes), generator=generator, dtype=dtype)
    params, start = [], 0
    for shape, size in zip(FLAT_SHAPES, sizes, strict=True):
        params.append(torch.nn.Parameter(flat[start : start + size].view(shape)))
        start += size
    return flat, params


def flat_grads(params: list, t: int) -> torch.Tensor:
    """Gradients that are views of one flat buffer, which is returned."""
    sizes = [p.numel() for p in params]
    generator = torch.Generator().manual_seed(2000 + t)
    dtype = params[0].dtype
    buffer = 0.1 * torch.randn(sum(sizes), generator=generator, dtype=dtype)
    start = 0
    for param, size in zip(params, sizes, strict=True):
        param.grad = buffer[start : start + size].view(param.shape)
        start += size
    return buffer


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_storage_views(cls, dtype):
    """Parameters that are views of one flat tensor, with gradients that are
    views of one flat buffer, match the loop, also after a serialized
    ``state_dict`` round trip into a new optimizer mid-run; the flat tensor
    is updated through its views."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        flat, params = flat_params(dtype, seed=1)
        optimizer = build(cls, params, impl)
        for t in range(1, 5):
            flat_grads(params, t)
            optimizer.step()
        state = saved_and_loaded(optimizer.state_dict())
        optimizer = build(cls, params, impl)
        optimizer.load_state_dict(state)
        for t in range(5, 9):
            flat_grads(params, t)
            optimizer.step()
        assert params[1].data_ptr() - params[0].data_ptr() == 24 * flat.itemsize
        runs.append((optimizer, params, flat))
    (fast, fp, fast_flat), (loop, lp, loop_flat) = runs
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[dtype])
    assert_near(fast_flat, loop_flat, TOL[dtype])
    assert torch.equal(fast_flat[24:30], fp[1].detach())


# 7. Groups.


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_add_param_group_after_steps(cls):
    """A group added after three steps gets its own plan; the first group's
    plan is untouched and both match the loop."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        params = make_params()
        optimizer = build(cls, params[:2], impl)
        drive(optimizer, params[:2], range(1, 4))
        optimizer.add_param_group({"params": params[2:], "lr": 0.02})
        drive(optimizer, params, range(4, 9))
        runs.append((optimizer, params))
    (fast, fp), (loop, lp) = runs
    assert fast.state[fp[0]]["step"] == 8 and fast.state[fp[3]]["step"] == 5
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_groups_of_different_dtypes(cls):
    """A float32 group and a float64 group each run on their own plan and
    match the loop at their own dtype's tolerance."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        single = make_params(torch.float32, SHAPES[:2], seed=1)
        double = make_params(torch.float64, SHAPES[2:], seed=2)
        groups = [{"params": single}, {"params": double, "weight_decay": 2e-3}]
        optimizer = build(cls, groups, impl)
        drive(optimizer, single + double, range(1, 9))
        runs.append((optimizer, single, double))
    (fast, f32, f64), (loop, l32, l64) = runs
    assert len(fast.__dict__["_plans"]) == 2
    assert_planned(fast)
    assert_same_run(fast, f32, loop, l32, TOL[torch.float32])
    assert_same_run(fast, f64, loop, l64, TOL[torch.float64])


# 8. Lifetimes.


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_plan_keeps_no_gradient_alive(cls):
    """After ``step()`` and ``zero_grad(set_to_none=True)`` no reference to the
    old gradients remains (the plan keeps addresses, not tensors)."""
    params = make_params()
    optimizer = build(cls, params, FAST)
    drive(optimizer, params, range(1, 3))
    set_grads(params, 3)
    refs = [weakref.ref(p.grad) for p in params]
    optimizer.step()
    assert_planned(optimizer)
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_removed_group_is_released(cls):
    """A group removed from ``param_groups``, with its state deleted, is no
    longer referenced by the optimizer after the next step."""
    params = make_params()
    optimizer = build(cls, [{"params": params[:2]}, {"params": params[2:]}], FAST)
    drive(optimizer, params, range(1, 3))
    removed = params.pop()
    refs = [weakref.ref(removed)]
    refs += [weakref.ref(optimizer.state[removed][k]) for k in state_keys(cls)]
    del optimizer.param_groups[1]
    for param in params[2:]:
        del optimizer.state[param]
    del optimizer.state[removed], removed
    drive(optimizer, params[:2], range(3, 4))
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_replaced_group_dict_is_released(cls):
    """A group dict replaced by a copy at every step, with the state of one
    parameter restarted each time, leaves none of the old state tensors
    referenced."""
    params = make_params()
    optimizer = build(cls, params, FAST)
    refs = []

    def replace(optimizer, params, t):
        if params[0] in optimizer.state:
            state = optimizer.state[params[0]]
            refs.extend(weakref.ref(state[key]) for key in state_keys(cls))
            del optimizer.state[params[0]]
        optimizer.param_groups[0] = dict(optimizer.param_groups[0])

    drive(optimizer, params, range(1, 6), before=replace)
    gc.collect()
    assert len(refs) == 4 * len(state_keys(cls))
    assert [ref() for ref in refs] == [None] * len(refs)


# 9. A long run.


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_cosine_run(cls, dtype):
    """200 steps under ``CosineAnnealingLR`` with a gradient that depends on
    the weights (a quadratic pull toward zero plus noise, so a deviation
    would feed back) stay within the tolerance of the loop.

    The pull is toward zero, not toward a target of the weights' size: there
    ``grad = p - target`` cancels and turns the paths' float32 rounding of
    the weights (1e-7) into relative differences of 2e-6 in the momentum
    buffer, a property of the test problem rather than of either path."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        params = make_params(dtype, [(16, 8), (8,), (3,)], seed=4)
        optimizer = build(cls, params, impl)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
        for t in range(200):
            noise = torch.Generator().manual_seed(t)
            for param in params:
                jitter = torch.randn(param.shape, generator=noise, dtype=dtype)
                param.grad = 0.5 * param.detach() + 0.1 * jitter
            optimizer.step()
            schedule.step()
        runs.append((optimizer, params))
    (fast, fp), (loop, lp) = runs
    assert fast.state[fp[0]]["step"] == 200
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[dtype])


@needs_kernels
@pytest.mark.parametrize("cls", ALL)
def test_complex_parameters(cls):
    """Complex parameters run on the plan as real views; a storage change and
    a replaced state tensor mid-run are followed as for real ones."""

    def move(optimizer, params, t):
        params[0].data = params[0].data.clone()
        state = optimizer.state[params[1]]
        key = state_keys(cls)[0]
        state[key] = state[key].clone() * 0.5

    fast, fp, loop, lp = twins(cls, before=at(4, move), dtype=torch.complex64)
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_parallel_step_with_rebuilt_plan(cls):
    """A step large enough to be split between threads, with two torch
    threads, matches the loop, also after the parameters move mid-run and
    after the thread count changes between steps."""
    shapes = [(600, 500), (7,)]
    threads = torch.get_num_threads()

    def move(optimizer, params, t):
        if t == 2:
            params[0].data = params[0].data.clone()
        torch.set_num_threads(1 if t == 3 else 2)

    try:
        fast, fp, loop, lp = twins(cls, range(1, 5), before=move, shapes=shapes)
    finally:
        torch.set_num_threads(threads)
    assert fp[0].numel() >= _kernels._PARALLEL_MIN
    assert_planned(fast)
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_two_threads_step_their_own_optimizers(cls):
    """Two Python threads stepping two optimizers at once, each step large
    enough to use the helper threads, each match the loop: the shared
    helpers never mix the two steps' tensors."""
    shapes = [(600, 500), (9,)]
    threads = torch.get_num_threads()
    loops = []
    for seed in (0, 1):
        params = make_params(shapes=shapes, seed=seed)
        loop = build(cls, params, LOOP[cls])
        drive(loop, params, range(1, 5))
        loops.append((loop, params))

    runs = [[None, make_params(shapes=shapes, seed=seed)] for seed in (0, 1)]
    errors: list[BaseException] = []

    def work(run: list) -> None:
        try:
            run[0] = build(cls, run[1], FAST)
            drive(run[0], run[1], range(1, 5))
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    torch.set_num_threads(2)
    try:
        workers = [threading.Thread(target=work, args=(run,)) for run in runs]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        torch.set_num_threads(threads)
    assert errors == []
    for (fast, fp), (loop, lp) in zip(runs, loops, strict=True):
        assert_planned(fast)
        assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


# Changes behind the group's and the state's own objects, which the cheap
# check must still see.


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_params_swapped_in_place_in_group_list(cls):
    """Two same-shape parameters swapped inside ``group["params"]`` are each
    updated with their own gradient, as the loop does."""

    def swap(optimizer, params, t):
        order = optimizer.param_groups[0]["params"]
        order[0], order[1] = order[1], order[0]

    shapes = [(4, 4), (4, 4), (5,)]
    runs = []
    for impl in (FAST, LOOP[cls]):
        params = make_params(shapes=shapes)
        optimizer = build(cls, params, impl)
        drive(optimizer, params, range(1, 3))
        swap(optimizer, params, 3)
        drive(optimizer, params, range(3, 6))
        runs.append((optimizer, params))
    (fast, fp), (loop, lp) = runs
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_param_replaced_in_place_in_group_list(cls):
    """A parameter replaced inside ``group["params"]`` by a new one is the one
    updated (from fresh state); the old one is no longer touched."""
    runs = []
    for impl in (FAST, LOOP[cls]):
        params = make_params()
        optimizer = build(cls, params, impl)
        drive(optimizer, params, range(1, 3))
        old = params[0]
        saved = old.detach().clone()
        params[0] = torch.nn.Parameter(torch.ones(SHAPES[0]))
        optimizer.param_groups[0]["params"][0] = params[0]
        drive(optimizer, params, range(3, 6))
        assert torch.equal(old.detach(), saved)
        runs.append((optimizer, params))
    (fast, fp), (loop, lp) = runs
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


@needs_kernels
@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_param_data_transposed_view(cls):
    """A square parameter re-pointed at its own transpose (same storage, now
    non-contiguous) is updated element by element as the loop does."""

    def transpose(optimizer, params, t):
        params[0].data = params[0].data.t()

    fast, fp, loop, lp = twins(cls, before=at(4, transpose))
    assert not fp[0].is_contiguous()
    assert_same_run(fast, fp, loop, lp, TOL[torch.float32])


def resized_state_error() -> float:
    """Kernel against loop when a state tensor's storage is freed and
    reallocated in place between steps (as offloading code does)."""
    results = []
    for impl in (FAST, LOOP[AdamW]):
        generator = torch.Generator().manual_seed(0)
        param = torch.nn.Parameter(torch.randn(1 << 16, generator=generator))
        optimizer = AdamW([param], lr=0.01, **impl)
        for t in range(4):
            if t == 2:
                exp_avg = optimizer.state[param]["exp_avg"]
                storage = exp_avg.untyped_storage()
                size = storage.nbytes()
                storage.resize_(0)
                storage.resize_(size)
                exp_avg.fill_(0.5)
            param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()
        results.append(param.detach().clone())
    fast, loop = results
    return ((fast - loop).abs().max() / loop.abs().max()).item()


@needs_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_state_storage_resized_in_place():
    """A state tensor whose storage is freed and reallocated in place is read
    and written at its new address, as the loop does. Runs in a forked
    child, since a stale address can crash the process."""
    code, error = in_child(resized_state_error, threads=1)
    assert code == 0
    assert error is not None and error <= TOL[torch.float32]
