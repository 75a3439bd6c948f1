"""What ``step`` promises around the update, as ``torch.optim`` does.

Our optimizers replace PyTorch's step wrapper with one that enters the
profiler label only while a profiler runs, and replace the ``no_grad``
decorator with a cheaper switch; these tests pin what must not change:
hooks (global and per optimizer, with argument replacement), the profiler
event, the grad mode around and inside the step, and the closure.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from weightdecay import SGD, SGDW, Adam, AdamW

CLASSES = [Adam, AdamW, SGD, SGDW]


def make(cls, foreach=None):
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    param.grad = torch.tensor([0.5, 0.5, -0.5])
    return cls([param], lr=0.1, foreach=foreach), param


@pytest.mark.parametrize("cls", CLASSES)
def test_hooks_run_in_order_around_the_step(cls):
    optimizer, param = make(cls)
    calls = []

    def pre(opt, args, kwargs):
        calls.append(("pre", opt is optimizer, param.detach().clone()))

    def post(opt, args, kwargs):
        calls.append(("post", opt is optimizer, param.detach().clone()))

    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("gpre",))),
        optimizer.register_step_pre_hook(pre),
        optimizer.register_step_post_hook(post),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("gpost",))),
    ]
    try:
        before = param.detach().clone()
        optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    assert [c[0] for c in calls] == ["gpre", "pre", "post", "gpost"]
    assert calls[1][1] and calls[2][1]
    assert torch.equal(calls[1][2], before)  # the pre-hook ran before the update
    assert not torch.equal(calls[2][2], before)  # the post-hook after it


@pytest.mark.parametrize("cls", CLASSES)
def test_pre_hook_may_replace_the_arguments(cls):
    optimizer, _ = make(cls)
    seen = []

    def closure():
        seen.append("replacement")
        return torch.tensor(7.0)

    def pre(opt, args, kwargs):
        return args, {"closure": closure}

    optimizer.register_step_pre_hook(pre)
    loss = optimizer.step()
    assert seen == ["replacement"]
    assert loss.item() == 7.0


def test_pre_hook_returning_something_else_names_it():
    optimizer, _ = make(AdamW)

    def bad_hook(opt, args, kwargs):
        return "oops"

    optimizer.register_step_pre_hook(bad_hook)
    with pytest.raises(RuntimeError, match="bad_hook.*'oops'"):
        optimizer.step()


@pytest.mark.parametrize("cls", CLASSES)
def test_profiler_sees_the_step(cls):
    optimizer, _ = make(cls)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        optimizer.step()
    names = {event.name for event in p.events()}
    assert f"Optimizer.step#{cls.__name__}.step" in names


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("foreach", [None, True])
def test_step_runs_without_grad_and_restores_the_mode(cls, foreach):
    optimizer, param = make(cls, foreach)
    modes = []
    optimizer.register_step_post_hook(
        lambda o, a, k: modes.append(torch.is_grad_enabled())
    )

    def closure():
        modes.append(torch.is_grad_enabled())
        return (param**2).sum()

    for enabled in (True, False):
        with torch.set_grad_enabled(enabled):
            optimizer.step(closure)
            assert torch.is_grad_enabled() is enabled
    assert modes == [True, True, True, False]  # the closure always with grad
    assert param.grad_fn is None and param.is_leaf


def test_grad_mode_is_restored_when_the_step_raises():
    optimizer, param = make(AdamW)
    param.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert torch.is_grad_enabled()


def test_lr_scheduler_finds_the_step_wrapped_and_does_not_warn(recwarn):
    optimizer, _ = make(AdamW)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("foreach", [None, False])
def test_tensor_step_count_becomes_an_int(cls, foreach):
    """A float32 tensor count (torch.optim's form) is read as a whole number,
    also when set after the kernel's plan was built."""
    optimizer, param = make(cls, foreach)
    optimizer.step()
    optimizer.state[param]["step"] = torch.tensor(41.0)
    optimizer.step()
    assert optimizer.state[param]["step"] == 42
    assert type(optimizer.state[param]["step"]) is int
    optimizer.state[param] = {
        key: value.clone() if torch.is_tensor(value) else torch.tensor(float(value))
        for key, value in optimizer.state[param].items()
    }
    optimizer.step()
    assert type(optimizer.state[param]["step"]) is int
    assert optimizer.state[param]["step"] == 43


def test_fractional_tensor_step_count_is_refused():
    optimizer, param = make(AdamW, foreach=False)
    optimizer.step()
    optimizer.state[param] = {**optimizer.state[param], "step": torch.tensor(2.5)}
    with pytest.raises(ValueError, match=r"state\['step'\].*2\.5"):
        optimizer.step()


@pytest.mark.parametrize("scaling", ["lr", "schedule"])
def test_torch_adamw_state_dict_loads_in_torch_units_and_continues_as_torch(scaling):
    """A state dict saved by torch.optim.AdamW (no decay_scaling, tensor step
    counts) continues exactly as torch.optim.AdamW continues it."""
    generator = torch.Generator().manual_seed(3)
    start = [torch.randn(4, 3, generator=generator, dtype=torch.float64)]
    grads = [
        torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(6)
    ]
    theirs_param = torch.nn.Parameter(start[0].clone())
    theirs = torch.optim.AdamW([theirs_param], lr=0.01, weight_decay=0.1)
    for grad in grads[:3]:
        theirs_param.grad = grad.clone()
        theirs.step()
    ours_param = torch.nn.Parameter(theirs_param.detach().clone())
    ours = AdamW([ours_param], lr=0.5, weight_decay=1e-4, decay_scaling=scaling)
    saved = copy.deepcopy(theirs.state_dict())  # loading shares state tensors
    if scaling == "lr":
        ours.load_state_dict(saved)
    else:
        with pytest.warns(UserWarning, match="weight_decay=0.1 is read in PyTorch's"):
            ours.load_state_dict(saved)
    group = ours.param_groups[0]
    assert group["decay_scaling"] == "lr" and group["initial_lr"] == 0.01
    for grad in grads[3:]:
        for param, optimizer in ((theirs_param, theirs), (ours_param, ours)):
            param.grad = grad.clone()
            optimizer.step()
    scale = theirs_param.detach().abs().max()
    assert (ours_param.detach() - theirs_param.detach()).abs().max() <= 1e-12 * scale
    assert type(ours.state[ours_param]["step"]) is int


def test_own_state_dict_round_trip_keeps_per_group_units():
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    optimizer = AdamW([params[0]], lr=0.1, weight_decay=1e-4)
    optimizer.add_param_group(
        {"params": [params[1]], "decay_scaling": "lr", "weight_decay": 0.01}
    )
    saved = optimizer.state_dict()
    fresh = AdamW([params[0]], lr=0.1, weight_decay=1e-4)
    fresh.add_param_group({"params": [params[1]]})
    fresh.load_state_dict(saved)  # no warning: both groups carry their units
    assert [g["decay_scaling"] for g in fresh.param_groups] == ["schedule", "lr"]
